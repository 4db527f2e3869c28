#!/usr/bin/env bash
# Smoke test of the built image (run.sh builds it; IMAGE names it): run it as a user would,
# with the hardening Kubernetes applies (read-only root, no capabilities), and check that
#   - it runs as a non-root user and its HEALTHCHECK (keygate health) passes;
#   - it answers /healthz and /readyz on the published port;
#   - it proxies a chat completion, plain and streamed, to an upstream (a mock on the
#     host) with the upstream credential from its environment;
#   - its SQLite store lives in the /data volume: after a restart the key made before
#     still works, and no second admin key was created;
#   - no secret shows up in its logs;
#   - config/nginx.conf in front of it (nginx from Debian, NGINX_IMAGE) passes requests and
#     streams through;
#   - the Kubernetes ConfigMap's keygate.toml is a configuration keygate accepts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
image=${IMAGE:-localhost/keygate:ci}
work="$root/target/container/smoke"
name="keygate-smoke-$$"
nginx_name="keygate-smoke-nginx-$$"
nginx_image=${NGINX_IMAGE:-}
volume="keygate-smoke-data-$$"
rm -rf "$work" && mkdir -p "$work"

log() { printf '[smoke] %s\n' "$*"; }
fail() { printf '[smoke] FAIL: %s\n' "$*" >&2; podman logs "$name" 2>&1 | tail -n 40 >&2 || true; exit 1; }

mock_pid=
cleanup() {
  podman rm -f -t 0 "$name" "$nginx_name" >/dev/null 2>&1 || true
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The mock upstream, on the host; the container reaches it through the bridge's gateway.
export MOCK_API_KEY="sk-mock-$$-$RANDOM"
python3 "$here/mock_upstream.py" --host 0.0.0.0 --port 0 --log "$work/upstream.log" >"$work/mock.port" &
mock_pid=$!
for _ in $(seq 1 50); do [ -s "$work/mock.port" ] && break; sleep 0.1; done
mock_port=$(cat "$work/mock.port")
[ -n "$mock_port" ] || fail "the mock upstream did not start"

cat >"$work/keygate.toml" <<TOML
[[upstreams]]
name = "mock"
base_url = "http://host.containers.internal:$mock_port/v1"
api_key_env = "MOCK_API_KEY"
models = ["*"]

[[models]]
name = "gpt-4o-mini"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
TOML
chmod 644 "$work/keygate.toml"

admin=$(podman run --rm --health-interval=disable "$image" keys generate 2>"$work/run.err") \
  || { cat "$work/run.err" >&2; fail "keys generate"; }
port=$(free_port)
base="http://127.0.0.1:$port"
podman volume create "$volume" >/dev/null

start() {
  # podman would run the HEALTHCHECK on a systemd timer; there is no systemd here (it
  # says so on stderr), so the check is run below with `podman healthcheck run`.
  podman run -d --name "$name" --health-interval=disable \
    --read-only --cap-drop=ALL --security-opt=no-new-privileges \
    -p "127.0.0.1:$port:8080" \
    -v "$volume:/data" \
    -v "$work/keygate.toml:/etc/keygate/keygate.toml:ro" \
    -e KEYGATE_BOOTSTRAP_ADMIN_KEY="$admin" \
    -e MOCK_API_KEY="$MOCK_API_KEY" \
    "$image" >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; fail "podman run"; }
}
wait_healthy() {
  for _ in $(seq 1 60); do
    if curl -fsS -o /dev/null "$base/healthz" 2>/dev/null; then return 0; fi
    podman container exists "$name" && [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] \
      || fail "the container stopped"
    sleep 0.5
  done
  fail "/healthz did not answer within 30 s"
}
# status METHOD PATH [KEY] [BODY] -> prints the status code, body in $work/body
status() {
  local args=(-sS -o "$work/body" -w '%{http_code}' -X "$1" "$base$2")
  [ -n "${3:-}" ] && args+=(-H "Authorization: Bearer $3")
  [ -n "${4:-}" ] && args+=(-H 'Content-Type: application/json' --data "$4")
  curl "${args[@]}"
}
expect() { # expect WANT METHOD PATH [KEY] [BODY]
  local want=$1; shift
  local got; got=$(status "$@")
  [ "$got" = "$want" ] || fail "$1 $2 answered $got, expected $want: $(head -c 500 "$work/body")"
}

log "image: $image"
start
wait_healthy

# Non-root: the image's user, and the uid the process actually runs as.
[ "$(podman inspect -f '{{.Config.User}}' "$image")" = "10001:10001" ] || fail "image user is not 10001:10001"
uid=$(podman exec "$name" id -u)
[ "$uid" != 0 ] || fail "keygate runs as root"
[ "$(podman exec "$name" id -un):$(podman exec "$name" id -gn)" = keygate:keygate ] \
  || fail "uid/gid 10001 are not the keygate user and group"
