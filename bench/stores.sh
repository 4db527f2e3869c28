#!/usr/bin/env bash
# Issue 12 §6, the store figures, side by side in one run: keygate's hot-path throughput
# with SQLite and with PostgreSQL as the store, and with 100 000 keys in PostgreSQL of
# which 10 000 are in use, against the same mock upstream, measured in turn round after
# round (the ratios are taken within a round, seconds apart; see bench/side-by-side.sh).
#
# Targets, all running at once, each pinned to SERVER_CPU (wrk to LOAD_CPU; PostgreSQL is
# the machine's shared server, pinned only with PG_CPU):
#   0 sqlite      SQLite store, one key
#   1 pg          PostgreSQL store (fresh database), one key
#   2 pg-many     PostgreSQL (another fresh database) with 100 000 keys, 10 000 in use
#   3 pg-many-60s as 2, same database, keys.cache_ttl_ms = 60000 instead of 1000
# Every key has the 8 buckets and the budget of bench/common.sh's bench_key. Every run uses
# bench/keys.lua (round robin over a key file; a one-line file for the one-key targets),
# so wrk does the same work per request for all.
#
# The 100 000 keys: the first key is made through the admin API (the template: limits and
# budget); the others are real keys made by `examples/bench_keys.rs` (argon2id hashes with
# the smallest cost, see there) and copied into api_key/api_key_secret with psql `\copy`,
# every column but the key's own taken from the template.
#
# Usage: bench/stores.sh                       (ROUNDS=5 SECONDS_PER_RUN=5 CONNS=32)
#        BENCH_BIN=target/debug/keygate KEYS=2000 IN_USE=100 ROUNDS=1 SECONDS_PER_RUN=1 \
#          bench/stores.sh                     (a quick check of the script itself)
#        KEYS=100000 IN_USE=10000 ROUNDS=3 bench/stores.sh
# Needs: wrk, psql, a PostgreSQL server (PG_ADMIN_URL, default the local one).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
shared_bench=${SHARED_BENCH:-"$repo/../shared/bench"}
rounds=${ROUNDS:-5}
seconds=${SECONDS_PER_RUN:-5}
conns=${CONNS:-32}
total_keys=${KEYS:-100000}
in_use=${IN_USE:-10000}
server_cpu=${SERVER_CPU:-0}
load_cpu=${LOAD_CPU:-1}
# MOCK_CPU=1 PG_CPU=1: keygate alone on SERVER_CPU, the mock upstream and the machine's
# PostgreSQL (every process of it, for the run; new backends inherit the postmaster's
# CPUs) beside wrk on the other core, as a remote provider and database would be.
mock_cpu=${MOCK_CPU:-$server_cpu}
pg_cpu=${PG_CPU:-}
# Ports apart from bench/side-by-side.sh's, so both can run on one machine (not at once).
mock_port=${MOCK_PORT:-28280}
first_port=${BENCH_PORT:-28290}
mock_bin=${MOCK_BIN:-/tmp/mock-upstream-target/release/mock-upstream}
pg_admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
work=${BENCH_DIR:-/tmp/keygate-stores}
# shellcheck source=bench/common.sh
. "$here/common.sh"

require_free_ports "$mock_port" $(seq "$first_port" $((first_port + 3)))
ensure_mock "$mock_bin" "$shared_bench"
bin=${BENCH_BIN:-"$repo/target/release/keygate"}
[ -n "${BENCH_BIN:-}" ] || (cd "$repo" && cargo build --release --quiet --bin keygate)
# The key generator runs once, so a debug build (argon2 is optimised in it too) will do;
# BENCH_KEYS_GEN names one built already (e.g. beside a release BENCH_BIN).
gen=${BENCH_KEYS_GEN:-"$repo/target/debug/examples/bench_keys"}
[ -n "${BENCH_KEYS_GEN:-}" ] || (cd "$repo" && cargo build --quiet --example bench_keys)
rm -rf "$work" && mkdir -p "$work"
suffix=$(date +%s)
db_one=kg_bench_one_$suffix
db_many=kg_bench_many_$suffix
pg_url() { echo "${pg_admin%/*}/$1"; }
groups=()
pin_postgres() { for p in $(pgrep -x postgres); do taskset -p -c "$1" "$p" >/dev/null 2>&1 || true; done; }
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
  [ -z "$pg_cpu" ] || pin_postgres "0-$(($(nproc) - 1))"
  for g in "${groups[@]}"; do kill -TERM -- -"$g" 2>/dev/null || true; done
  sleep 1
  for db in "$db_one" "$db_many"; do
    psql -q "$pg_admin" -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
