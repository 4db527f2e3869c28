#!/usr/bin/env bash
# Creates (once) a virtualenv from a requirements file. Idempotent: re-installs only when
# the requirements changed. Used by .ci/run and by the Python-driven tests, so a plain
# `cargo test` on a fresh machine works too.
#
#   ensure-venv.sh                      the client SDKs (tests/python/requirements.txt) in
#                                       $KEYGATE_TEST_VENV or target/py-venv
#   ensure-venv.sh REQUIREMENTS VENV    another set in its own virtualenv (the OpenAPI tools
#                                       in tests/openapi/, so their pins never fight the SDKs')
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
requirements=${1:-"$here/requirements.txt"}
venv=${2:-${KEYGATE_TEST_VENV:-"$here/../../target/py-venv"}}
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$want" > "$stamp"
