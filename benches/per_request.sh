#!/usr/bin/env bash
# What one chat request costs the gateway, in figures that do not move with the machine's load:
# system calls per request (strace -c) and instructions per request (callgrind), for a JSON
# answer and a five-event stream from a zero-delay nginx mock.
#
#   cargo build --profile dist && bash benches/per_request.sh
#
# Environment:
#   SWITCHYARD_BIN   gateway binary (default: target/dist/switchyard, else target/release/switchyard)
#   REQUESTS         requests counted per callgrind figure (default 1000)
#
# Instructions are counted as the difference between a run of 200 requests and a run of
# 200 + REQUESTS, divided by REQUESTS, so start-up costs cancel out. Needs nginx, strace,
# valgrind, curl and python3 (apt-get install nginx strace valgrind curl python3).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQUESTS=${REQUESTS:-1000}
SWITCHYARD_BIN=${SWITCHYARD_BIN:-}
if [[ -z $SWITCHYARD_BIN ]]; then
  SWITCHYARD_BIN=$ROOT/target/dist/switchyard
  [[ -x $SWITCHYARD_BIN ]] || SWITCHYARD_BIN=$ROOT/target/release/switchyard
fi
[[ -x $SWITCHYARD_BIN ]] || { echo "build the gateway first: cargo build --profile dist" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for tool in "$NGINX" strace valgrind curl python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-per-request.XXXXXX")
chmod 755 "$TMP"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
JSON_PORT=$(free_port) SSE_PORT=$(free_port) GW_PORT=$(free_port)
GW_PID=
cleanup() {
  [[ -z $GW_PID ]] || kill "$GW_PID" 2>/dev/null || true
  "$NGINX" -s stop -p "$TMP/" -c "$TMP/nginx.conf" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

chunk() { printf 'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}\\n\\n' "$1" "$2"; }
SSE="$(chunk '{"role":"assistant","content":""}' null)$(chunk '{"content":"Your shipment left"}' null)$(chunk '{"content":" our warehouse"}' null)$(chunk '{}' '"stop"')data: [DONE]\n\n"
JSON='{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Your shipment left our warehouse on Tuesday and is at the regional depot."},"finish_reason":"stop"}],"usage":{"prompt_tokens":318,"completion_tokens":44,"total_tokens":362}}'
MODELS='{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1700000000,"owned_by":"bench"}]}'
cat >"$TMP/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/cb; proxy_temp_path $TMP/px; fastcgi_temp_path $TMP/fc;
    uwsgi_temp_path $TMP/uw; scgi_temp_path $TMP/sc;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$JSON_PORT;
        location = /v1/chat/completions { default_type application/json; return 200 '$JSON'; }
        location = /v1/models { default_type application/json; return 200 '$MODELS'; }
    }
    server {
        listen 127.0.0.1:$SSE_PORT;
        location = /v1/chat/completions { default_type text/event-stream; return 200 '$SSE'; }
        location = /v1/models { default_type application/json; return 200 '$MODELS'; }
    }
}
EOF
"$NGINX" -e "$TMP/error.log" -p "$TMP/" -c "$TMP/nginx.conf"

cat >"$TMP/switchyard.yaml" <<EOF
server: {listen: "127.0.0.1:$GW_PORT", drain_timeout: 1s}
upstreams:
  mock: {kind: openai, route: cloud, url: "http://127.0.0.1:$JSON_PORT", model: gpt-4o, api_key: sk-bench}
  mocksse: {kind: openai, route: cloud, url: "http://127.0.0.1:$SSE_PORT", model: gpt-4o, api_key: sk-bench}
models:
  - {name: gpt-4o, upstream: mock}
  - {name: gpt-4o-stream, upstream: mocksse}
default_route: {upstream: mock}
cache: {enabled: true}
EOF

# The same 1.4 KB request as benches/load.sh, at temperature 0.2 (not cached), sent with a
# client key as SDKs send one (without `keys:` the gateway fingerprints it for the tenant).
python3 - "$TMP" <<'PY'
import json, sys
system = ("You are a support assistant for a regional logistics company. Answer questions about "
          "shipments, invoices and delivery schedules clearly and politely. ") * 3
user = "Hello, I placed an order for twelve boxes of printer paper and two office chairs about a week ago. " * 10
for name, model, stream in (("json", "gpt-4o", False), ("stream", "gpt-4o-stream", True)):
    body = {"model": model, "messages": [{"role": "system", "content": system},
            {"role": "user", "content": user}], "temperature": 0.2, "max_tokens": 256}
    if stream:
        body["stream"] = True
    open(f"{sys.argv[1]}/{name}.json", "w").write(json.dumps(body))
PY

# send BODY N: N requests, one after the other on one connection.
send() {
  python3 - "$1" "$2" "$GW_PORT" <<'PY'
import http.client, sys
body = open(sys.argv[1], "rb").read()
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[3]))
for _ in range(int(sys.argv[2])):
    c.request("POST", "/v1/chat/completions", body,
              {"content-type": "application/json", "authorization": "Bearer sk-client"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
start() { # start [COMMAND PREFIX...]: the gateway, waited for
  "$@" "$SWITCHYARD_BIN" --config "$TMP/switchyard.yaml" >"$TMP/gateway.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 240); do
    curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/health/live" && return
    sleep 0.25
  done
  echo "the gateway did not start" >&2; tail "$TMP/gateway.log" >&2; exit 1
}
stop() { kill -TERM "$GW_PID"; wait "$GW_PID" 2>/dev/null || true; GW_PID=; }

instructions() { # instructions BODY N: the program's instruction count after N requests
  start valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out"
  send "$1" "$2"
  stop
  grep -m1 "I   refs" "$TMP/gateway.log" | awk '{ gsub(",", "", $NF); print $NF }'
}

syscalls() { # syscalls BODY: system calls per request, by name, over 2000 requests
  start
  send "$1" 50
  strace -c -f -p "$GW_PID" -o "$TMP/strace.txt" 2>/dev/null &
  local tracer=$!
  sleep 0.5
  send "$1" 2000
  kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
  stop
  awk '$NF != "total" && $4 ~ /^[0-9]+$/ && $4 >= 200 { printf "%s %.2f, ", $NF, $4 / 2000 }' "$TMP/strace.txt"
}

echo "binary: $SWITCHYARD_BIN"
for kind in json stream; do
  body="$TMP/$kind.json"
  a=$(instructions "$body" 200)
  b=$(instructions "$body" $((200 + REQUESTS)))
  echo "$kind: $(((b - a) / REQUESTS)) instructions per request; system calls per request: $(syscalls "$body")"
done
