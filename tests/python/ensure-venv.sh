#!/usr/bin/env bash
# Creates (once) the virtualenv with the real client SDKs the tests drive keygate with.
# Idempotent: re-installs only when requirements.txt changed. Used by .ci/run and by
# tests/python_clients.rs, so a plain `cargo test` on a fresh machine works too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${KEYGATE_TEST_VENV:-"$here/../../target/py-venv"}
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
echo "$want" > "$stamp"
