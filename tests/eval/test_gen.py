"""The synthetic LongBench-format generator."""

import json
import os
import re

import pytest

import gen_longbench as G
from longbench.protocol import build_prompt

FIELDS = ["input", "context", "answers", "length", "dataset", "language", "all_classes", "_id"]

# Small hand-made filler so these tests do not need the Debian documentation package.
PARAS = [("Doc %d" % i, " ".join("w%d_%d" % (i, j) for j in range(30)) + ". Next s%d." % i)
         for i in range(200)]


def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_clean_markup():
    assert G.clean_markup("Use :func:`len` and ``x + 1`` here.") == "Use len and x + 1 here."
    assert G.clean_markup("See :ref:`the tutorial <tut-if>` now.") == "See the tutorial now."
    assert G.clean_markup("Call :meth:`~str.join`.") == "Call join."
    assert G.clean_markup("A `link <http://x>`_ and **bold** *it*.") == "A link and bold it."
    assert G.clean_markup("For example::") == "For example:"


def test_files_and_fields(tmp_path):
    paths = G.generate(str(tmp_path), 1500, 3, seed=7, paras=PARAS)
    assert sorted(paths) == sorted(G.TASKS)
    for task, path in paths.items():
        items = load(path)
        assert len(items) == 3
        for it in items:
            assert list(it) == FIELDS
            assert it["dataset"] == task and it["language"] == "en"
            assert it["all_classes"] is None
            assert it["length"] == sum(len(x.split()) for x in
                                       [it["input"], it["context"]] + it["answers"])
            build_prompt(task, it)  # the official template fills
        assert len({it["_id"] for it in items}) == 3


def test_deterministic(tmp_path):
    a = G.generate(str(tmp_path / "a"), 1200, 2, seed=3, paras=PARAS)
    b = G.generate(str(tmp_path / "b"), 1200, 2, seed=3, paras=PARAS)
    c = G.generate(str(tmp_path / "c"), 1200, 2, seed=4, paras=PARAS)
    for t in G.TASKS:
        assert open(a[t]).read() == open(b[t]).read()
        assert open(a[t]).read() != open(c[t]).read()


def test_planted_answers(tmp_path):
    paths = G.generate(str(tmp_path), 2000, 4, seed=1, paras=PARAS)
    for it in load(paths["passage_retrieval_en"]):
        paras = re.split(r"\n\n(?=Paragraph \d+: )", it["context"])
        assert len(paras) == 30
        k = int(re.match(r"Paragraph (\d+)$", it["answers"][0]).group(1))
        who = re.search(r"notes that (.+?) relocated", it["input"]).group(1)
        holders = [i + 1 for i, p in enumerate(paras) if who in p]
        assert holders == [k]
    for it in load(paths["passage_count"]):
        bodies = [p.split(": ", 1)[1] for p in it["context"].split("\n\n")]
        assert int(it["answers"][0]) == len(set(bodies)) < len(bodies)
    for it in load(paths["multifieldqa_en"]):
        assert it["answers"][0] in it["context"]
        assert it["input"].endswith("?")
    for it in load(paths["hotpotqa"]):
        assert it["context"].startswith("Passage 1:\n")
        who = re.search(r"that (.+) is a member of\?", it["input"]).group(1)
        org = re.search(re.escape(who) + r" is a member of the (.+?)\.", it["context"]).group(1)
        city = re.search("The " + re.escape(org) + r" has its headquarters in (\w+)\.",
                         it["context"]).group(1)
        assert it["answers"] == [city]


def test_length_scales(tmp_path):
    small = load(G.generate(str(tmp_path / "s"), 1000, 1, paras=PARAS, tasks=["hotpotqa"])["hotpotqa"])
    big = load(G.generate(str(tmp_path / "b"), 8000, 1, paras=PARAS, tasks=["hotpotqa"])["hotpotqa"])
    assert 4 * small[0]["length"] < big[0]["length"]
    assert abs(big[0]["length"] - (8000 / G.TOKENS_PER_WORD)) < 400


@pytest.mark.skipif(not os.path.isdir(G.DEFAULT_FILLER_DIR), reason="python3.11-doc not installed")
def test_real_filler():
    paras = G.load_filler()
    assert len(paras) > 1000
    assert all(t.endswith(".") and "``" not in t and ":func:" not in t for _, t in paras)
