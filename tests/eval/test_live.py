"""The harness against a running s3serve, on a small generated set.

Runs only when S3_EVAL_URL names a live server (e.g. http://127.0.0.1:8080). Optional:
S3_EVAL_TOKENIZER (default s3serve:<root>/build/s3serve when that binary exists, else
whitespace), S3_EVAL_MODEL_FILE (GGUF for the tokenizer CLI), S3_EVAL_TOKENS (default 1500),
S3_EVAL_N (samples per task, default 2)."""

import json
import os

import pytest

import gen_longbench as G
from conftest import ROOT
from longbench.cli import main as cli_main

URL = os.environ.get("S3_EVAL_URL")
MODES = ["full", "s3", "bm25", "hybrid", "beyond"]

pytestmark = pytest.mark.skipif(not URL, reason="S3_EVAL_URL not set (no live server)")


def _tokenizer():
    spec = os.environ.get("S3_EVAL_TOKENIZER")
    if spec:
        return spec
    binary = os.path.join(ROOT, "build", "s3serve")
    return "s3serve:" + binary if os.path.exists(binary) else "whitespace"


def test_live_small_generated_set(tmp_path):
    n = int(os.environ.get("S3_EVAL_N", "2"))
    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    G.generate(data, int(os.environ.get("S3_EVAL_TOKENS", "1500")), n, seed=0)
    argv = ["run", "--data", data, "--out", out, "--url", URL, "--modes", ",".join(MODES),
            "--budget", "512", "--tokenizer", _tokenizer(), "--timeout", "600"]
    if os.environ.get("S3_EVAL_MODEL_FILE"):
        argv += ["--model-file", os.environ["S3_EVAL_MODEL_FILE"]]
    assert cli_main(argv) == 0
    with open(os.path.join(out, "scores.json")) as f:
        scores = json.load(f)
    assert list(scores["modes"]) == MODES
    for mode in MODES:
        m = scores["modes"][mode]
        assert set(m["tasks"]) == set(G.TASKS)
        for task, t in m["tasks"].items():
            assert t["n"] == n
            assert 0.0 <= t["score"] <= 100.0
            assert t["errors"] == 0, (mode, task)
        assert m["time_s"] > 0
        assert 0.0 <= m["avg"] <= 100.0
    assert scores["modes"]["full"]["retention"] == 1.0
    for name in ("results.md", "results.csv", "results.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    # resumable: a second identical run sends nothing and changes no score
    assert cli_main(argv) == 0
    with open(os.path.join(out, "scores.json")) as f:
        assert json.load(f)["modes"] == scores["modes"]
