#!/usr/bin/env bash
# LongBench harness tests: metrics, templates, truncation, request mapping, resume, an
# end-to-end run against a local OpenAI-shaped stand-in, and a run of the harness against a
# live s3serve on a small generated set (all modes; the scores file is checked).
set -euo pipefail
cd "$(dirname "$0")/../.."
sh eval/setup.sh >/dev/null
BIN=${S3SERVE:-build/s3serve}
work=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
if [ -x "$BIN" ] && [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    "$BIN" serve --host 127.0.0.1 --port 0 --db "$work/eval.db" --tmp-dir "$work" \
        --log-level warn >"$work/server.out" 2>"$work/server.err" &
    pid=$!
    for _ in $(seq 1 600); do
        grep -q '^listening ' "$work/server.out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/server.err"; exit 1; }
        sleep 0.1
    done
    url=$(sed -n 's/^listening \(http:[^ ]*\).*/\1/p' "$work/server.out")
    [ -n "$url" ] || { echo "eval: the server did not start"; cat "$work/server.err"; exit 1; }
    export S3_EVAL_URL=$url
fi
.venv-eval/bin/python -m pytest -q tests/eval
