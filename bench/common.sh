# Shared by bench/run.sh and bench/instructions.sh (sourced): the keygate configuration
# the benchmarks run and the key they send, so both measure the same work.

# bench_config FILE WORKDIR PORT MOCK_PORT [EXTRA_TOML]: one upstream (the mock) serving
# every model, `mock-model` priced, a fresh SQLite store in WORKDIR. UPSTREAM_URL (and
# UPSTREAM_CA, a PEM file) point the upstream elsewhere, e.g. at the mock behind TLS.
bench_config() {
  cat >"$1" <<TOML
listen = "127.0.0.1:$3"
database_url = "sqlite://$2/keygate.db"
${5:-}

[[upstreams]]
name = "mock"
base_url = "${UPSTREAM_URL:-http://127.0.0.1:$4/v1}"
models = ["*"]
${UPSTREAM_CA:+ca_file = \"$UPSTREAM_CA\"}

[[models]]
name = "mock-model"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
TOML
}

# bench_key PORT ADMIN_KEY: prints the secret of a new inference key with 4 global and 4
# per-model buckets and a month budget, all so high that nothing is refused: every request
# is checked and charged against all of them.
bench_key() {
  curl -sf -X POST "http://127.0.0.1:$1/admin/v1/keys" \
    -H "Authorization: Bearer $2" -H 'Content-Type: application/json' -d '{
      "name": "bench",
      "limits": {"rpm": 100000000, "rpd": 1000000000, "tpm": 10000000000, "tpd": 100000000000},
      "model_limits": [{"model": "mock-model", "rpm": 100000000, "rpd": 1000000000, "tpm": 10000000000, "tpd": 100000000000}],
      "budget": {"limit_usd": 1000000, "period": "month"}
    }' | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'
}

# require_free_ports PORT...: stops the script if any of them is taken on 127.0.0.1.
require_free_ports() {
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "port $p on 127.0.0.1 is in use; set MOCK_PORT / NGINX_PORT / BENCH_PORT to free ports (not KEYGATE_*: keygate reads those as its configuration)" >&2
      exit 1
    fi
  done
}

# ensure_mock BIN SHARED_BENCH: builds the shared mock upstream as BIN if it is not there.
ensure_mock() {
  [ -x "$1" ] || cargo build --release --quiet --manifest-path "$2/mock-upstream/Cargo.toml" \
    --target-dir "$(dirname "$(dirname "$1")")"
}