podman top "$name" user | tail -n +2 | grep -qvw root || fail "a process runs as root"
log "runs as uid $uid"

# The HEALTHCHECK as the image declares it (kept by --format docker), and run by podman.
podman image inspect "$image" | jq -e '.[0].Healthcheck.Test[1:3] == ["keygate", "health"]' >/dev/null \
  || fail "the image has no HEALTHCHECK running keygate health"
podman healthcheck run "$name" >/dev/null || fail "the HEALTHCHECK fails"
podman exec "$name" keygate health || fail "keygate health fails inside the container"
log "HEALTHCHECK passes"

expect 200 GET /healthz
expect 200 GET /readyz

# A key, and a proxied request with it.
expect 201 POST /admin/v1/keys "$admin" '{"name":"smoke"}'
secret=$(jq -r .secret "$work/body")
key_id=$(jq -r .id "$work/body")
chat='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}'
expect 200 POST /v1/chat/completions "$secret" "$chat"
jq -e '.choices[0].message.content == "Hello from the mock upstream."' "$work/body" >/dev/null \
  || fail "unexpected completion: $(cat "$work/body")"
stream='{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello"}]}'
expect 200 POST /v1/chat/completions "$secret" "$stream"
grep -q '^data: \[DONE\]' "$work/body" || fail "the stream did not end with [DONE]: $(head -c 500 "$work/body")"
grep -q 'auth=bad' "$work/upstream.log" && fail "keygate sent the upstream a wrong credential"
[ "$(grep -c 'POST /v1/chat/completions auth=ok' "$work/upstream.log")" = 2 ] \
  || fail "the upstream saw: $(cat "$work/upstream.log")"
expect 401 POST /v1/chat/completions "kg_not_a_key" "$chat"
log "proxied a completion and a stream"

# Data survives a restart (SIGTERM, drain, start again on the same volume).
podman restart -t 30 "$name" >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; fail "podman restart"; }
wait_healthy
expect 200 POST /v1/chat/completions "$secret" "$chat"
expect 200 GET "/admin/v1/keys/$key_id" "$admin"
expect 200 GET /admin/v1/keys "$admin"
[ "$(jq '[.data[] | select(.kind == "admin")] | length' "$work/body")" = 1 ] \
  || fail "admin keys after restart: $(cat "$work/body")"
[ -s "$(podman volume inspect -f '{{.Mountpoint}}' "$volume")/keygate.db" ] \
  || fail "no keygate.db in the /data volume"
log "the key survived a restart (SQLite in the /data volume)"

# Nothing secret in the logs.
podman logs "$name" >"$work/container.log" 2>&1
for s in "$admin" "$secret" "$MOCK_API_KEY"; do
  grep -qF -- "$s" "$work/container.log" && fail "a secret appears in the container's logs"
done
log "no secret in the logs"

# nginx in front, with the compose file's config; `keygate` resolves to this container.
if [ -n "$nginx_image" ]; then
  ip=$(podman inspect -f '{{.NetworkSettings.IPAddress}}' "$name")
  nginx_port=$(free_port)
  podman run -d --name "$nginx_name" --add-host "keygate:$ip" -p "127.0.0.1:$nginx_port:8080" \
    -v "$root/config/nginx.conf:/etc/nginx/nginx.conf:ro" "$nginx_image" nginx -g 'daemon off;' >/dev/null
  direct=$base
  base="http://127.0.0.1:$nginx_port"
  for _ in $(seq 1 40); do curl -fsS -o /dev/null "$base/healthz" 2>/dev/null && break; sleep 0.25; done
  expect 200 GET /healthz
  expect 200 POST /v1/chat/completions "$secret" "$chat"
  expect 200 POST /v1/chat/completions "$secret" "$stream"
  grep -q '^data: \[DONE\]' "$work/body" || fail "the stream through nginx did not end with [DONE]"
  expect 401 GET /admin/v1/keys "kg_not_a_key"
  base=$direct
  log "config/nginx.conf proxies requests and streams"
fi

# The Kubernetes ConfigMap's keygate.toml loads (migrate on a throwaway SQLite store).
python3 - "$root/deploy/kubernetes/configmap.yaml" >"$work/k8s-keygate.toml" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
block = text.split("keygate.toml: |\n", 1)[1]
print("\n".join(line[4:] for line in block.splitlines() if line.startswith("    ") or not line.strip()))
PY
chmod 644 "$work/k8s-keygate.toml"
podman run --rm --health-interval=disable --read-only -v "$work/k8s-keygate.toml:/etc/keygate/keygate.toml:ro" \
  "$image" migrate >/dev/null 2>"$work/k8s-config.log" \
  || { cat "$work/k8s-config.log" >&2; fail "keygate refuses deploy/kubernetes/configmap.yaml's keygate.toml"; }
log "deploy/kubernetes/configmap.yaml's keygate.toml loads"

log "ok"
