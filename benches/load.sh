#!/usr/bin/env bash
# Load benchmark: Switchyard against a plain nginx reverse proxy and against no proxy at all.
#
#   bash benches/load.sh
#
# A zero-delay mock upstream (nginx returning a fixed chat.completion body on one port and a
# fixed SSE stream on another) is hit by wrk three ways: directly, through nginx as a reverse
# proxy, through Switchyard's chat path, and through Switchyard's pass-through of another `/v1/`
# path (pingora's own proxy loop, the floor the chat path is held to). Each is run at
# concurrency 1, 32 and 64, non-streaming and streaming. The script prints a Markdown table with
# req/s, p50/p99 latency, proxy CPU time per request and Switchyard's memory use, the medians of
# RUNS rounds. Everything listens on 127.0.0.1.
#
# Environment:
#   DURATION         length of each measured run, as wrk takes it (default 10s)
#   WARMUP           length of the warm-up run before each measured run (default 2s)
#   SWITCHYARD_BIN   gateway binary (default: target/dist/switchyard, else target/release/switchyard)
#   SKIP_SWITCHYARD  set to 1 to benchmark only the mock and the nginx proxy
#   START_TIMEOUT    seconds to wait for each server to accept connections (default 30)
#   CONCURRENCIES    the connection counts to run (default "1 32 64")
#   RUNS             rounds of every run; the tables show each figure's median (default 1)
#
# wrk, the mock, and the proxy under test all share this machine's cores, so the absolute
# numbers are lower than on separate hosts; compare rows with each other, not with other hosts.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/benches/load"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
if [[ -z ${SWITCHYARD_BIN:-} ]]; then
  SWITCHYARD_BIN=$ROOT/target/dist/switchyard
  [[ -x $SWITCHYARD_BIN ]] || SWITCHYARD_BIN=$ROOT/target/release/switchyard
fi
SKIP_SWITCHYARD=${SKIP_SWITCHYARD:-0}
START_TIMEOUT=${START_TIMEOUT:-30}
read -r -a CONCURRENCIES <<<"${CONCURRENCIES:-1 32 64}"
RUNS=${RUNS:-1}

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools

