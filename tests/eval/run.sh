#!/usr/bin/env bash
# LongBench harness tests: metrics, templates, truncation, request mapping, resume, and an
# end-to-end run against a local OpenAI-shaped server (plus a live s3serve when S3_EVAL_URL
# is set).
set -euo pipefail
cd "$(dirname "$0")/../.."
sh eval/setup.sh >/dev/null
.venv-eval/bin/python -m pytest -q tests/eval
