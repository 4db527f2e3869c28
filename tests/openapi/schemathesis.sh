#!/usr/bin/env bash
# schemathesis over keygate's served /openapi.json with every check: the document must be
# true (parameters where they are sent, every status and body shape the server answers,
# the constraints the server enforces) and the server must never answer 5xx. Any finding
# fails. Run by .ci/run after `cargo test`; bounded to a few minutes.
#
# It starts the binary the test build made (target/debug/keygate; KEYGATE_BIN overrides) on
# a fresh SQLite file with a fixed bootstrap admin key, and fuzzes with that key. The
# failed-attempt guard's allowance is raised so the checks that send wrong keys on purpose
# do not lock the run out. tests/openapi/hooks.py keeps the run from revoking its own key.
#
# One worker: with more, hypothesis parses lambdas' source from several threads at once,
# which Python 3.11 can fail with "AST constructor recursion depth mismatch".
#
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (default 25 per operation), SCHEMATHESIS_SEED (default
# fixed, so CI is reproducible; set another, or `random`, to explore further).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

bin=${KEYGATE_BIN:-target/debug/keygate}
venv=target/openapi-venv
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-25}
seed=${SCHEMATHESIS_SEED:-20261204}

bash tests/python/ensure-venv.sh tests/openapi/requirements.txt "$venv"
if [ ! -x "$bin" ]; then
  cargo build
fi

work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

key=$("$bin" keys generate)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

DATABASE_URL="sqlite://$work/keygate.db" \
  KEYGATE_LISTEN="127.0.0.1:$port" \
  KEYGATE_BOOTSTRAP_ADMIN_KEY="$key" \
  KEYGATE_KEYS__FAILED_AUTH_PER_MINUTE=1000000 \
  RUST_LOG=warn \
  "$bin" serve >"$work/keygate.log" 2>&1 &
server=$!

for _ in $(seq 1 100); do
  if curl -fsS "$base/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "keygate exited during start-up:" >&2
    cat "$work/keygate.log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null

protected_id=$(curl -fsS -H "Authorization: Bearer $key" "$base/v1/key" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

status=0
KEYGATE_ADMIN_KEY="$key" \
  KEYGATE_PROTECTED_KEY_ID="$protected_id" \
  SCHEMATHESIS_HOOKS=hooks \
  PYTHONPATH="$root/tests/openapi" \
  NO_COLOR=1 \
  "$venv/bin/schemathesis" --config-file tests/openapi/schemathesis.toml \
  run "$base/openapi.json" \
  --checks all \
  --max-examples "$max_examples" \
  $( [ "$seed" = random ] || echo "--seed $seed" ) \
  --workers 1 \
  --request-timeout 30 \
  --no-color \
  || status=$?

if grep -q -E "panicked|ERROR" "$work/keygate.log"; then
  echo "keygate logged errors during the run:" >&2
  grep -E "panicked|ERROR" "$work/keygate.log" | head -n 50 >&2
  status=1
fi
exit "$status"
