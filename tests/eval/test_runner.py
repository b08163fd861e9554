"""End to end against a fake server: request mapping, truncation on the wire, scores,
reports, resumability, errors."""

import csv
import json
import os

import pytest

from fake_server import FakeServer, prompt_of, reply
from longbench.cli import main as cli_main
from longbench.client import Client
from longbench.report import summarize_run, write_reports
from longbench.runner import check_settings, read_preds, run
from longbench.truncate import WhitespaceTokenizer

FILLER = " ".join("f%d" % i for i in range(40))

HOTPOT = [
    {"input": "Where is the tower?", "context": "Paris has the tower. " + FILLER,
     "answers": ["Paris"], "length": 50, "dataset": "hotpotqa", "language": "en",
     "all_classes": None, "_id": "h1"},
    {"input": "Who built it?", "context": FILLER + " It was built by Eiffel.",
     "answers": ["Gustave Eiffel"], "length": 50, "dataset": "hotpotqa", "language": "en",
     "all_classes": None, "_id": "h2"},
]
TREC = [
    {"input": "What city is largest?", "context": "Q: Who? Type: Human", "answers": ["Location"],
     "length": 9, "dataset": "trec", "language": "en", "all_classes": ["Human", "Location"],
     "_id": "t1"},
    {"input": "Who is he?", "context": "Q: Where? Type: Location", "answers": ["Human"],
     "length": 8, "dataset": "trec", "language": "en", "all_classes": ["Human", "Location"],
     "_id": "t2"},
]
LCC = [{"input": "", "context": "def f(a, b):\n", "answers": ["    return a + b"], "length": 4,
        "dataset": "lcc", "language": "python", "all_classes": None, "_id": "c1"}]

# What the fake model says, keyed by a marker of the question.
ANSWERS = {
    "Where is the tower?": "Paris",            # 1.0
    "Who built it?": "Eiffel",                 # F1([eiffel], [gustave, eiffel]) = 2/3
    "What city is largest?": "\nLocation\nHuman",  # first line -> Location: 1.0
    "Who is he?": "Location",                  # 0.0
    "Next line of code": "# add\n    return a+b",  # "    return a+b" vs "    return a + b": 93
}


def fake_answer(path, body):
    prompt = prompt_of(path, body)
    text = ""
    for k, v in ANSWERS.items():
        if k in prompt:
            text = v
    evidence = None
    mode = (body.get("retrieval") or {}).get("mode")
    if mode in ("s3", "bm25", "hybrid"):
        evidence = [{"doc": "t", "start": 0, "end": 5, "score": 1.0, "source": mode,
                     "text": "stands in Paris" if "tower" in prompt else "nothing here"}]
    return 200, reply(path, text, evidence)


def write_data(d):
    os.makedirs(d, exist_ok=True)
    for name, items in (("hotpotqa", HOTPOT), ("trec", TREC), ("lcc", LCC)):
        with open(os.path.join(d, name + ".jsonl"), "w") as f:
            for it in items:
                f.write(json.dumps(it) + "\n")


SETTINGS = {"max_length": 60, "budget": 128, "tokenizer": "whitespace", "model": None}
TASKS = ["hotpotqa", "trec", "lcc"]


class QuietProgress:
    def update(self, *a, **k):
        pass


def do_run(server_url, data, out, modes, limit=None, retry_errors=False):
    client = Client(server_url, retries=1, timeout_s=10)
    settings = check_settings(out, dict(SETTINGS, modes=modes, tasks=TASKS))
    return run(client, data, out, modes, TASKS, settings, WhitespaceTokenizer, limit=limit,
               retry_errors=retry_errors, progress=QuietProgress())


