"""Prompt templates byte for byte, generation lengths, chat/raw mapping, truncation."""

import hashlib
import json
import sys

import pytest

from longbench import protocol as P
from longbench.client import build_request, response_text
from longbench.truncate import (CommandTokenizer, TokenizerError, WhitespaceTokenizer,
                                make_tokenizer, middle_truncate)

# sha256 of each template's UTF-8 bytes (LongBench config/dataset2prompt.json).
TEMPLATE_SHA256 = {
    "narrativeqa": "aada7ed24b06abace5b0045ac3bcfe06fc831a6cf434f0ecfd99fb7b3d299e1c",
    "qasper": "0fbdd123fe7f83d6d6a9c583ca28cb29d68e523bf8fec01a0cf2dcd11037775d",
    "multifieldqa_en": "20b4666a2de8a1f701bdb6c4e015fa9f8758d64b361d841f7766df6c9ceba770",
    "hotpotqa": "9ec4ae308865bd0c62af20b3dc7b12b31f2b447f55684bd88c1aa40f2f636deb",
    "2wikimqa": "9ec4ae308865bd0c62af20b3dc7b12b31f2b447f55684bd88c1aa40f2f636deb",
    "musique": "9ec4ae308865bd0c62af20b3dc7b12b31f2b447f55684bd88c1aa40f2f636deb",
    "gov_report": "91c25d585b189ced91c9280efcb4ecb5dcff9548cd4e3bfae66c68025b569e95",
    "qmsum": "dca23b678fe0183bbd9555b57947022aed1b85739da5ad7e1b4708dd0c71c409",
    "multi_news": "2af3f28c40b902e6535d4910510d51653613c49de9b2fc287c5958395061101d",
    "trec": "0eff8bebdba99d91e9d7d91b6ab39455ac74648bea92c9255c9f68c62175b2db",
    "triviaqa": "00a802e6377e72fca39b169cf6c28893bedf23ba7286b03ecd15867c3e27a7c4",
    "samsum": "a68d884234907eefcaa0eacf7b2997f60fa46603988dceae6a44f9b49f045b3f",
    "passage_count": "986550b6c61009c629a4535766d94b7b51e2b2b9e1ed169e4ecb54417466e964",
    "passage_retrieval_en": "39b96b7fa52bdd2aa2bde34ea199158505201b9a0a2c3ce94e80249293f60431",
    "lcc": "6a1f24cf0bb83cd90f1fca8f0dd24801626c2aaea29db834ddc83b950e71190e",
    "repobench-p": "ee9ec182ea5ffeb70a7140d55baea97264a8612d88226d323afa90859c36240c",
}

MAXGEN = {"narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32,
          "2wikimqa": 32, "musique": 32, "gov_report": 512, "qmsum": 512, "multi_news": 512,
          "trec": 64, "triviaqa": 32, "samsum": 128, "passage_count": 32,
          "passage_retrieval_en": 32, "lcc": 64, "repobench-p": 64}

RAW = {"trec", "triviaqa", "samsum", "lcc", "repobench-p"}


def test_sixteen_tasks():
    assert set(P.TASKS) == set(TEMPLATE_SHA256) == set(P.DATASET2PROMPT) == set(MAXGEN)
    assert len(P.TASKS) == 16


@pytest.mark.parametrize("task", sorted(TEMPLATE_SHA256))
def test_template_bytes(task):
    got = hashlib.sha256(P.DATASET2PROMPT[task].encode("utf-8")).hexdigest()
    assert got == TEMPLATE_SHA256[task]


def test_template_spot_checks():
    t = P.DATASET2PROMPT
    assert t["narrativeqa"].count("asconcisely") == 2 and "as concisely" not in t["narrativeqa"]
    assert "explanation.\n\nArticle: {context}\n\n Answer the question" in t["qasper"]
    assert "summary of all news. \n\nNews:\n{context}" in t["multi_news"]
    assert t["passage_count"].endswith("\n\nThe final answer is: ")
    assert t["passage_retrieval_en"].endswith("\n\nThe answer is: ")
    assert t["lcc"] == "Please complete the code given below. \n{context}Next line of code:\n"
    assert t["repobench-p"] == ("Please complete the code given below. \n"
                                "{context}{input}Next line of code:\n")
    assert t["trec"] == ("Please determine the type of the question below. Here are some "
                         "examples of questions.\n\n{context}\n{input}")
    assert t["multifieldqa_en"].endswith("\n\nQuestion: {input}\nAnswer:")
    assert t["narrativeqa"].endswith("\n\nQuestion: {input}\n\nAnswer:")


def test_build_prompt_is_str_format():
    item = {"input": "Q?", "context": "a {x} b", "answers": ["a"], "length": 3,
            "dataset": "lcc", "language": "en", "all_classes": None, "_id": "1"}
    assert P.build_prompt("lcc", item) == \
        "Please complete the code given below. \na {x} bNext line of code:\n"
    assert P.build_prompt("trec", item).endswith("questions.\n\na {x} b\nQ?")
    with pytest.raises(ValueError):
        P.build_prompt("lsht", item)  # Chinese tasks are out of scope
    with pytest.raises(KeyError):
        P.build_prompt("hotpotqa", {"context": "c"})