psql -q "$pg_admin" -c "create database $db_one" -c "create database $db_many"

[ -z "$pg_cpu" ] || pin_postgres "$pg_cpu"
setsid taskset -c "$mock_cpu" env MOCK_ADDR="127.0.0.1:$mock_port" MOCK_THREADS=1 "$mock_bin" \
  >"$work/mock.log" 2>&1 &
groups+=($!)

admin=$("$bin" keys generate)
names=(); urls=(); key_files=(); pids=()
# start NAME DATABASE_URL [EXTRA_TOML]: one keygate, pinned; waits for /healthz.
start() {
  local i=${#names[@]} port=$((first_port + ${#names[@]})) dir=$work/$1
  mkdir -p "$dir"
  bench_config "$dir/keygate.toml" "$dir" "$port" "$mock_port" "${3:-}"
  sed -i "s#^database_url = .*#database_url = \"$2\"#" "$dir/keygate.toml"
  KEYGATE_BOOTSTRAP_ADMIN_KEY=$admin setsid taskset -c "$server_cpu" "$bin" --config "$dir/keygate.toml" serve \
    >"$dir/keygate.log" 2>&1 &
  groups+=($!); pids+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
  names+=("$1"); urls+=("http://127.0.0.1:$port")
  echo "$1: port $port, pid ${pids[$i]}" >&2
}
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# run TARGET SECONDS: wrk against TARGET with its key file; prints requests/s, non-2xx, and
# keygate's own CPU time per request in µs (user + system, from /proc: independent of
# where PostgreSQL, the mock and wrk run).
# The other targets are stopped (SIGSTOP) meanwhile: their background work (a usage flush,
# a budget reload and key checks for 10 000 keys every second, while their accounts are
# active) would otherwise run on the same core and the same PostgreSQL, and slow whichever
# target is measured, the one-key baseline included (PAUSE_OTHERS=0 keeps them running).
run() {
  local out t0 t1 other
  [ "${PAUSE_OTHERS:-1}" = 0 ] || for other in "${pids[@]}"; do
    [ "$other" = "${pids[$1]}" ] || kill -STOP "$other" 2>/dev/null || true
  done
  t0=$(cpu_ticks "${pids[$1]}")
  out=$(BENCH_KEYS_FILE=${key_files[$1]} timeout $(($2 + 30)) taskset -c "$load_cpu" \
    wrk -t1 -c"$conns" -d"$2s" --timeout 10s -s "$here/keys.lua" "${urls[$1]}" 2>&1 || true)
  t1=$(cpu_ticks "${pids[$1]}")
  for other in "${pids[@]}"; do kill -CONT "$other" 2>/dev/null || true; done
  awk -v rps="$(awk '/Requests\/sec/{print $2}' <<<"$out")" -v bad="$(awk '/Non-2xx/{print $NF}' <<<"$out")" \
    -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v secs="$2" \
    'BEGIN { printf "%s\t%s\t%.1f\n", rps, bad, (rps > 0 ? ticks / hz * 1e6 / (rps * secs) : 0) }'
}

start sqlite "sqlite://$work/sqlite/keygate.db"
bench_key "$first_port" "$admin" >"$work/one-sqlite.txt"
key_files+=("$work/one-sqlite.txt")

start pg "$(pg_url "$db_one")"
bench_key "$((first_port + 1))" "$admin" >"$work/one-pg.txt"
key_files+=("$work/one-pg.txt")

start pg-many "$(pg_url "$db_many")"
template_secret=$(bench_key "$((first_port + 2))" "$admin")
echo "$template_secret" >"$work/one-many.txt"
echo "making $total_keys keys ($in_use in use)..." >&2
"$gen" "$((total_keys - 1))" "$in_use" "$work/keys.tsv" "$work/in-use.txt"
psql -q -v ON_ERROR_STOP=1 "$(pg_url "$db_many")" <<SQL
create temp table bench_key (n int, id uuid, lookup_id text, partial_key text, last6 text, hash text);
\copy bench_key from '$work/keys.tsv'
insert into api_key (
    id, workspace_id, name, kind, partial_key, last6, created_by, created_at, updated_at,
    expires_at, last_used_at, revoked_at, metadata, allowed_models, budget, limits,
    model_limits, max_parallel, ip_allowlist, alert_thresholds, compat, wallet_address)
select b.id, t.workspace_id, 'bench-' || b.n, t.kind, b.partial_key, b.last6, t.created_by,
       now(), now(), null, null, null, t.metadata, t.allowed_models, t.budget, t.limits,
       t.model_limits, t.max_parallel, t.ip_allowlist, t.alert_thresholds, t.compat, null
from bench_key b
join api_key t on t.name = 'bench' and t.revoked_at is null;
insert into api_key_secret (lookup_id, key_id, hash, valid_until, created_at)
select lookup_id, id, hash, null, now() from bench_key;
analyze api_key; analyze api_key_secret;
SQL
echo "keys in the store: $(psql -tA "$(pg_url "$db_many")" -c 'select count(*) from api_key')" >&2
# In use: the template key (cached already) and in_use - 1 of the copied ones.
{ cat "$work/one-many.txt"; head -n "$((in_use - 1))" "$work/in-use.txt"; } >"$work/many.txt"
key_files+=("$work/many.txt")
start pg-many-60s "$(pg_url "$db_many")" $'[keys]\ncache_ttl_ms = 60000'
key_files+=("$work/many.txt")

# Warm every target (every in-use key verified once, pools and buckets made), taking the
# RSS of the many-key targets before and after their keys are cached.
for t in 0 1; do run "$t" 3 >/dev/null; done
BENCH_KEYS_FILE=$work/one-many.txt taskset -c "$load_cpu" wrk -t1 -c"$conns" -d3s -s "$here/keys.lua" "${urls[2]}" >/dev/null 2>&1 || true
BENCH_KEYS_FILE=$work/one-many.txt taskset -c "$load_cpu" wrk -t1 -c"$conns" -d3s -s "$here/keys.lua" "${urls[3]}" >/dev/null 2>&1 || true
rss_before=("" "" "$(rss_kib "${pids[2]}")" "$(rss_kib "${pids[3]}")")
for t in 2 3; do run "$t" 15 >/dev/null; done
rss_after=("" "" "$(rss_kib "${pids[2]}")" "$(rss_kib "${pids[3]}")")

results=$work/results.tsv
: >"$results"
for round in $(seq 1 "$rounds"); do
  for t in "${!urls[@]}"; do
    run "$t" 2 >/dev/null
    printf '%s\t%s\t%s\n' "$round" "$t" "$(run "$t" "$seconds")" | tee -a "$results"
  done
done

python3 - "$results" "$in_use" "${names[@]}" <<'PY'
import statistics, sys
path, in_use, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = {}
cpu = {}
for line in open(path):
    round_, target, rps, non2xx, us = (line.rstrip("\n").split("\t") + ["", ""])[:5]
    if non2xx.strip() not in ("", "0"):
        sys.exit(f"{names[int(target)]}: {non2xx} non-2xx answers in round {round_}")
    runs.setdefault(int(target), []).append(float(rps or 0))
    cpu.setdefault(int(target), []).append(float(us or 0))
for t in sorted(runs):
    print(f"{names[t]}: median {statistics.median(runs[t]):.0f} rps (rounds: {', '.join(f'{r:.0f}' for r in runs[t])}); "
          f"keygate CPU {statistics.median(cpu[t]):.1f} µs per request (rounds: {', '.join(f'{c:.1f}' for c in cpu[t])})")
def ratio(a, b, what):
    rs = [x / y for x, y in zip(runs[a], runs[b]) if y > 0]
    print(f"{what}: median ratio {statistics.median(rs):.3f} (rounds: {', '.join(f'{r:.2f}' for r in rs)})")
ratio(1, 0, "PostgreSQL / SQLite, one key")
ratio(2, 1, f"PostgreSQL {in_use} keys in use / one key (cache_ttl_ms 1000)")
ratio(3, 1, f"PostgreSQL {in_use} keys in use / one key (cache_ttl_ms 60000)")
def cpu_ratio(a, b, what):
    rs = [x / y for x, y in zip(cpu[a], cpu[b]) if y > 0]
    print(f"{what}: keygate CPU per request, median ratio {statistics.median(rs):.3f} (rounds: {', '.join(f'{r:.2f}' for r in rs)})")
cpu_ratio(2, 1, f"PostgreSQL {in_use} keys in use / one key (cache_ttl_ms 1000)")
cpu_ratio(3, 1, f"PostgreSQL {in_use} keys in use / one key (cache_ttl_ms 60000)")
PY
for t in 2 3; do
  awk -v n="${names[$t]}" -v b="${rss_before[$t]}" -v a="${rss_after[$t]}" -v k="$in_use" 'BEGIN{
    printf "%s RSS: %.1f MiB with one key cached, %.1f MiB with %d cached: %.2f KiB per cached key\n",
      n, b/1024, a/1024, k, (a-b)/(k-1)}'
done
for t in "${!pids[@]}"; do
  awk -v n="${names[$t]}" '/^VmHWM/{printf "%s peak RSS %.1f MiB\n", n, $2/1024}' "/proc/${pids[$t]}/status"
done
