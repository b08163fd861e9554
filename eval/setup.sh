#!/bin/sh
# Creates (or updates) the LongBench harness's Python environment at <repo>/.venv-eval
# from eval/requirements.txt. Idempotent: a venv whose installed requirements match the
# file is left alone. PYTHON picks the interpreter (default python3, 3.9 or newer).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv-eval}
REQ=$ROOT/eval/requirements.txt
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP=$VENV/.requirements.sha256
WANT=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "eval venv up to date: $VENV"
    exit 0
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
echo "$WANT" > "$STAMP"
echo "eval venv ready: $VENV"
