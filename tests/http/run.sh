#!/usr/bin/env bash
# tests/http/run.sh - HTTP tests against a live s3serve on loopback:
#   1. installs the pinned Python dependencies (tests/http/requirements.txt) into .venv-test
#   2. starts `s3serve serve` on 127.0.0.1 with a free port, the default model and an API key
#   3. pytest with the official openai client (tests/http/test_openai.py)
#   4. curl checks for every error case
#   5. a bounded load test (32 clients, /health + completions)
#   6. a second server with queue_max=1 and a short deadline: 429, 504, disconnect cancels
# Environment: S3SERVE (binary, default build/s3serve), S3_TEST_MODEL_PATH (default model).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BIN="${S3SERVE:-$ROOT/build/s3serve}"
MODEL_PATH="${S3_TEST_MODEL_PATH:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
VENV="$ROOT/.venv-test"
REQ="$ROOT/tests/http/requirements.txt"
WORK="$(mktemp -d)"
KEY="sk-s3serve-test-key-0001"
PIDS=()
FAILS=0

cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$BIN" ] || { echo "run.sh: $BIN not found (build first, or set S3SERVE)"; exit 2; }
[ -f "$MODEL_PATH" ] || { echo "run.sh: model $MODEL_PATH not found"; exit 2; }

# ---- 1. Python dependencies (pip from PyPI only, pinned) ------------------------------------
stamp="$VENV/.req-$(sha256sum "$REQ" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
    touch "$stamp"
fi
PY="$VENV/bin/python"

# ---- helpers ---------------------------------------------------------------------------------
# start_server NAME ARGS... : starts s3serve, sets BASE to its URL
start_server() {
    local name="$1"; shift
    "$BIN" serve --host 127.0.0.1 --port 0 --model "$MODEL_PATH" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        if grep -q '^listening ' "$WORK/$name.out" 2>/dev/null; then break; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "run.sh: server $name exited:"; cat "$WORK/$name.err"; exit 1
        fi
        sleep 0.1
    done
    BASE="$(sed -n 's/^listening \(http:[^ ]*\).*/\1/p' "$WORK/$name.out")"
    [ -n "$BASE" ] || { echo "run.sh: server $name did not start"; cat "$WORK/$name.err"; exit 1; }
    MODEL_ID="$(sed -n 's/^config model_id=//p' "$WORK/$name.out")"
    echo "== server $name at $BASE (model $MODEL_ID)"
}

stop_server() {
    kill -TERM "$SERVER_PID"
    local t0=$SECONDS
    wait "$SERVER_PID" || { echo "run.sh: FAIL server exit status $?"; FAILS=$((FAILS + 1)); }
    echo "== server stopped in $((SECONDS - t0)) s"
}

# check NAME STATUS PATTERN CURL-ARGS... : one curl call, expected status and body pattern
check() {
    local name="$1" want="$2" pattern="$3"; shift 3
    local out status
    out="$(curl -s -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' "$@" || true)"
    status="$out"
    if [ "$status" = "$want" ] && grep -qE -- "$pattern" "$WORK/body" "$WORK/headers"; then
        echo "ok   $name ($status)"
    else
        echo "FAIL $name: status $status (want $want), pattern '$pattern'"
        head -c 400 "$WORK/body"; echo
        FAILS=$((FAILS + 1))
    fi
}

# ---- 2..5: main server with an API key --------------------------------------------------------
start_server main --api-keys "$KEY" --max-body-bytes 1048576 --threads 1
AUTH=(-H "Authorization: Bearer $KEY")
JSON=(-H "Content-Type: application/json")

echo "== pytest (openai $("$PY" -c 'import openai; print(openai.__version__)'))"
S3_TEST_BASE_URL="$BASE" S3_TEST_API_KEY="$KEY" S3_TEST_MODEL="$MODEL_ID" \
    "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/http/test_openai.py" || FAILS=$((FAILS + 1))

