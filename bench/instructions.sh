#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: unlike
# throughput, the count is the same from run to run whatever else the machine is doing,
# so it shows whether a change to the hot path made it do less work.
#
# keygate (the release binary, or BIN) runs under callgrind against the shared mock
# upstream, with the same key as bench/run.sh (4 global + 4 per-model buckets, a budget).
# After a warm-up, N requests (default 3000) go over four keep-alive connections; the
# total count is divided by N. Note: valgrind hides SHA-NI, so ~7 k of the count is
# SHA-256 in software that the real CPU does in a few hundred cycles.
#
# Usage: bench/instructions.sh [BIN]        Needs: valgrind, wrk, python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared_bench=${SHARED_BENCH:-"$repo/../shared/bench"}
bin=${1:-"$repo/target/release/keygate"}
n=${N:-3000}
work=${BENCH_DIR:-/tmp/keygate-instructions}
mock_port=${MOCK_PORT:-28080}
port=${BENCH_PORT:-28090}
mock_bin=${MOCK_BIN:-/tmp/mock-upstream-target/release/mock-upstream}
# shellcheck source=bench/common.sh
. "$here/common.sh"

require_free_ports "$mock_port" "$port"
[ -x "$bin" ] || (cd "$repo" && cargo build --release --quiet)
ensure_mock "$mock_bin" "$shared_bench"
rm -rf "$work" && mkdir -p "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

MOCK_ADDR=127.0.0.1:$mock_port "$mock_bin" >"$work/mock.log" 2>&1 &
pids+=($!)
bench_config "$work/keygate.toml" "$work" "$port" "$mock_port" "worker_threads = 1"

admin=$("$bin" keys generate)
KEYGATE_BOOTSTRAP_ADMIN_KEY=$admin valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$work/callgrind.out" "$bin" --config "$work/keygate.toml" serve \
  >"$work/keygate.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.3; done
key=$(bench_key "$port" "$admin")

# Warm up: the key cache, the tokenizer, the upstream pool.
BENCH_KEY=$key wrk -t1 -c8 -d2s -s "$shared_bench/post.lua" "http://127.0.0.1:$port" >/dev/null
# wrk stops after two seconds whether or not its requests were answered: on a busy
# machine the first ones can still be building the tokenizer (~16 M instructions, once),
# which then lands in the count. A request answered in full means it is built.
for _ in 1 2; do
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$port/v1/chat/completions" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"model":"mock-model","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
done
callgrind_control --instr=on >/dev/null 2>&1
python3 - "$key" "$n" "$port" <<'PY'
import http.client, sys, threading
key, n, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = '{"model":"mock-model","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
def run(count):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        connection.request("POST", "/v1/chat/completions", body, headers)
        answer = connection.getresponse(); answer.read()
        assert answer.status == 200, answer.status
threads = [threading.Thread(target=run, args=(n // 4,)) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
callgrind_control --instr=off >/dev/null 2>&1
callgrind_control --dump >/dev/null 2>&1
sleep 1
total=$(callgrind_annotate "$(ls "$work"/callgrind.out* | sort | tail -1)" 2>/dev/null \
  | awk '/PROGRAM TOTALS/ && !found { gsub(",", "", $1); print $1; found = 1 }')
echo "instructions per request: $((total / n))"
