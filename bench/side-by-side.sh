#!/usr/bin/env bash
# Interleaved throughput: nginx `proxy_pass` and one or more keygate builds, all running at
# once against the same mock upstream, measured in turn round after round; prints each
# run and the median over the rounds of each build's ratio to nginx in the same round.
#
# Why besides bench/run.sh: on a noisy shared machine (steal time) throughput moves by tens
# of percent between runs a minute apart; a ratio taken within one round, seconds apart,
# and its median over many rounds, is what survives that.
#
# With RATE set, each run is instead an open-loop one at that fixed rate (oha, latency
# corrected, 64 connections as in the shared harness) and `direct` (the mock itself) joins
# the rounds: it prints the median over the rounds of each target's p99 minus direct's p99
# in the same round, the figure the tail-latency target is stated in.
#
# Layout as in the shared harness: every server pinned to SERVER_CPU (0), wrk to LOAD_CPU (1).
# MOCK_CPU=1 is the other layout: the upstream on the load generator's core, so the proxy
# under test (keygate or nginx) has CPU 0 to itself, as with a remote provider.
# UPSTREAM_TLS=1 puts the mock behind TLS (issue 14 §3): an nginx on the mock's core
# terminates TLS 1.3 for it on TLS_PORT with a private CA made here; the nginx under test
# proxies to it with `proxy_pass https://` (upstream keepalive, session reuse, the
# certificate verified), keygate with `base_url = "https://localhost:…"` and `ca_file`.
# Usage: bench/side-by-side.sh BIN [BIN...]
#        ROUNDS=8 SECONDS_PER_RUN=4 CONNS=32 SCRIPT=post-stream.lua bench/side-by-side.sh A B
#        RATE=14000 SECONDS_PER_RUN=6 bench/side-by-side.sh A
# Needs: wrk, nginx, and oha for RATE (OHA=path, default: on PATH or /tmp/oha-install/bin);
# the mock is built if missing (bench/common.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared_bench=${SHARED_BENCH:-"$repo/../shared/bench"}
rounds=${ROUNDS:-8}
seconds=${SECONDS_PER_RUN:-4}
conns=${CONNS:-32}
script=$shared_bench/${SCRIPT:-post.lua}
rate=${RATE:-}
oha=${OHA:-$(command -v oha || echo /tmp/oha-install/bin/oha)}
server_cpu=${SERVER_CPU:-0}
load_cpu=${LOAD_CPU:-1}
mock_cpu=${MOCK_CPU:-$server_cpu}
mock_port=${MOCK_PORT:-28080}
upstream_tls=${UPSTREAM_TLS:-}
tls_port=${TLS_PORT:-28083}
nginx_port=${NGINX_PORT:-28081}
first_port=${BENCH_PORT:-28090}
mock_bin=${MOCK_BIN:-/tmp/mock-upstream-target/release/mock-upstream}
work=${BENCH_DIR:-/tmp/keygate-side-by-side}
# shellcheck source=bench/common.sh
. "$here/common.sh"
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN...]" >&2; exit 2; }

