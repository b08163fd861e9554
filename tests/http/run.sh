#!/usr/bin/env bash
# tests/http/run.sh - HTTP tests against a live s3serve on loopback:
#   1. installs the pinned Python dependencies (tests/http/requirements.txt) into .venv-test
#   2. starts `s3serve serve` on 127.0.0.1 with a free port, the default model and an API key
#   3. pytest with the official openai client (tests/http/test_openai.py)
#   4. curl checks for every error case
#   5. documents: upload, progress, retrieval, chat with documents, tenants, cancel, delete,
#      and every error case, with curl
#   6. a bounded load test (32 clients, /health + completions)
#   7. a second server with queue_max=1 and a short deadline: 429, 504, disconnect cancels
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
KEY2="sk-s3serve-test-key-0002"
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
# a 2048-token window keeps the over-long prompt test (4x the window) modest on a small CPU
start_server main --api-keys "$KEY,$KEY2" --max-body-bytes 1048576 --threads 1 --n-ctx 2048 \
    --db "$WORK/main.db" --max-document-bytes 262144 --tmp-dir "$WORK"
AUTH=(-H "Authorization: Bearer $KEY")
JSON=(-H "Content-Type: application/json")

echo "== pytest (openai $("$PY" -c 'import openai; print(openai.__version__)'))"
S3_TEST_BASE_URL="$BASE" S3_TEST_API_KEY="$KEY" S3_TEST_MODEL="$MODEL_ID" PYTHONPATH="$ROOT/tests/http" \
    "$PY" -m pytest -q -s -p no:cacheprovider "$ROOT/tests/http/test_openai.py" || FAILS=$((FAILS + 1))

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
"$PY" -c '
import json, sys
print(json.dumps({"messages": [{"role": "user", "content": "hello world " * 6000}], "max_tokens": 4,
                  "retrieval": {"mode": "full"}}))' >"$WORK/long-full.json"
check "over-long prompt with mode full" 400 '"code":"context_length_exceeded"' "${AUTH[@]}" --data-binary @"$WORK/long-full.json" "$C"
"$PY" -c '
import json, sys
print(json.dumps({"messages": [{"role": "user", "content": "hello world " * 6000}], "max_tokens": 4,
                  "retrieval": {"mode": "hybrid", "budget": 2000}}))' >"$WORK/long-budget.json"
check "over-long prompt, budget beside head and tail" 400 '"param":"retrieval.budget".*kept head and tail|kept head and tail.*"param":"retrieval.budget"' "${AUTH[@]}" --data-binary @"$WORK/long-budget.json" "$C"
check "unknown fields ignored" 200 '"finish_reason"' "${AUTH[@]}" -d "{$MSG,\"max_tokens\":2,\"x_future\":{\"a\":1}}" "$C"
check "stream ends with [DONE]" 200 'data: \[DONE\]' "${AUTH[@]}" -N -d "{$MSG,\"max_tokens\":2,\"stream\":true}" "$C"

echo "== documents (curl)"
D="$BASE/v1/documents"
R="$BASE/v1/retrieve"
AUTH2=(-H "Authorization: Bearer $KEY2")
doc_id() { grep -o '"id":"doc_[0-9]*"' "$WORK/body" | head -1 | cut -d'"' -f4; }
wait_ready() { # wait_ready ID: poll GET /v1/documents/ID until ready (120 s at most)
    for _ in $(seq 1 600); do
        curl -s "${AUTH[@]}" "$D/$1" | grep -q '"status":"ready"' && return 0
        sleep 0.2
    done
    echo "FAIL $1 not ready in time"; curl -s "${AUTH[@]}" "$D/$1"; echo; FAILS=$((FAILS + 1))
}
"$PY" "$ROOT/tests/http/gen_text.py" 1200 --seed 1 >"$WORK/doc1.txt"
"$PY" "$ROOT/tests/http/gen_text.py" 6000 --seed 2 >"$WORK/doc2.txt"
check "upload raw text" 202 '"status":"(queued|scanning)"' "${AUTH[@]}" --data-binary @"$WORK/doc1.txt" "$D?name=one.txt"
DOC1="$(doc_id)"
check "upload shows the job" 202 '"job":\{"id":"ingest_' "${AUTH[@]}" --data-binary @"$WORK/doc1.txt" "$D?name=one.txt"
[ "$(doc_id)" = "$DOC1" ] && echo "ok   same text while queued: same document" ||
    { echo "FAIL re-upload gave $(doc_id), want $DOC1"; FAILS=$((FAILS + 1)); }
