#!/usr/bin/env bash
# CI step for the container and deployment files (called by .ci/run):
#   1. the tools: podman, buildah, debootstrap, runc, docker-compose, jq, curl (Debian),
#      hadolint and kubernetes-validate (PyPI, in a virtualenv under target/);
#   2. lint: hadolint on the Dockerfile, `docker-compose config -q` on docker-compose.yml,
#      kubernetes-validate on deploy/kubernetes/*.yaml, `nginx -t` on config/nginx.conf;
#   3. the base images, made locally once (base-images.sh; no registry is reachable);
#   4. `podman build` of the Dockerfile (release profile, as shipped; podman's layer cache
#      keeps the dependency layer between runs), then smoke.sh against the image.
# Timings of each phase are printed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work="$root/target/container"
mkdir -p "$work"
cd "$root"

log() { printf '\n-- container: %s\n' "$*"; }
timings=()
phase_start=$SECONDS
phase_done() { timings+=("$(printf '%-28s %4ss' "$1" $((SECONDS - phase_start)))"); phase_start=$SECONDS; }

log "tools"
missing=()
for tool in podman buildah debootstrap runc docker-compose jq curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")   # each tool is its Debian package's name
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# runc (this kernel refuses crun's defaults) and ulimits below the host's hard limits.
cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$work/containers.conf"
venv="$work/venv"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if ! [ -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" >"$stamp"
fi
phase_done tools

log "hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile
"$venv/bin/hadolint" "$here/rust-base.Containerfile"

log "docker-compose config"
# Compose needs .env's values to interpolate; a throwaway one, never the operator's.
compose_dir="$work/compose"
rm -rf "$compose_dir" && mkdir -p "$compose_dir"
cp docker-compose.yml "$compose_dir/"
cp -r config "$compose_dir/"
sed -e 's/^KEYGATE_BOOTSTRAP_ADMIN_KEY=$/KEYGATE_BOOTSTRAP_ADMIN_KEY=kg_ci/' \
    -e 's/^POSTGRES_PASSWORD=$/POSTGRES_PASSWORD=ci/' .env.example >"$compose_dir/.env"
docker-compose --project-directory "$compose_dir" -f "$compose_dir/docker-compose.yml" config -q
docker-compose --project-directory "$compose_dir" -f "$compose_dir/docker-compose.yml" config >"$compose_dir/resolved.yml"
"$venv/bin/python" "$here/check_compose.py" "$compose_dir/resolved.yml"
# Without the bootstrap key, compose refuses to start and says which variable is missing.
sed -i 's/^KEYGATE_BOOTSTRAP_ADMIN_KEY=.*/KEYGATE_BOOTSTRAP_ADMIN_KEY=/' "$compose_dir/.env"
if docker-compose --project-directory "$compose_dir" -f "$compose_dir/docker-compose.yml" config -q 2>"$compose_dir/err"; then
  echo "docker-compose accepted an empty KEYGATE_BOOTSTRAP_ADMIN_KEY" >&2; exit 1
fi
grep -q KEYGATE_BOOTSTRAP_ADMIN_KEY "$compose_dir/err" || { cat "$compose_dir/err" >&2; exit 1; }

log "kubernetes-validate deploy/kubernetes"
"$venv/bin/python" "$here/check_kustomization.py" deploy/kubernetes
k8s_files=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || k8s_files+=("$f")
done
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.31 "${k8s_files[@]}"
phase_done lint

log "base images"
bash "$here/base-images.sh"
phase_done "base images"

log "nginx -t config/nginx.conf"
# nginx from Debian's package, in a CI-only image (not the official one: none can be
# pulled here); `keygate` resolves as the compose service name would.
if ! podman image exists localhost/keygate-ci-nginx; then
  printf 'FROM debian:bookworm-slim\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light && rm -rf /var/lib/apt/lists/*\n' \
    | podman build --pull=never --isolation chroot --network host -t localhost/keygate-ci-nginx -f - "$work" >"$work/nginx-image.log" 2>&1 \
    || { tail -n 20 "$work/nginx-image.log" >&2; exit 1; }
fi
podman run --rm --add-host keygate:127.0.0.1 -v "$root/config/nginx.conf:/etc/nginx/nginx.conf:ro" \
  localhost/keygate-ci-nginx nginx -t -c /etc/nginx/nginx.conf
phase_done "nginx -t"

log "podman build (release profile)"
image=localhost/keygate:ci
# --format docker keeps the HEALTHCHECK (the OCI format has no field for it). The host's
# CA bundle lets cargo reach crates.io as the host does. RUN steps run chrooted (this
# kernel refuses the OCI runtime's defaults during builds).
# The revision and date also go in as --label: buildah 1.28 (Debian 12) reuses a cached
# LABEL step whose ARG values changed, so the build args alone would leave stale labels.
build() {
  nice -n 10 podman build --pull=never --isolation chroot --network host --format docker \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.created="$created" \
    "$@" . >>"$work/build.log" 2>&1 \
    || { tail -n 60 "$work/build.log" >&2; exit 1; }
}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
: >"$work/build.log"
build_start=$SECONDS
build -t "$image"
echo "built $image in $((SECONDS - build_start)) s ($(podman image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}'))"
# The build stage's image, tagged (from the cache: instant) so that pruning the previous
# runs' leftovers keeps the dependency layer under it for the next run.
build --target build -t localhost/keygate-build-cache:ci
podman image prune -f >/dev/null || true
podman image inspect "$image" | jq -e --arg r "$revision" \
  '.[0].Labels["org.opencontainers.image.revision"] == $r' >/dev/null \
  || { echo "the image's revision label is not $revision" >&2; exit 1; }
phase_done "image build"

log "smoke test"
IMAGE="$image" NGINX_IMAGE=localhost/keygate-ci-nginx bash "$here/smoke.sh"
phase_done "smoke test"

log "timings"
printf '%s\n' "${timings[@]}"
