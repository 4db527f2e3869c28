#!/usr/bin/env bash
# Benchmarks keygate against nginx `proxy_pass` and a direct connection, in one run of the
# shared harness (../shared/bench/run-anchors.sh), all against the same mock upstream.
#
# keygate is built in release mode, started on 127.0.0.1:28090 pinned to the server CPU
# like the others, with a fresh SQLite store and one inference key that has 4 global
# (rpm, rpd, tpm, tpd) and 4 per-model buckets plus a budget, so every request is
# authenticated, checked against 8 buckets and a budget, and accounted.
#
# Usage: bench/run.sh                   (the harness defaults: ~15 minutes)
#        DURATION=10 REPEATS=1 CONNS="32" RATES="" bench/run.sh   (a quick look)
# Needs: wrk, nginx (apt-get install -y wrk nginx-light); oha for the fixed-rate runs
# (cargo install oha --locked --root /tmp/oha-install).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared_bench=${SHARED_BENCH:-"$repo/../shared/bench"}
port=${BENCH_PORT:-28090}
work=${BENCH_DIR:-/tmp/keygate-bench}
server_cpu=${SERVER_CPU:-0}
# shellcheck source=bench/common.sh
. "$here/common.sh"

(cd "$repo" && cargo build --release --quiet)
rm -rf "$work" && mkdir -p "$work"
bench_config "$work/keygate.toml" "$work" "$port" "${MOCK_PORT:-28080}"

bin="$repo/target/release/keygate"
admin=$("$bin" keys generate)
KEYGATE_BOOTSTRAP_ADMIN_KEY=$admin setsid taskset -c "$server_cpu" "$bin" --config "$work/keygate.toml" serve \
  >"$work/keygate.log" 2>&1 &
pgid=$!
trap 'kill -TERM -- -$pgid 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done

key=$(bench_key "$port" "$admin")

EXTRA_TARGETS="keygate=http://127.0.0.1:$port" EXTRA_KEY=$key EXTRA_PGID=$pgid \
  TARGETS=${TARGETS:-"direct nginx"} "$shared_bench/run-anchors.sh"
awk '/^VmHWM|^VmRSS/{printf "keygate %s %.1f MiB\n", $1, $2/1024}' "/proc/$pgid/status"