def test_end_to_end_scores_and_wire_format(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_data(data)
    with FakeServer(fake_answer) as srv:
        assert do_run(srv.url, data, out, ["full", "s3"]) == 10
        reqs = srv.requests
    paths = [p for p, _ in reqs]
    # task by task, each sample through every mode before the next sample
    assert paths == ["/v1/chat/completions"] * 4 + ["/v1/completions"] * 6
    modes_sent = [b.get("retrieval", {}).get("mode") for _, b in reqs]
    assert modes_sent == ["full", "s3"] * 5
    # full mode: the hotpotqa prompt (95 words) is middle-truncated to 30 + 30 words
    # (the whitespace tokenizer decodes with single spaces)
    tok = WhitespaceTokenizer()
    p0 = reqs[0][1]["messages"][0]["content"]
    assert len(tok.encode(p0)) == 59  # the seam word "f0f36" counts once
    assert p0.startswith("Answer the question based on the given passages. Only give me")
    assert "Paris has the tower. f0f" in p0  # head and tail joined with nothing between
    assert p0.endswith("Question: Where is the tower? Answer:")
    # prompts within max_length go out byte for byte
    assert reqs[4][1]["prompt"] == ("Please determine the type of the question below. Here are "
                                    "some examples of questions.\n\nQ: Who? Type: Human\n"
                                    "What city is largest?")
    assert reqs[0][1]["retrieval"] == {"mode": "full"} and reqs[0][1]["max_tokens"] == 32
    # s3 mode: the whole prompt goes out, with the budget
    assert FILLER in reqs[1][1]["messages"][0]["content"]
    assert reqs[1][1]["retrieval"] == {"mode": "s3", "budget": 128}
    assert reqs[5][1]["prompt"].startswith("Please determine the type")
    assert reqs[8][1]["max_tokens"] == 64 and reqs[8][1]["temperature"] == 0

    rows = read_preds(os.path.join(out, "s3", "hotpotqa.jsonl"))
    assert [r["_id"] for r in rows] == ["h1", "h2"]
    assert list(rows[0])[:4] == ["pred", "answers", "all_classes", "length"]
    assert rows[0]["evidence_hit"] is True and rows[1]["evidence_hit"] is False
    full_rows = read_preds(os.path.join(out, "full", "hotpotqa.jsonl"))
    # full mode: recall is measured on the truncated prompt ("Paris" survives at the head)
    assert full_rows[0]["evidence_hit"] is True
    assert full_rows[0]["prompt_tokens"] == 95

    summaries = write_reports([out], out, labels=["tiny"], png=True)
    s = summaries["tiny"]["modes"]
    hot = round(100 * (1 + 2 / 3) / 2, 2)
    code = 93.0  # 2 * 14 / 30 = 0.933 -> 93
    for mode in ("full", "s3"):
        assert s[mode]["tasks"]["hotpotqa"]["score"] == hot
        assert s[mode]["tasks"]["trec"]["score"] == 50.0
        assert s[mode]["tasks"]["lcc"]["score"] == code
        assert s[mode]["avg"] == round((hot + 50.0 + code) / 3, 2)
    assert s["s3"]["retention"] == 1.0 and s["full"]["retention"] == 1.0
    assert s["s3"]["recall"] == 50.0
    assert s["s3"]["tasks"]["trec"]["recall"] is None
    with open(os.path.join(out, "scores.json")) as f:
        assert json.load(f)["modes"]["s3"]["tasks"]["lcc"]["n"] == 1
    md = open(os.path.join(out, "results.md")).read()
    assert md.splitlines()[0].startswith("| context | mode | hotpotqa | trec | lcc | avg |")
    assert "| tiny | s3 | 83.33 | 50.00 | 93.00 |" in md
    with open(os.path.join(out, "results.csv")) as f:
        got = list(csv.DictReader(f))
    assert {(r["mode"], r["task"]) for r in got} >= {("s3", "avg"), ("full", "lcc")}
    with open(os.path.join(out, "results.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_skips_done_samples(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_data(data)
    with FakeServer(fake_answer) as srv:
        assert do_run(srv.url, data, out, ["bm25"], limit=1) == 3
        assert do_run(srv.url, data, out, ["bm25"]) == 2      # h2 and t2 only
        assert do_run(srv.url, data, out, ["bm25"]) == 0
        # a run killed mid-write leaves a partial last line: it is cut and redone
        path = os.path.join(out, "bm25", "trec.jsonl")
        with open(path, "a") as f:
            f.write('{"pred": "Hum')
        rows = read_preds(path)
        assert [r["_id"] for r in rows] == ["t1", "t2"]
        assert open(path).read().endswith("\n")
        lines = open(path).read().splitlines()
        with open(path, "w") as f:
            f.write(lines[0] + "\n" + lines[1][:10])
        assert do_run(srv.url, data, out, ["bm25"]) == 1
        assert [p for p, _ in srv.requests][-1] == "/v1/completions"
    ids = [r["_id"] for r in read_preds(path)]
    assert ids == ["t1", "t2"]


def test_server_errors_recorded_and_retried(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_data(data)
    state = {"fail": True}

    def flaky(path, body):
        if state["fail"] and "Who built it?" in prompt_of(path, body):
            return 400, {"error": {"message": "prompt too long", "type": "invalid_request_error"}}
        return fake_answer(path, body)

    with FakeServer(flaky) as srv:
        do_run(srv.url, data, out, ["beyond"])
        rows = read_preds(os.path.join(out, "beyond", "hotpotqa.jsonl"))
        assert rows[1]["pred"] == "" and "HTTP 400" in rows[1]["error"]
        s = summarize_run(out)["modes"]["beyond"]
        assert s["errors"] == 1 and s["tasks"]["hotpotqa"]["score"] == 50.0
        assert "retrieval" not in srv.requests[0][1]
        state["fail"] = False
        assert do_run(srv.url, data, out, ["beyond"]) == 0
        assert do_run(srv.url, data, out, ["beyond"], retry_errors=True) == 1
    rows = read_preds(os.path.join(out, "beyond", "hotpotqa.jsonl"))
    assert [r["_id"] for r in rows] == ["h1", "h2"] and not any(r.get("error") for r in rows)


def test_unreachable_server_stops(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "run")
    write_data(data)
    with FakeServer(fake_answer) as srv:
        url = srv.url
    with pytest.raises(SystemExit, match="unreachable"):
        do_run(url, data, out, ["s3"])


def test_settings_pinned_on_resume(tmp_path):
    out = str(tmp_path / "run")
    check_settings(out, dict(SETTINGS, modes=["full"], tasks=["trec"]))
    with pytest.raises(SystemExit, match="budget"):
        check_settings(out, dict(SETTINGS, budget=999, modes=["s3"], tasks=["trec"]))
    merged = check_settings(out, dict(SETTINGS, modes=["s3"], tasks=["lcc"]))
    assert merged["modes"] == ["full", "s3"] and merged["tasks"] == ["trec", "lcc"]


def test_cli_run_and_report(tmp_path, capsys):
    data = str(tmp_path / "data")
    write_data(data)
    with FakeServer(fake_answer, models={"data": [{"id": "fake", "context_length": 4096}]}) as srv:
        rc = cli_main(["run", "--data", data, "--out", str(tmp_path / "a"), "--url",
                       srv.url + "/v1", "--modes", "full,hybrid", "--tokenizer", "whitespace",
                       "--no-png", "--tasks", "trec,lcc"])
        assert rc == 0
        assert srv.requests[0][1]["model"] == "fake"
    settings = json.load(open(tmp_path / "a" / "run.json"))
    assert settings["window"] == 4096 and settings["max_length"] == 3500
    assert "| a | hybrid |" in capsys.readouterr().out
    rc = cli_main(["report", str(tmp_path / "a"), str(tmp_path / "a"), "--labels", "4k,4k-again",
                   "--out", str(tmp_path / "rep")])
    assert rc == 0
    md = open(tmp_path / "rep" / "results.md").read()
    assert "| 4k | full |" in md and "| 4k-again | hybrid |" in md
    assert os.path.exists(tmp_path / "rep" / "results.png")