echo "== curl checks"
C="$BASE/v1/chat/completions"
MSG='"messages":[{"role":"user","content":"hi"}]'
check "health open without key" 200 '"ready":true' "$BASE/health"
check "metrics" 200 's3_http_requests_total' "${AUTH[@]}" "$BASE/metrics"
check "missing key" 401 '"code":"invalid_api_key"' "$BASE/v1/models"
check "wrong key" 401 'WWW-Authenticate: Bearer' -H "Authorization: Bearer sk-wrong" "$BASE/v1/models"
check "malformed JSON" 400 '"code":"invalid_json"' "${AUTH[@]}" "${JSON[@]}" -d '{"messages":[' "$C"
check "body not an object" 400 '"type":"invalid_request_error"' "${AUTH[@]}" -d '[1]' "$C"
check "missing messages" 400 '"param":"messages"' "${AUTH[@]}" -d '{"model":"'"$MODEL_ID"'"}' "$C"
check "messages wrong type" 400 '"code":"invalid_type"' "${AUTH[@]}" -d '{"messages":"hi"}' "$C"
check "temperature wrong type" 400 '"param":"temperature"' "${AUTH[@]}" -d "{$MSG,\"temperature\":\"hot\"}" "$C"
check "stop wrong type" 400 '"param":"stop"' "${AUTH[@]}" -d "{$MSG,\"stop\":7}" "$C"
check "max_tokens 0" 400 '"code":"integer_below_min_value"' "${AUTH[@]}" -d "{$MSG,\"max_tokens\":0}" "$C"
check "max_tokens negative" 400 '"param":"max_tokens"' "${AUTH[@]}" -d "{$MSG,\"max_tokens\":-1}" "$C"
check "max_tokens too large" 400 '"code":"integer_above_max_value"' "${AUTH[@]}" -d "{$MSG,\"max_tokens\":100000}" "$C"
check "n=2 unsupported" 400 '"param":"n"' "${AUTH[@]}" -d "{$MSG,\"n\":2}" "$C"
check "unknown model" 404 '"code":"model_not_found"' "${AUTH[@]}" -d "{$MSG,\"model\":\"gpt-nope\"}" "$C"
check "unknown route" 404 '"message":"Invalid URL' "${AUTH[@]}" "$BASE/v1/nope"
check "wrong method" 405 'Allow: POST' "${AUTH[@]}" "$C"
check "wrong method on /health" 405 'Allow: GET, HEAD' -X DELETE "$BASE/health"
"$PY" -c 'import sys; sys.stdout.write("x" * 2000000)' >"$WORK/big.txt"
check "body over limit" 413 '"code":"request_too_large"' "${AUTH[@]}" --data-binary @"$WORK/big.txt" "$C"
"$PY" -c '
import json, sys
print(json.dumps({"messages": [{"role": "user", "content": "hello world " * 6000}], "max_tokens": 4}))' >"$WORK/long.json"
check "prompt longer than the context" 400 '"code":"context_length_exceeded"' "${AUTH[@]}" --data-binary @"$WORK/long.json" "$C"
check "unknown fields ignored" 200 '"finish_reason"' "${AUTH[@]}" -d "{$MSG,\"max_tokens\":2,\"x_future\":{\"a\":1}}" "$C"
check "stream ends with [DONE]" 200 'data: \[DONE\]' "${AUTH[@]}" -N -d "{$MSG,\"max_tokens\":2,\"stream\":true}" "$C"

echo "== load test"
"$PY" "$ROOT/tests/http/load.py" "$BASE" "$KEY" "$MODEL_ID" --clients 32 --gen-clients 4 \
    --seconds 6 || FAILS=$((FAILS + 1))
check "no 5xx after load" 200 's3_http_requests_total\{route="/health",status="200"\}' "${AUTH[@]}" "$BASE/metrics"
if grep -qE 'status="(5..|other)"' "$WORK/body"; then
    echo "FAIL server errors counted in /metrics"; grep -E 'status="(5..|other)"' "$WORK/body"
    FAILS=$((FAILS + 1))
fi
stop_server

# ---- 6: overload, deadline and disconnect on a server with one slot ------------------------
start_server small --queue-max 1 --request-timeout-ms 2500 --threads 1
C="$BASE/v1/completions"
LONG='{"prompt":"Once upon a time","max_tokens":500}'
curl -s -o "$WORK/slow.body" -w '%{http_code}' -d "$LONG" "$C" >"$WORK/slow.status" &
SLOW=$!
for _ in $(seq 1 100); do
    curl -s "$BASE/health" | grep -q '"running":1' && break
    sleep 0.05
done
check "queue full" 429 '"code":"queue_full"' -d '{"prompt":"x","max_tokens":1}' "$C"
wait "$SLOW" || true
if [ "$(cat "$WORK/slow.status")" = 504 ] && grep -q '"code":"timeout"' "$WORK/slow.body"; then
    echo "ok   deadline (504)"
else
    echo "FAIL deadline: status $(cat "$WORK/slow.status") $(head -c 300 "$WORK/slow.body")"
    FAILS=$((FAILS + 1))
fi
curl -s --max-time 1 -d "$LONG" "$C" >/dev/null || true   # the client gives up after 1 s
cancelled=no
for _ in $(seq 1 40); do
    if curl -s "$BASE/metrics" | grep -q '^s3_generations_canceled_total [1-9]' &&
        curl -s "$BASE/health" | grep -q '"running":0'; then cancelled=yes; break; fi
    sleep 0.05
done
if [ $cancelled = yes ]; then echo "ok   disconnect cancels the generation"; else
    echo "FAIL disconnect did not cancel"; FAILS=$((FAILS + 1)); fi
check "serves again after cancel" 200 '"text"' -d '{"prompt":"x","max_tokens":1}' "$C"
stop_server

if [ "$FAILS" -ne 0 ]; then
    echo "== HTTP tests: $FAILS failure(s)"
    exit 1
fi
echo "== HTTP tests: all passed"