"$PY" -c 'import json,sys; print(json.dumps({"text": open(sys.argv[1]).read(), "name": "two.txt"}))' \
    "$WORK/doc2.txt" >"$WORK/doc2.json"
check "upload JSON {text, name}" 202 '"name":"two.txt"' "${AUTH[@]}" "${JSON[@]}" --data-binary @"$WORK/doc2.json" "$D"
DOC2="$(doc_id)"
check "status while queued or scanning" 200 '"progress":' "${AUTH[@]}" "$D/$DOC2"
check "retrieve before ready" 409 '"code":"document_not_ready"' "${AUTH[@]}" -d "{\"documents\":[\"$DOC2\"],\"query\":\"q\"}" "$R"
check "list" 200 "\"id\":\"$DOC2\"" "${AUTH[@]}" "$D"
check "list of another key is empty" 200 '"data":\[\]' "${AUTH2[@]}" "$D"
check "another key's document" 404 '"code":"document_not_found"' "${AUTH2[@]}" "$D/$DOC1"
wait_ready "$DOC1"
wait_ready "$DOC2"
check "status ready" 200 '"status":"ready"' "${AUTH[@]}" "$D/$DOC1"
check "n_tokens counted" 200 '"n_tokens":[1-9]' "${AUTH[@]}" "$D/$DOC1"
Q='"query":"What is the secret launch code of the Aurora project?"'
check "retrieve evidence" 200 'PELICAN-4471' "${AUTH[@]}" -d "{\"documents\":[\"$DOC1\",\"$DOC2\"],$Q,\"retrieval\":{\"mode\":\"bm25\",\"budget\":256}}" "$R"
check "retrieve default mode" 200 '"spans":\[\{"doc":"doc_' "${AUTH[@]}" -d "{\"documents\":[\"$DOC1\"],$Q}" "$R"
check "retrieve mode full over budget" 400 '"code":"context_length_exceeded"' "${AUTH[@]}" -d "{\"documents\":[\"$DOC2\"],$Q,\"retrieval\":{\"mode\":\"full\",\"budget\":64}}" "$R"
QM='"messages":[{"role":"user","content":"What is the secret launch code of the Aurora project?"}]'
check "chat with documents" 200 '"path":"retrieval".*PELICAN-4471' "${AUTH[@]}" -d "{$QM,\"documents\":[\"$DOC1\"],\"max_tokens\":16,\"temperature\":0,\"retrieval\":{\"budget\":256}}" "$C"
check "completion with documents" 200 '"evidence":\[' "${AUTH[@]}" -d "{\"prompt\":\"What is the secret launch code of the Aurora project?\",\"documents\":[\"$DOC1\"],\"max_tokens\":4}" "$BASE/v1/completions"
check "chat without documents says full" 200 '"s3":\{"path":"full"' "${AUTH[@]}" -d "{$MSG,\"max_tokens\":1}" "$C"
# every error case of the document API
check "empty document" 400 '"param":"text"' "${AUTH[@]}" --data-binary '' "$D"
printf 'abc\0def' >"$WORK/bin.txt"
check "binary document (offset)" 400 'offset 3' "${AUTH[@]}" --data-binary @"$WORK/bin.txt" "$D"
printf 'hello \xff world' >"$WORK/bad.txt"
check "invalid UTF-8 (offset)" 400 'invalid UTF-8 at byte offset 6' "${AUTH[@]}" --data-binary @"$WORK/bad.txt" "$D"
check "JSON document without text" 400 '"param":"text"' "${AUTH[@]}" "${JSON[@]}" -d '{"name":"x"}' "$D"
check "malformed JSON document" 400 '"code":"invalid_json"' "${AUTH[@]}" "${JSON[@]}" -d '{"text":' "$D"
"$PY" -c 'import sys; sys.stdout.write("word " * 60000)' >"$WORK/huge.txt"
check "document over the limit (declared)" 413 '"code":"request_too_large"' "${AUTH[@]}" --data-binary @"$WORK/huge.txt" "$D"
check "document over the limit (chunked)" 413 '"code":"request_too_large"' "${AUTH[@]}" -H "Transfer-Encoding: chunked" --data-binary @"$WORK/huge.txt" "$D"
check "unknown document" 404 '"code":"document_not_found"' "${AUTH[@]}" "$D/doc_999999"
check "malformed document id" 404 '"code":"document_not_found"' "${AUTH[@]}" "$D/abc"
check "retrieve unknown document" 404 '"code":"document_not_found"' "${AUTH[@]}" -d "{\"documents\":[\"doc_999999\"],$Q}" "$R"
check "retrieve another key's document" 404 '"code":"document_not_found"' "${AUTH2[@]}" -d "{\"documents\":[\"$DOC1\"],$Q}" "$R"
check "chat with an unknown document" 404 '"code":"document_not_found"' "${AUTH[@]}" -d "{$QM,\"documents\":[\"doc_999999\"]}" "$C"
check "retrieve without query" 400 '"param":"query"' "${AUTH[@]}" -d "{\"documents\":[\"$DOC1\"]}" "$R"
check "bad retrieval mode" 400 '"param":"retrieval.mode"' "${AUTH[@]}" -d "{$QM,\"documents\":[\"$DOC1\"],\"retrieval\":{\"mode\":\"dense\"}}" "$C"
check "bad retrieval budget" 400 '"param":"retrieval.budget"' "${AUTH[@]}" -d "{\"documents\":[\"$DOC1\"],$Q,\"retrieval\":{\"budget\":-5}}" "$R"
check "budget over the window" 400 '"code":"integer_above_max_value"' "${AUTH[@]}" -d "{$QM,\"documents\":[\"$DOC1\"],\"retrieval\":{\"budget\":100000}}" "$C"
check "budget that does not fit next to the prompt" 400 '"code":"context_length_exceeded"' "${AUTH[@]}" -d "{$QM,\"documents\":[\"$DOC1\"],\"max_tokens\":1000,\"retrieval\":{\"budget\":1500}}" "$C"
if grep -q '"index":"bm25"' <(curl -s "${AUTH[@]}" "$D/$DOC1"); then
    check "mode s3 without an SAE" 400 '"param":"retrieval.mode"' "${AUTH[@]}" -d "{\"documents\":[\"$DOC1\"],$Q,\"retrieval\":{\"mode\":\"s3\"}}" "$R"
    check "hybrid without an SAE runs as bm25" 200 '"mode":"bm25".*"note"' "${AUTH[@]}" -d "{\"documents\":[\"$DOC1\"],$Q}" "$R"