find_nginx() {
  # Debian installs nginx in /usr/sbin, which is not on a normal user's PATH.
  command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

missing=()
[[ -n $(find_nginx) ]] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    die "missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}"
  fi
fi
NGINX=$(find_nginx)

if [[ $SKIP_SWITCHYARD != 1 && ! -x $SWITCHYARD_BIN ]]; then
  log "error: $SWITCHYARD_BIN not found; run \`cargo build --profile dist\` first"
  log "       (or SKIP_SWITCHYARD=1 to benchmark only the mock and the nginx proxy)"
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# Process bookkeeping and clean-up

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-load.XXXXXX")
# When run as root, nginx workers drop to an unprivileged user; they must be able to reach the
# temp paths nginx creates (and chowns) under this directory.
chmod 755 "$TMP"

PIDS=()
cleanup() {
  local pid deadline
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Switchyard drains for up to drain_timeout (1s here); give everything a few seconds.
  deadline=$((SECONDS + 5))
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# pick_port VAR: store in VAR a loopback port nobody is listening on (and not handed out yet).
USED_PORTS=" "
pick_port() {
  local p _
  for _ in $(seq 500); do
    p=$((20000 + RANDOM % 40000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      printf -v "$1" '%s' "$p"
      return
    fi
  done
  die "no free port found on 127.0.0.1"
}

# wait_port NAME PORT PID LOGFILE: wait until PORT answers HTTP, or fail if PID exits first.
wait_port() {
  local name=$1 port=$2 pid=$3 logfile=$4 deadline=$((SECONDS + START_TIMEOUT))
  # Any HTTP response (even a 404) makes curl exit 0.
  until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "error: $name exited during start-up; last lines of $logfile:"
      tail -n 20 "$logfile" >&2 || true
      exit 1
    fi
    ((SECONDS < deadline)) || die "$name did not accept connections on port $port within ${START_TIMEOUT}s"
    sleep 0.1
  done
}

# Direct children of a process (nginx workers of a master), found through /proc so that
# neither pgrep nor CONFIG_PROC_CHILDREN is needed.
child_pids() {
  local s stat rest ppid _
  for s in /proc/[0-9]*/stat; do
    stat=$(<"$s") 2>/dev/null || continue
    rest=${stat##*) } # the command name may contain spaces and parentheses
    read -r _ ppid _ <<<"$rest"
    if [[ $ppid == "$1" ]]; then
      s=${s#/proc/}
      echo "${s%/stat}"
    fi
  done
}

# cpu_ticks PID...: utime + stime of the processes, in clock ticks. /proc/PID/stat already
# covers every thread of a process.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {
  local total=0 pid stat f
  for pid in "$@"; do
    stat=$(<"/proc/$pid/stat") || die "process $pid is gone"
    read -r -a f <<<"${stat##*) }"
    # f[0] is field 3 (state), so utime (field 14) is f[11] and stime (field 15) is f[12].
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

rss_kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------------
# Request and response bodies
#
# The response bodies are embedded in nginx config strings, so they must not contain ' or $
# (end of string, variable) nor any backslash but the \n escapes, which nginx turns into newlines.

SYSTEM_PROMPT="You are a support assistant for a regional logistics company. Answer questions about \
shipments, invoices and delivery schedules clearly and politely. If the customer asks about \
something outside of logistics, say that you can only help with shipping questions. Keep answers \
short, use plain language, and never invent tracking numbers, prices or dates that are not in the \
conversation."

USER_PROMPT="Hello, I placed an order for twelve boxes of printer paper and two office chairs about \
a week ago, and the confirmation email said the delivery would arrive between Monday and Wednesday \
of this week. It is now Thursday afternoon and nothing has arrived yet. The tracking page only says \
that the shipment left the warehouse on Tuesday morning, and it has not been updated since then. \
Our office is closed on Friday for a public holiday, so if the delivery comes tomorrow there will \
be nobody here to sign for it. Could you tell me where the shipment is right now, whether it will \
still arrive today, and what happens if the driver cannot deliver it on Friday? If it has to be \
redelivered next week, I would prefer Monday morning before eleven, because we have a team meeting \
in the afternoon. The order number is on the invoice that you sent me by email on Monday. \
Thank you very much for your help."

request_body() { # MODEL_AND_FLAGS
  printf '{%s,"messages":[{"role":"system","content":"%s"},{"role":"user","content":"%s"}],"temperature":0.2,"max_tokens":256}' \
    "$1" "$SYSTEM_PROMPT" "$USER_PROMPT"
}
request_body '"model":"gpt-4o"' >"$TMP/request.json"
request_body '"model":"gpt-4o-stream","stream":true' >"$TMP/request-stream.json"
# The same request with temperature 0: cacheable, so Switchyard answers it from its cache.
sed 's/"temperature":0.2/"temperature":0/' "$TMP/request.json" >"$TMP/request-cached.json"

ANSWER="Your shipment left our warehouse on Tuesday and is at the regional depot. It is scheduled for delivery today before six; if nobody can sign on Friday, it will be redelivered on Monday morning."

JSON_RESPONSE=$(printf '{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant","content":"%s","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":318,"completion_tokens":44,"total_tokens":362}}' "$ANSWER")

sse_chunk() { # DELTA FINISH_REASON
  printf 'data: {"id":"chatcmpl-bench0001","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}\\n\\n' "$1" "$2"
}
SSE_RESPONSE="$(sse_chunk '{"role":"assistant","content":""}' null)"
SSE_RESPONSE+="$(sse_chunk '{"content":"Your shipment left our warehouse on Tuesday"}' null)"
SSE_RESPONSE+="$(sse_chunk '{"content":" and is at the regional depot."}' null)"
SSE_RESPONSE+="$(sse_chunk '{"content":" It is scheduled for delivery today before six."}' null)"
SSE_RESPONSE+="$(sse_chunk '{}' '"stop"')"
SSE_RESPONSE+='data: [DONE]\n\n'

# What the gateway's health checks ask for: the models the mock serves.
MODELS_RESPONSE='{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1700000000,"owned_by":"bench"}]}'

for body in "$JSON_RESPONSE" "$SSE_RESPONSE" "$MODELS_RESPONSE"; do
  [[ $body != *[\'\$]* ]] || die "a bench body contains ' or \$"
done

# ---------------------------------------------------------------------------------------------
# Servers

# nginx_common DIR: the part of an nginx config that keeps all its files inside DIR.
nginx_common() {
  cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() {
  cat <<EOF
    access_log off;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    # The default (1000) would make wrk reconnect every 1000 requests on each connection.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
EOF
}

# start_nginx NAME DIR: run nginx on DIR/nginx.conf in the foreground (daemon off) as our child.
start_nginx() {
  local name=$1 dir=$2
  # -e: nginx opens its compiled-in error log before reading the config; keep even that in DIR.
  "$NGINX" -e "$dir/error.log" -p "$dir/" -c "$dir/nginx.conf" -g 'daemon off;' \
    >"$dir/stdout.log" 2>&1 &
  PIDS+=($!)
  printf -v "$name" '%s' "$!"
}

pick_port MOCK_JSON_PORT
pick_port MOCK_SSE_PORT
pick_port PROXY_JSON_PORT
pick_port PROXY_SSE_PORT
pick_port SWITCHYARD_PORT

# The mock's answers, one nginx location each: the JSON completion, the SSE stream, and the
# model list the gateway's health checks ask for.
json_location() {
  printf '        location = %s {\n            default_type application/json;\n            return 200 '"'"'%s'"'"';\n        }\n' "$1" "$JSON_RESPONSE"
}
sse_location() {
  printf '        location = %s {\n            default_type text/event-stream;\n            add_header Cache-Control no-cache;\n            return 200 '"'"'%s'"'"';\n        }\n' "$1" "$SSE_RESPONSE"
}
models_location() {
  printf '        location = /v1/models {\n            default_type application/json;\n            return 200 '"'"'%s'"'"';\n        }\n' "$MODELS_RESPONSE"
}

# 1. Mock upstream: one port answers with the JSON completion, the other with the SSE stream
#    (the gateway always posts to /v1/chat/completions on an upstream's url).
MOCK_DIR="$TMP/mock"
mkdir -p "$MOCK_DIR"
{
  nginx_common "$MOCK_DIR"
  cat <<EOF
http {
$(nginx_http_common "$MOCK_DIR")
    server {
        listen 127.0.0.1:$MOCK_JSON_PORT;
$(json_location /v1/chat/completions)
        # The same answers on other paths, which Switchyard passes through.
$(json_location /v1/bench/completions)
$(sse_location /v1/bench/stream)
$(models_location)
        location / { return 404; }
    }
    server {
        listen 127.0.0.1:$MOCK_SSE_PORT;
$(sse_location /v1/chat/completions)
$(models_location)
        location / { return 404; }
    }
}
EOF
} >"$MOCK_DIR/nginx.conf"

# 2. nginx as a plain reverse proxy in front of the mock, one port per mock port.
PROXY_DIR="$TMP/proxy"
mkdir -p "$PROXY_DIR"
{
  nginx_common "$PROXY_DIR"
  cat <<EOF
http {
$(nginx_http_common "$PROXY_DIR")
    upstream mock_json {
        server 127.0.0.1:$MOCK_JSON_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream mock_sse {
        server 127.0.0.1:$MOCK_SSE_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$PROXY_JSON_PORT;
        location / {
            proxy_pass http://mock_json;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$PROXY_SSE_PORT;
        location / {
            proxy_pass http://mock_sse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What an SSE proxy is configured with: pass events on as they arrive.
            proxy_buffering off;
        }
    }
}
EOF
} >"$PROXY_DIR/nginx.conf"

"$NGINX" -q -t -e "$MOCK_DIR/error.log" -p "$MOCK_DIR/" -c "$MOCK_DIR/nginx.conf" ||
  die "mock nginx config is invalid"
"$NGINX" -q -t -e "$PROXY_DIR/error.log" -p "$PROXY_DIR/" -c "$PROXY_DIR/nginx.conf" ||
  die "proxy nginx config is invalid"

log "starting mock upstream on :$MOCK_JSON_PORT (JSON) and :$MOCK_SSE_PORT (SSE)"
start_nginx MOCK_PID "$MOCK_DIR"
wait_port "mock nginx" "$MOCK_JSON_PORT" "$MOCK_PID" "$MOCK_DIR/error.log"
wait_port "mock nginx" "$MOCK_SSE_PORT" "$MOCK_PID" "$MOCK_DIR/error.log"

log "starting nginx proxy on :$PROXY_JSON_PORT and :$PROXY_SSE_PORT"
start_nginx PROXY_PID "$PROXY_DIR"
wait_port "nginx proxy" "$PROXY_JSON_PORT" "$PROXY_PID" "$PROXY_DIR/error.log"
wait_port "nginx proxy" "$PROXY_SSE_PORT" "$PROXY_PID" "$PROXY_DIR/error.log"
# The workers were forked before the port opened; they stay the same for the whole run.
mapfile -t PROXY_WORKERS < <(child_pids "$PROXY_PID")
((${#PROXY_WORKERS[@]})) || die "nginx proxy has no worker processes"

# 3. Switchyard.
TARGETS=(direct nginx)
if [[ $SKIP_SWITCHYARD != 1 ]]; then
  TARGETS+=(switchyard passthrough)
  cat >"$TMP/switchyard.yaml" <<EOF
server:
  listen: "127.0.0.1:$SWITCHYARD_PORT"
  drain_timeout: 1s
limits:
  max_body_bytes: 8MiB
upstreams:
  mock:
    kind: openai
    route: cloud
    url: "http://127.0.0.1:$MOCK_JSON_PORT"
    model: "gpt-4o"
    api_key: "sk-bench"
  mocksse:
    kind: openai
    route: cloud
    url: "http://127.0.0.1:$MOCK_SSE_PORT"
    model: "gpt-4o"
    api_key: "sk-bench"
models:
  - name: gpt-4o
    upstream: mock
  - name: gpt-4o-stream
    upstream: mocksse
default_route:
  upstream: mock
passthrough:
  upstream: mock
cache:
  enabled: true
EOF
  log "starting switchyard on :$SWITCHYARD_PORT"
  "$SWITCHYARD_BIN" --config "$TMP/switchyard.yaml" >"$TMP/switchyard.log" 2>&1 &
  SWITCHYARD_PID=$!
  PIDS+=("$SWITCHYARD_PID")
  wait_port switchyard "$SWITCHYARD_PORT" "$SWITCHYARD_PID" "$TMP/switchyard.log"
fi

# target_url TARGET SCENARIO
target_url() {
  local port
  case $1/$2 in
    direct/non-stream) port=$MOCK_JSON_PORT ;;
    direct/stream) port=$MOCK_SSE_PORT ;;
    nginx/non-stream) port=$PROXY_JSON_PORT ;;
    nginx/stream) port=$PROXY_SSE_PORT ;;
    switchyard/*) port=$SWITCHYARD_PORT ;;
    passthrough/non-stream) echo "http://127.0.0.1:$SWITCHYARD_PORT/v1/bench/completions"; return ;;
    passthrough/stream) echo "http://127.0.0.1:$SWITCHYARD_PORT/v1/bench/stream"; return ;;
  esac
  echo "http://127.0.0.1:$port/v1/chat/completions"
}
body_file() {
  case $1 in
    stream) echo "$TMP/request-stream.json" ;;
    cache-hit) echo "$TMP/request-cached.json" ;;
    *) echo "$TMP/request.json" ;;
  esac
}

# Smoke test: every target must answer the exact request wrk will send with a 200 and the
# expected body, or the numbers below would be measuring error paths.
SCENARIOS=(non-stream stream)
for scenario in "${SCENARIOS[@]}"; do
  for target in "${TARGETS[@]}"; do
    url=$(target_url "$target" "$scenario")
    code=$(curl -s -o "$TMP/smoke.out" -w '%{http_code}' --max-time 10 \
      -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-client' \
      --data-binary "@$(body_file "$scenario")" "$url") || code="curl exit $?"
    if [[ $scenario == stream ]]; then expect='data: [DONE]'; else expect='"chat.completion"'; fi
    if [[ $code != 200 ]] || ! grep -qF "$expect" "$TMP/smoke.out"; then
      log "error: smoke test failed for $target ($scenario): HTTP $code from $url"
      head -c 2000 "$TMP/smoke.out" >&2 || true
      log ""
      [[ $target != switchyard && $target != passthrough ]] || tail -n 20 "$TMP/switchyard.log" >&2 || true
      exit 1
    fi
  done
done

if [[ $SKIP_SWITCHYARD != 1 ]]; then
  RSS_IDLE=$(rss_kib "$SWITCHYARD_PID" VmRSS)
fi

# ---------------------------------------------------------------------------------------------
# Runs

# to_us VALUE: a wrk latency ("812.00us", "1.25ms", "2.00s", "1.00m") in whole microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    m = (u == "us") ? 1 : (u == "ms") ? 1e3 : (u == "s") ? 1e6 : (u == "m") ? 6e7 : (u == "h") ? 3.6e9 : -1
    if (m < 0) { print "?"; exit }
    printf "%.0f", n * m
  }'
}

declare -A RPS P50 P99 CPU ERRS

# median VALUES...: the median of numbers (the lower middle one of an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# run SCENARIO CONCURRENCY TARGET
run() {
  local scenario=$1 conc=$2 target=$3 key="$1|$2|$3" url threads out pids=() before=0 after=0
  url=$(target_url "$target" "$scenario")
  threads=$((conc == 1 ? 1 : 2))
  out="$TMP/wrk-$scenario-$conc-$target.txt"
  local wrk_cmd=(wrk "-t$threads" "-c$conc" --latency -s "$BENCH_DIR/chat.lua")

  case $target in
    nginx) pids=("$PROXY_PID" "${PROXY_WORKERS[@]}") ;;
    switchyard | passthrough) pids=("$SWITCHYARD_PID") ;;
  esac

  log "  $scenario c=$conc $target: warm-up $WARMUP, run $DURATION"
  "${wrk_cmd[@]}" -d "$WARMUP" "$url" -- "$(body_file "$scenario")" >"$out" ||
    { cat "$out" >&2; die "wrk failed against $url"; }

  # CPU time is counted in clock ticks (usually 10 ms); over a whole run that is precise enough.
  if ((${#pids[@]})); then before=$(cpu_ticks "${pids[@]}"); fi
  "${wrk_cmd[@]}" -d "$DURATION" "$url" -- "$(body_file "$scenario")" >"$out" ||
    { cat "$out" >&2; die "wrk failed against $url"; }
  if ((${#pids[@]})); then after=$(cpu_ticks "${pids[@]}"); fi

  local requests non2xx connect rd wr timeout
  read -r requests non2xx connect rd wr timeout < <(
    awk '$1 == "LOADBENCH" { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
           print v["requests"], v["non2xx"], v["connect"], v["read"], v["write"], v["timeout"] }' "$out")
  [[ -n ${requests:-} ]] || { cat "$out" >&2; die "could not parse wrk output"; }

  RPS[$key]+="$(awk '$1 == "Requests/sec:" { print $2 }' "$out") "
  P50[$key]+="$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")") "
  P99[$key]+="$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")") "

  if ((${#pids[@]} == 0)); then
    CPU[$key]="–"
  elif ((requests > 0)); then
    CPU[$key]+="$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
      'BEGIN { printf "%.1f", t * 1e6 / hz / n }') "
  else
    CPU[$key]="n/a"
  fi

  local e=()
  ((non2xx)) && e+=("$non2xx non-2xx")
  ((connect)) && e+=("$connect connect")
  ((rd)) && e+=("$rd read")
  ((wr)) && e+=("$wr write")
  ((timeout)) && e+=("$timeout timeout")
  if ((${#e[@]})); then
    ERRS[$key]=$(printf '%s, ' "${e[@]}")
    ERRS[$key]="**${ERRS[$key]%, }**" # bold, so a run with errors stands out
    log "    errors: ${ERRS[$key]}"
  elif [[ -z ${ERRS[$key]:-} ]]; then
    ERRS[$key]=0
  fi
}

# After the rounds: each figure becomes the median of its rounds.
take_medians() {
  local key
  for key in "${!RPS[@]}"; do
    # shellcheck disable=SC2086 # the lists are space-separated numbers
    RPS[$key]=$(median ${RPS[$key]})
    # shellcheck disable=SC2086
    P50[$key]=$(median ${P50[$key]})
    # shellcheck disable=SC2086
    P99[$key]=$(median ${P99[$key]})
    if [[ ${CPU[$key]} != "–" && ${CPU[$key]} != "n/a" ]]; then
      # shellcheck disable=SC2086
      CPU[$key]=$(median ${CPU[$key]})
    fi
  done
}

log "running: $RUNS round(s) of ${#SCENARIOS[@]} scenarios x ${#CONCURRENCIES[@]} concurrencies x ${#TARGETS[@]} targets"
for round in $(seq "$RUNS"); do
  log "round $round of $RUNS"
  for scenario in "${SCENARIOS[@]}"; do
    for conc in "${CONCURRENCIES[@]}"; do
      for target in "${TARGETS[@]}"; do
        run "$scenario" "$conc" "$target"
      done
    done
  done
done

# Cache hits: Switchyard alone answers (the first request stores the answer).
if [[ $SKIP_SWITCHYARD != 1 ]]; then
  for _ in 1 2; do
    hit=$(curl -s -D - -o /dev/null --max-time 10 -H 'Content-Type: application/json' \
      -H 'Authorization: Bearer sk-client' --data-binary "@$TMP/request-cached.json" \
      "$(target_url switchyard cache-hit)" | awk -F': ' 'tolower($1) == "x-switchyard-cache" { print $2 }' | tr -d '\r')
  done
  [[ $hit == hit ]] || die "cache smoke test: the second request was a cache '$hit', not a hit"
  for _ in $(seq "$RUNS"); do
    for conc in "${CONCURRENCIES[@]}"; do
      run cache-hit "$conc" switchyard
    done
  done
fi
take_medians

if [[ $SKIP_SWITCHYARD != 1 ]]; then
  RSS_AFTER=$(rss_kib "$SWITCHYARD_PID" VmRSS)
  RSS_PEAK=$(rss_kib "$SWITCHYARD_PID" VmHWM)
fi

# ---------------------------------------------------------------------------------------------
# Report

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
echo
echo "Machine: nproc=$(nproc), kernel=$(uname -sr)${cpu_model:+, cpu=$cpu_model}"
echo "Tools: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }'); DURATION=$DURATION per run after a $WARMUP warm-up; medians of $RUNS round(s)"
echo "Request body: $(wc -c <"$TMP/request.json") bytes (non-stream), $(wc -c <"$TMP/request-stream.json") bytes (stream)"
echo
echo "| scenario | conc | target | req/s | p50 µs | p99 µs | CPU µs/req | errors |"
echo "|---|---:|---|---:|---:|---:|---:|---|"
for scenario in "${SCENARIOS[@]}"; do
  for conc in "${CONCURRENCIES[@]}"; do
    for target in "${TARGETS[@]}"; do
      k="$scenario|$conc|$target"
      printf '| %s | %s | %s | %.0f | %s | %s | %s | %s |\n' "$scenario" "$conc" "$target" \
        "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${CPU[$k]}" "${ERRS[$k]}"
    done
  done
done

if [[ $SKIP_SWITCHYARD != 1 ]]; then
  for conc in "${CONCURRENCIES[@]}"; do
    k="cache-hit|$conc|switchyard"
    printf '| %s | %s | %s | %.0f | %s | %s | %s | %s |\n' cache-hit "$conc" switchyard \
      "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${CPU[$k]}" "${ERRS[$k]}"
  done
fi

# ratio A B: A ÷ B with two decimals; diff A B: A − B.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+d", a - b }'; }

echo
echo "CPU µs/req is the proxy's own user+system time (nginx: master + worker; switchyard: all threads)."
echo "Added latency is the target's p50/p99 minus the direct p50/p99 at concurrency 1."
echo
if [[ $SKIP_SWITCHYARD != 1 ]]; then
  echo "| scenario | conc | switchyard ÷ nginx req/s | pass-through ÷ nginx req/s | switchyard ÷ nginx CPU/req | pass-through ÷ nginx CPU/req |"
  echo "|---|---:|---:|---:|---:|---:|"
  for scenario in "${SCENARIOS[@]}"; do
    for conc in "${CONCURRENCIES[@]}"; do
      n="$scenario|$conc|nginx" s="$scenario|$conc|switchyard" p="$scenario|$conc|passthrough"
      printf '| %s | %s | %s | %s | %s | %s |\n' "$scenario" "$conc" \
        "$(ratio "${RPS[$s]}" "${RPS[$n]}")" "$(ratio "${RPS[$p]}" "${RPS[$n]}")" \
        "$(ratio "${CPU[$s]}" "${CPU[$n]}")" "$(ratio "${CPU[$p]}" "${CPU[$n]}")"
    done
  done
  echo
  echo "| scenario | nginx added p50 / p99 µs, c=1 | switchyard added p50 / p99 µs, c=1 | pass-through added p50 / p99 µs, c=1 |"
  echo "|---|---:|---:|---:|"
else
  echo "| scenario | nginx added p50 / p99 µs, c=1 |"
  echo "|---|---:|"
fi
added() { # TARGET SCENARIO
  local d="$2|1|direct" t="$2|1|$1"
  echo "$(diff_us "${P50[$t]}" "${P50[$d]}") / $(diff_us "${P99[$t]}" "${P99[$d]}")"
}
if [[ " ${CONCURRENCIES[*]} " == *" 1 "* ]]; then
  for scenario in "${SCENARIOS[@]}"; do
    if [[ $SKIP_SWITCHYARD != 1 ]]; then
      printf '| %s | %s | %s | %s |\n' "$scenario" "$(added nginx "$scenario")" \
        "$(added switchyard "$scenario")" "$(added passthrough "$scenario")"
    else
      printf '| %s | %s |\n' "$scenario" "$(added nginx "$scenario")"
    fi
  done
fi

if [[ $SKIP_SWITCHYARD != 1 ]]; then
  echo
  echo "Switchyard RSS: idle ${RSS_IDLE} KiB, after the runs ${RSS_AFTER} KiB (peak ${RSS_PEAK} KiB)"
fi
