#!/usr/bin/env bash
# The Redis limiter against the in-process one (issue 12 §6), on one machine in one run:
# 1. throughput at c = 32: bench/side-by-side.sh with two wrappers of the same BIN, one
#    in memory mode and one with `redis.url` set (same key: 8 buckets + a budget);
# 2. Redis commands per request: a private redis-server on its own port, `INFO
#    commandstats` before and after a wrk run against the Redis-mode keygate.
# Usage: bench/redis-limiter.sh target/release/keygate
# Needs: what side-by-side.sh needs, plus redis-server and redis-cli.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "$1")
work=${BENCH_DIR:-/tmp/keygate-redis-bench}
redis_port=${REDIS_PORT:-28379}
port=${BENCH_PORT:-28190}
mock_port=${MOCK_PORT:-28180}
conns=${CONNS:-32}
seconds=${SECONDS_PER_RUN:-5}
shared_bench=${SHARED_BENCH:-"$here/../../shared/bench"}
[ -d "$shared_bench" ] || shared_bench="$here/../shared/bench"
mock_bin=${MOCK_BIN:-/tmp/mock-upstream-target/release/mock-upstream}
# shellcheck source=bench/common.sh
. "$here/common.sh"
require_free_ports "$redis_port" "$port" "$mock_port"
rm -rf "$work" && mkdir -p "$work"
groups=()
trap 'for g in "${groups[@]}"; do kill -TERM -- -"$g" 2>/dev/null || true; done' EXIT

setsid taskset -c 1 redis-server --port "$redis_port" --save "" --appendonly no >"$work/redis.log" 2>&1 &
groups+=($!)
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# The two modes as two "builds" for side-by-side.sh.
cat >"$work/keygate-memory" <<SH
#!/bin/sh
exec "$bin" "\$@"
SH
cat >"$work/keygate-redis" <<SH
#!/bin/sh
KEYGATE_REDIS__URL=redis://127.0.0.1:$redis_port KEYGATE_REDIS__KEY_PREFIX=bench: exec "$bin" "\$@"
SH
chmod +x "$work/keygate-memory" "$work/keygate-redis"

echo "== throughput, c = $conns (ratio to nginx in the same round; memory vs redis)"
CONNS=$conns BENCH_DIR="$work/side" "$here/side-by-side.sh" "$work/keygate-memory" "$work/keygate-redis" \
  | tee "$work/side-by-side.txt"

echo "== redis commands per request"
ensure_mock "$mock_bin" "$shared_bench"
setsid taskset -c 0 env MOCK_ADDR="127.0.0.1:$mock_port" MOCK_THREADS=1 "$mock_bin" >"$work/mock.log" 2>&1 &
groups+=($!)
bench_config "$work/keygate.toml" "$work" "$port" "$mock_port"
admin=$("$bin" keys generate)
KEYGATE_BOOTSTRAP_ADMIN_KEY=$admin setsid taskset -c 0 "$work/keygate-redis" --config "$work/keygate.toml" serve \
  >"$work/keygate.log" 2>&1 &
groups+=($!)
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
key=$(bench_key "$port" "$admin")
BENCH_KEY=$key taskset -c 1 wrk -t1 -c"$conns" -d2s -s "$shared_bench/post.lua" "http://127.0.0.1:$port" >/dev/null
sleep 1
redis-cli -p "$redis_port" info commandstats >"$work/before.txt"
redis-cli -p "$redis_port" info cpu >>"$work/before.txt"
out=$(BENCH_KEY=$key taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" -s "$shared_bench/post.lua" "http://127.0.0.1:$port")
sleep 1 # the last settlements
redis-cli -p "$redis_port" info commandstats >"$work/after.txt"
redis-cli -p "$redis_port" info cpu >>"$work/after.txt"
requests=$(awk '/requests in/{print $1}' <<<"$out")
python3 - "$work/before.txt" "$work/after.txt" "$requests" <<'PY'
import re, sys
def calls(path):
    out = {}
    for line in open(path):
        m = re.match(r"cmdstat_(\w+):calls=(\d+),usec=(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
            out["usec:" + m.group(1)] = int(m.group(3))
        m = re.match(r"used_cpu_(sys|user):([0-9.]+)", line)
        if m:
            out["cpu"] = out.get("cpu", 0.0) + float(m.group(2))
    return out
before, after, requests = calls(sys.argv[1]), calls(sys.argv[2]), int(sys.argv[3])
usec = {k[5:]: after[k] - before.get(k, 0) for k in after if k.startswith("usec:")}
cpu = after.pop("cpu", 0.0) - before.pop("cpu", 0.0)
after = {k: v for k, v in after.items() if not k.startswith("usec:")}
delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
sent = sum(v for k, v in delta.items() if k in ("evalsha", "eval", "script", "ping", "hsetnx", "pexpire", "info"))
print(f"requests: {requests}")
print("commands (calls during the run): " + ", ".join(f"{k} {v}" for k, v in sorted(delta.items())))
client = delta.get("evalsha", 0) + delta.get("eval", 0)
print(f"script calls sent by keygate per request: {client / requests:.3f}")
print(f"all commands per request, those run inside the scripts included: {sum(delta.values()) / requests:.2f}")
# Where Redis' time goes: the script calls' own time (what they run inside included), and
# the server's whole CPU time (network I/O and parsing too), per request.
for name in ("evalsha", "eval"):
    if delta.get(name):
        print(f"{name}: {usec[name] / delta[name]:.1f} us per call, {usec[name] / requests:.1f} us per request")
print(f"redis-server CPU (user + sys): {cpu * 1e6 / requests:.1f} us per request ({cpu:.2f} s over the run)")
PY