else
    check "mode s3" 200 '"mode":"s3"' "${AUTH[@]}" -d "{\"documents\":[\"$DOC1\"],$Q,\"retrieval\":{\"mode\":\"s3\"}}" "$R"
fi
check "wrong method on a document" 405 'Allow: GET, HEAD, DELETE' "${AUTH[@]}" -X POST -d x "$D/$DOC1"
check "documents need a key" 401 '"code":"invalid_api_key"' "$D"
# delete: another key cannot, the owner can, then it is gone
check "delete another key's document" 404 '"code":"document_not_found"' "${AUTH2[@]}" -X DELETE "$D/$DOC2"
check "delete" 200 '"deleted":true' "${AUTH[@]}" -X DELETE "$D/$DOC2"
check "deleted document is gone" 404 '"code":"document_not_found"' "${AUTH[@]}" "$D/$DOC2"
check "delete twice" 404 '"code":"document_not_found"' "${AUTH[@]}" -X DELETE "$D/$DOC2"
# cancel a scan by deleting the document while it runs; retrieval and deletes of other
# documents are served between its chunks (through the worker's own connection)
"$PY" "$ROOT/tests/http/gen_text.py" 600 --seed 5 >"$WORK/doc5.txt"
check "upload a short document" 202 '"id":"doc_' "${AUTH[@]}" --data-binary @"$WORK/doc5.txt" "$D?name=five.txt"
DOC5="$(doc_id)"
wait_ready "$DOC5"
"$PY" "$ROOT/tests/http/gen_text.py" 30000 --seed 3 >"$WORK/doc3.txt"
check "upload a longer document" 202 '"id":"doc_' "${AUTH[@]}" --data-binary @"$WORK/doc3.txt" "$D"
DOC3="$(doc_id)"
for _ in $(seq 1 200); do
    curl -s "${AUTH[@]}" "$D/$DOC3" | grep -q '"status":"scanning"' && break
    sleep 0.05