# shellcheck disable=SC2046 # one port per build
require_free_ports "$mock_port" "$nginx_port" ${upstream_tls:+"$tls_port"} $(seq "$first_port" $((first_port + $# - 1)))
ensure_mock "$mock_bin" "$shared_bench"
rm -rf "$work" && mkdir -p "$work/nginx"
groups=()
trap 'for g in "${groups[@]}"; do kill -TERM -- -"$g" 2>/dev/null || true; done' EXIT

setsid taskset -c "$mock_cpu" env MOCK_ADDR="127.0.0.1:$mock_port" MOCK_THREADS=1 "$mock_bin" \
  >"$work/mock.log" 2>&1 &
groups+=($!)
sed -e "s#@WORKDIR@#$work/nginx#g" -e "s#@NGINX_PORT@#$nginx_port#g" -e "s#@MOCK_PORT@#$mock_port#g" \
  -e "s#@NGINX_WORKERS@#1#g" "$shared_bench/nginx.conf.tmpl" >"$work/nginx/nginx.conf"
if [ -n "$upstream_tls" ]; then
  tls=$work/tls
  mkdir -p "$tls/nginx"
  # A private CA and a certificate for localhost signed by it.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=keygate-bench-ca -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' >"$tls/ext.cnf"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 2 -extfile "$tls/ext.cnf" -out "$tls/server.pem" 2>/dev/null
  # The TLS front of the mock, on the mock's core.
  sed -e "s#@WORKDIR@#$tls/nginx#g" -e "s#@NGINX_PORT@#$tls_port ssl#g" -e "s#@MOCK_PORT@#$mock_port#g" \
    -e "s#@NGINX_WORKERS@#1#g" \
    -e "s#^\( *\)listen \(.*\);#\1listen \2;\n\1ssl_certificate $tls/server.pem;\n\1ssl_certificate_key $tls/server.key;\n\1ssl_protocols TLSv1.3;\n\1ssl_session_cache shared:tls:10m;#" \
    "$shared_bench/nginx.conf.tmpl" >"$tls/nginx/nginx.conf"
  setsid taskset -c "$mock_cpu" nginx -p "$tls/nginx" -c "$tls/nginx/nginx.conf" >"$work/tls-nginx.log" 2>&1 &
  groups+=($!)
  # The nginx under test reaches the mock through it, as a client of a real provider does.
  sed -i -e "s#server 127.0.0.1:$mock_port;#server 127.0.0.1:$tls_port;#" \
    -e "s#proxy_pass http://mock;#proxy_pass https://mock; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; proxy_ssl_server_name on; proxy_ssl_name localhost; proxy_ssl_verify on; proxy_ssl_trusted_certificate $tls/ca.pem;#" \
    "$work/nginx/nginx.conf"
  export UPSTREAM_URL="https://localhost:$tls_port/v1" UPSTREAM_CA="$tls/ca.pem"
fi
setsid taskset -c "$server_cpu" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx.log" 2>&1 &
groups+=($!)

names=(nginx); urls=("http://127.0.0.1:$nginx_port"); keys=(none); pids=("")
if [ -n "$rate" ]; then
  [ -x "$oha" ] || { echo "RATE needs oha (cargo install oha --locked --root /tmp/oha-install)" >&2; exit 2; }
  names=(direct "${names[@]}"); urls=("http://127.0.0.1:$mock_port" "${urls[@]}"); keys=(none "${keys[@]}"); pids=("" "${pids[@]}")
fi
i=0
for bin in "$@"; do
  port=$((first_port + i)); dir=$work/keygate-$i
  mkdir -p "$dir"
  bench_config "$dir/keygate.toml" "$dir" "$port" "$mock_port"
  admin=$("$bin" keys generate)
  KEYGATE_BOOTSTRAP_ADMIN_KEY=$admin setsid taskset -c "$server_cpu" "$bin" --config "$dir/keygate.toml" serve \
    >"$dir/keygate.log" 2>&1 &
  groups+=($!); pids+=($!)
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
  names+=("keygate-$i ($bin)"); urls+=("http://127.0.0.1:$port"); keys+=("$(bench_key "$port" "$admin")")
  i=$((i + 1))
done
sleep 1

results=$work/results.tsv
: >"$results"
body='{"model":"mock-model","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
# at_rate TARGET SECONDS OHA_ARG...: oha at the fixed rate against TARGET, as the shared
# harness runs it (64 connections).
at_rate() {
  local t=$1 secs=$2
  shift 2
  timeout $((secs + 60)) taskset -c "$load_cpu" "$oha" --no-tui -z "${secs}s" -q "$rate" -c 64 "$@" \
    -m POST -T application/json -H "Authorization: Bearer ${keys[$t]}" -d "$body" \
    "${urls[$t]}/v1/chat/completions"
}

# open_loop TARGET ROUND: a short warm-up at the rate (so pools and caches are in the state
# a long run has), then one latency-corrected run; appends round, target, p50, p99, p99.9
# (ms) and the share of failed requests to the results.
open_loop() {
  local out=$work/oha-$2-$1.json
  at_rate "$1" 2 >/dev/null 2>&1 || true
  at_rate "$1" "$seconds" --output-format json --latency-correction >"$out" 2>/dev/null || true
  python3 - "$2" "$1" "$out" <<'PY' | tee -a "$results"
import json, sys
round_, target, path = sys.argv[1:4]
d = json.load(open(path))
p, ok = d["latencyPercentiles"], d["summary"]["successRate"] or 0
codes = d.get("statusCodeDistribution", {})
failed = 1 - ok + sum(n for c, n in codes.items() if c != "200") / max(1, sum(codes.values()))
print(f"{round_}\t{target}\t{p['p50'] * 1000:.3f}\t{p['p99'] * 1000:.3f}\t{p['p99.9'] * 1000:.3f}\t{failed:.4f}")
PY
}

for round in $(seq 1 "$rounds"); do
  for t in "${!urls[@]}"; do
    if [ -n "$rate" ]; then
      open_loop "$t" "$round"
      continue
    fi
    BENCH_KEY=${keys[$t]} taskset -c "$load_cpu" wrk -t1 -c"$conns" -d3s -s "$script" "${urls[$t]}" >/dev/null 2>&1 || true
    out=$(BENCH_KEY=${keys[$t]} timeout $((seconds + 30)) taskset -c "$load_cpu" \
      wrk -t1 -c"$conns" -d"${seconds}s" --timeout 10s -s "$script" "${urls[$t]}" 2>&1 || true)
    rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
    printf '%s\t%s\t%s\t%s\n' "$round" "$t" "${rps:-0}" "${non2xx:-0}" | tee -a "$results"
  done
done

if [ -n "$rate" ]; then
  python3 - "$results" "${names[@]}" <<'PY'
import statistics, sys
path, names = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(path):
    round_, target, p50, p99, p999, failed = line.split("\t")
    if float(failed) > 0:
        sys.exit(f"{names[int(target)]}: {float(failed):.2%} of requests failed in round {round_}")
    runs.setdefault(int(target), []).append((float(p50), float(p99), float(p999)))
direct = runs[0]
for target in sorted(runs):
    p50, p99, p999 = (statistics.median(r[i] for r in runs[target]) for i in range(3))
    over = [r[1] - d[1] for r, d in zip(runs[target], direct)]
    print(f"{names[target]}: median p50 {p50:.2f} ms, p99 {p99:.2f} ms, p99.9 {p999:.2f} ms; "
          f"p99 over direct: median {statistics.median(over):+.2f} ms "
          f"(rounds: {', '.join(f'{o:+.2f}' for o in over)})")
PY
else
python3 - "$results" "${names[@]}" <<'PY'
import statistics, sys
path, names = sys.argv[1], sys.argv[2:]
runs = {}
for line in open(path):
    round_, target, rps, non2xx = line.split("\t")
    if int(non2xx) != 0:
        sys.exit(f"{names[int(target)]}: {non2xx.strip()} non-2xx answers in round {round_}")
    runs.setdefault(int(target), []).append(float(rps))
nginx = runs[0]
print(f"nginx: median {statistics.median(nginx):.0f} rps")
for target in sorted(runs)[1:]:
    ratios = [a / b for a, b in zip(runs[target], nginx) if b > 0]
    print(f"{names[target]}: median {statistics.median(runs[target]):.0f} rps, "
          f"median ratio to nginx {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
PY
fi
for t in "${!pids[@]}"; do
  if [ -n "${pids[$t]}" ]; then
    awk -v n="${names[$t]}" '/^VmHWM/{printf "%s peak RSS %.1f MiB\n", n, $2/1024}' "/proc/${pids[$t]}/status"
  fi
done