def test_maxgen_and_window():
    for task, n in MAXGEN.items():
        assert P.max_new_tokens(task) == n
    assert P.max_length_for_window(4096) == 3500
    assert P.max_length_for_window(8192) == 7500
    assert P.max_length_for_window(16384) == 15500
    assert P.max_length_for_window(32768) == 31500
    assert P.max_length_for_window(10000) == 9500
    with pytest.raises(ValueError):
        P.max_length_for_window(400)


@pytest.mark.parametrize("task", sorted(MAXGEN))
def test_chat_raw_mapping(task):
    path, body = build_request(task, "PROMPT", "s3", 2048, model="m")
    assert body["max_tokens"] == MAXGEN[task]
    assert body["temperature"] == 0 and body["seed"] == 42 and body["stream"] is False
    assert body["model"] == "m"
    assert body["retrieval"] == {"mode": "s3", "budget": 2048}
    if task in RAW:
        assert path == "/v1/completions"
        assert body["prompt"] == "PROMPT" and "messages" not in body
    else:
        assert path == "/v1/chat/completions"
        assert body["messages"] == [{"role": "user", "content": "PROMPT"}]
        assert "prompt" not in body
    assert P.uses_chat(task) == (task not in RAW)


def test_retrieval_field_per_mode():
    assert build_request("hotpotqa", "p", "full", 2048)[1]["retrieval"] == {"mode": "full"}
    assert build_request("hotpotqa", "p", "bm25", 1024)[1]["retrieval"] == \
        {"mode": "bm25", "budget": 1024}
    assert build_request("hotpotqa", "p", "hybrid", 512)[1]["retrieval"] == \
        {"mode": "hybrid", "budget": 512}
    body = build_request("hotpotqa", "p", "beyond", 2048)[1]
    assert "retrieval" not in body and "model" not in body
    with pytest.raises(ValueError):
        build_request("hotpotqa", "p", "dense", 2048)


def test_response_text():
    assert response_text({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}) == "hi"
    assert response_text({"choices": [{"text": " x"}]}) == " x"
    assert response_text({"choices": []}) == ""
    assert response_text({}) == ""


# ---- middle truncation ---------------------------------------------------------------------

def test_middle_truncation_whitespace():
    tok = WhitespaceTokenizer()
    prompt = " ".join("w%d" % i for i in range(10))
    # half = int(4/2) = 2; the two decoded halves are joined with nothing between them
    assert middle_truncate(prompt, tok, 4) == ("w0 w1w8 w9", 10)
    assert middle_truncate(prompt, tok, 5) == ("w0 w1w8 w9", 10)  # int(5/2) = 2
    assert middle_truncate(prompt, tok, 7) == ("w0 w1 w2w7 w8 w9", 10)


def test_no_truncation_keeps_bytes():
    tok = WhitespaceTokenizer()
    prompt = "a  b\n\nc "
    assert middle_truncate(prompt, tok, 3) == (prompt, 3)
    assert middle_truncate(prompt, tok, 100) == (prompt, 3)


def _byte_tokenizer():
    enc = [sys.executable, "-c",
           "import sys; print(' '.join(str(b) for b in sys.stdin.buffer.read()))"]
    dec = [sys.executable, "-c",
           "import sys; sys.stdout.buffer.write(bytes(int(x) for x in sys.stdin.read().split()))"]
    return CommandTokenizer(enc, dec)


def test_command_tokenizer_protocol():
    tok = _byte_tokenizer()
    assert tok.encode("ab") == [97, 98]
    assert tok.decode([104, 105]) == "hi"
    assert middle_truncate("abcdefghij", tok, 4) == ("abij", 10)
    # a cut inside a UTF-8 sequence decodes with replacement characters, like
    # skip_special_tokens decoding of a partial byte token
    assert middle_truncate("é" * 3, tok, 3)[0] == "\ufffd\ufffd"


def test_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError):
        make_tokenizer("sentencepiece")
    with pytest.raises(TokenizerError):
        make_tokenizer("s3serve:" + str(tmp_path / "missing"))
    bad = CommandTokenizer([sys.executable, "-c", "print('x y')"], ["true"])
    with pytest.raises(TokenizerError):
        bad.encode("a")
    fail = CommandTokenizer([sys.executable, "-c", "import sys; sys.exit(3)"], ["true"])
    with pytest.raises(TokenizerError):
        fail.encode("a")
    assert isinstance(make_tokenizer("whitespace"), WhitespaceTokenizer)
    t = make_tokenizer("cmd:%s -c pass|%s -c pass" % (sys.executable, sys.executable))
    assert t.encode("a") == []


def test_config_json_is_valid_utf8_json():
    import os
    d = os.path.join(os.path.dirname(P.__file__), "config")
    for name in ("dataset2prompt.json", "dataset2maxlen.json"):
        with open(os.path.join(d, name), "rb") as f:
            json.loads(f.read().decode("utf-8"))