done
check "chat is served while a document scans" 200 '"finish_reason"' "${AUTH[@]}" -d "{$MSG,\"max_tokens\":2}" "$C"
check "retrieval is served while a document scans" 200 'PELICAN-4471' "${AUTH[@]}" -d "{\"documents\":[\"$DOC1\"],$Q,\"retrieval\":{\"mode\":\"bm25\",\"budget\":256}}" "$R"
check "another document is deleted while one scans" 200 '"deleted":true' "${AUTH[@]}" -X DELETE "$D/$DOC5"
check "it is gone" 404 '"code":"document_not_found"' "${AUTH[@]}" "$D/$DOC5"
curl -s "${AUTH[@]}" "$D/$DOC3" | grep -q '"status":"scanning"' && echo "ok   the scan goes on" ||
    { echo "FAIL the scan stopped: $(curl -s "${AUTH[@]}" "$D/$DOC3")"; FAILS=$((FAILS + 1)); }
check "delete cancels the scan" 200 '"deleted":true' "${AUTH[@]}" -X DELETE "$D/$DOC3"
gone=no
for _ in $(seq 1 300); do
    if curl -s "${AUTH[@]}" "$BASE/metrics" | grep -q '^s3_ingest_running 0'; then gone=yes; break; fi
    sleep 0.1
done
[ $gone = yes ] && echo "ok   the scan stopped" || { echo "FAIL the scan did not stop"; FAILS=$((FAILS + 1)); }
check "canceled document is gone" 404 '"code":"document_not_found"' "${AUTH[@]}" "$D/$DOC3"
check "list after deletes" 200 "\"id\":\"$DOC1\"" "${AUTH[@]}" "$D"
if grep -q "\"$DOC3\"\|\"$DOC2\"" "$WORK/body"; then echo "FAIL deleted documents listed"; FAILS=$((FAILS + 1)); fi
check "document metrics" 200 's3_ingest_queue_depth 0' "${AUTH[@]}" "$BASE/metrics"
for m in 's3_documents\{status="ready"\} [1-9]' 's3_index_bytes [1-9]' 's3_scan_tokens_per_second [0-9]' 's3_scan_tokens_total [1-9]'; do
    grep -qE "$m" "$WORK/body" && echo "ok   metric $m" || { echo "FAIL metric $m"; FAILS=$((FAILS + 1)); }
done
grep -E '^s3_(scan_tokens_per_second|scan_tokens_total|scan_seconds_total|index_bytes|documents)' "$WORK/body" | sed 's/^/     /'

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
start_server small --queue-max 1 --request-timeout-ms 2500 --threads 1 --db "$WORK/small.db"
C="$BASE/v1/completions"
LONG='{"prompt":"Once upon a time","max_tokens":500,"temperature":0}'
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
