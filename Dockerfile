# keygate container image: `docker build -t keygate .`
#
# Two stages. The build stage compiles the dependencies first, against a stub crate, so
# that layer is reused until Cargo.toml or Cargo.lock change (the effect of cargo-chef,
# without a tool to install); then it builds the real source with the release profile
# (fat LTO, as shipped). The runtime stage is Debian slim with the binary and nothing
# else: keygate links only glibc, and trusts the public roots compiled into it
# (webpki-roots), so it needs no ca-certificates package.
#
# Run: docker run -p 8080:8080 -v keygate-data:/data -e KEYGATE_BOOTSTRAP_ADMIN_KEY=kg_… keygate
# The SQLite store defaults to /data/keygate.db (the working directory); set DATABASE_URL
# (postgres://…) to run several replicas. Mount your config at /etc/keygate/keygate.toml.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# 1. Dependencies only: a stub crate with the real manifest and lockfile. The bench
#    targets Cargo.toml declares must exist for cargo to read it; they stay stubs.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/limiter.rs \
 && echo 'fn main() {}' > benches/auth.rs \
 && cargo build --release --locked --bin keygate

# 2. The real source. Touched so cargo sees it newer than the stub's build outputs
#    (COPY keeps the files' own, older modification times).
COPY src ./src
COPY migrations ./migrations
COPY assets ./assets
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin keygate \
 && ./target/release/keygate --version

FROM debian:bookworm-slim AS runtime

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
RUN groupadd --system --gid 10001 keygate \
 && useradd --system --uid 10001 --gid keygate --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin keygate \
 && mkdir -p /data /etc/keygate \
 && chown keygate:keygate /data

COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
# The shipped configuration: every key commented out, so it changes nothing until edited.
COPY config/keygate.toml /etc/keygate/keygate.toml

# Listen on every interface inside the container (the binary's default is loopback).
ENV KEYGATE_LISTEN=0.0.0.0:8080
# The default store, sqlite://keygate.db, is relative to the working directory: /data.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# SIGTERM drains: keygate stops accepting, lets in-flight requests (streams too) finish
# and flushes usage. Give it time: `docker stop -t`, terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
# `keygate health` is a plain HTTP GET from the binary itself: no curl or shell needed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["keygate", "health", "--url", "http://127.0.0.1:8080/healthz"]

ENTRYPOINT ["keygate", "--config", "/etc/keygate/keygate.toml"]
CMD ["serve"]

# Last, so a new revision or date rebuilds no layer above.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="keygate" \
      org.opencontainers.image.description="Self-hosted API-key gateway for LLM inference: hashed keys, exact rate limits and budgets, OpenAI-compatible proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
