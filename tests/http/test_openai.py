"""The official openai client against a running s3serve (started by tests/http/run.sh).

Environment: S3_TEST_BASE_URL (http://127.0.0.1:PORT), S3_TEST_API_KEY, S3_TEST_MODEL.
Generations are short (max_tokens <= 8; 24 where greedy text is compared with llama.cpp's
fixtures) so that the suite stays fast on a small CPU.
"""
import base64
import json
import os

import openai
import pytest

BASE = os.environ["S3_TEST_BASE_URL"]
KEY = os.environ["S3_TEST_API_KEY"]
MODEL = os.environ["S3_TEST_MODEL"]


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=120)


def chat(client, text, **kw):
    kw.setdefault("max_tokens", 4)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kw)


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat(client):
    r = chat(client, "Say hello.")
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert r.id.startswith("chatcmpl-")
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content
    assert c.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 4
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == 4


def test_chat_stream_with_usage(client):
    stream = chat(client, "Name a color.", stream=True, stream_options={"include_usage": True})
    text, finish, usage, n_chunks = "", None, None, 0
    for chunk in stream:
        n_chunks += 1
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == MODEL
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        d = chunk.choices[0]
        text += d.delta.content or ""
        if d.finish_reason:
            finish = d.finish_reason
    assert text
    assert finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 4
    assert n_chunks >= 3  # role chunk, content, finish (+ usage)


def test_chat_stream_without_usage(client):
    chunks = list(chat(client, "Hi", stream=True, max_tokens=2))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def llama_cpp_cases(kind, n):
    """The first n greedy cases of a kind from llama.cpp's fixtures (tests/ref/README.md)."""
    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "greedy.json")
    with open(path, encoding="utf-8") as f:
        cases = [c for c in json.load(f)["cases"] if c["kind"] == kind]
    return cases[:n]


def check_greedy(case, text, finish, n_tokens, max_tokens):
    """Greedy text through the API: llama.cpp's continuation, to the end of generation or the
    token limit (a prefix of it then, short of a character still incomplete)."""
    want = base64.b64decode(case["completion_text_b64"]).decode("utf-8", "replace")
    eog = case["first_eog"]
    if 0 <= eog < max_tokens:
        assert (text, finish, n_tokens) == (want, "stop", eog)
    else:
        assert finish == "length" and n_tokens == max_tokens
        assert len(text) >= 8 and want.startswith(text), (text, want)


@pytest.mark.parametrize("case", llama_cpp_cases("raw", 3), ids=lambda c: c["name"])
def test_completion_greedy_equals_llama_cpp(client, case):
    r = client.completions.create(model=MODEL, prompt=case["text"], max_tokens=24,
                                  temperature=0)
    assert r.usage.prompt_tokens == len(case["prompt_ids"])
    check_greedy(case, r.choices[0].text, r.choices[0].finish_reason,
                 r.usage.completion_tokens, 24)


@pytest.mark.parametrize("case", llama_cpp_cases("chat", 3), ids=lambda c: c["name"])
def test_chat_greedy_equals_llama_cpp(client, case):
    r = client.chat.completions.create(model=MODEL, messages=case["messages"], max_tokens=24,
                                       temperature=0)
    assert r.usage.prompt_tokens == len(case["prompt_ids"])
    check_greedy(case, r.choices[0].message.content, r.choices[0].finish_reason,
                 r.usage.completion_tokens, 24)


def test_completion(client):
    r = client.completions.create(model=MODEL, prompt="The capital of France is",
                                  max_tokens=4, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 4


def test_completion_stream(client):
    text, finish = "", None
    for chunk in client.completions.create(model=MODEL, prompt="One, two, three,",
                                           max_tokens=4, temperature=0, stream=True):
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    assert text and finish in ("stop", "length")


def test_stop_string(client):
    """Greedy output cut at a stop string taken from the unconstrained output."""
    base = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8,
                                     temperature=0).choices[0].text
    if len(base) < 4:
        pytest.skip("output too short to pick a stop string: %r" % base)
    stop = base[len(base) // 2:len(base) // 2 + 2]
    cut = base[:base.find(stop)]
    r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8,
                                  temperature=0, stop=[stop, "never-there"])
    assert r.choices[0].text == cut
    assert r.choices[0].finish_reason == "stop"


def test_seed_reproducible(client):
    a = chat(client, "Tell me a word.", temperature=1.0, seed=1234, max_tokens=6)
    b = chat(client, "Tell me a word.", temperature=1.0, seed=1234, max_tokens=6)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_errors_through_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "x", max_tokens=0)
    assert e.value.status_code == 400
    assert e.value.code == "integer_below_min_value"
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    bad = openai.OpenAI(base_url=BASE + "/v1", api_key="sk-wrong-key-000", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.status_code == 401


# ---- documents and over-long prompts (extension fields; the client passes them through) ----

import time

import httpx
from gen_text import FACT, QUESTION, make_text


def _upload(text, name):
    h = {"Authorization": "Bearer " + KEY}
    r = httpx.post(BASE + "/v1/documents", params={"name": name}, content=text.encode(),
                   headers=h, timeout=60)
    assert r.status_code == 202, r.text
    doc = r.json()
    assert doc["object"] == "document" and doc["id"].startswith("doc_")
    for _ in range(1200):
        d = httpx.get(BASE + "/v1/documents/" + doc["id"], headers=h, timeout=30).json()
        assert d["status"] in ("queued", "scanning", "ready"), d
        assert 0.0 <= d["progress"] <= 1.0
        if d["status"] == "ready":
            assert d["progress"] == 1.0 and d["n_tokens"] > 0
            return doc["id"]
        time.sleep(0.2)
    raise AssertionError("document not ready in time")


@pytest.fixture(scope="module")
def doc_id():
    return _upload(make_text(900, 0.6, seed=11), "aurora.txt")


def test_chat_with_documents(client, doc_id):
    r = chat(client, QUESTION, max_tokens=24,
             extra_body={"documents": [doc_id], "retrieval": {"mode": "hybrid", "budget": 256}})
    extra = r.model_extra
    assert extra["s3"]["path"] == "retrieval"
    assert extra["s3"]["mode"] in ("hybrid", "bm25")
    assert extra["s3"]["budget"] == 256
    ev = extra["evidence"]
    assert ev and all(e["doc"] == doc_id for e in ev)
    assert all(set(e) >= {"doc", "start", "end", "score", "source", "text"} for e in ev)
    assert any("PELICAN-4471" in e["text"] for e in ev)
    assert sum(e["end_token"] - e["start_token"] for e in ev) <= 256
    assert r.choices[0].message.content
    print("answer with documents:", repr(r.choices[0].message.content))


def test_chat_with_documents_stream(client, doc_id):
    # budget 256: room for two passages, so hybrid keeps both sources' best (at 128 tokens
    # a single passage fits and fusion must pick one source)
    stream = chat(client, QUESTION, max_tokens=8, stream=True,
                  extra_body={"documents": [doc_id], "retrieval": {"budget": 256}})
    chunks = list(stream)
    first = chunks[0].model_extra
    assert first["s3"]["path"] == "retrieval"
    assert any("PELICAN-4471" in e["text"] for e in first["evidence"])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_completion_with_documents(client, doc_id):
    r = client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=8, temperature=0,
                                  extra_body={"documents": [doc_id],
                                              "retrieval": {"mode": "bm25", "budget": 128}})
    assert r.model_extra["s3"]["mode"] == "bm25"
    assert any(FACT in e["text"] for e in r.model_extra["evidence"])
    assert r.choices[0].text


def test_unknown_document_through_client(client):
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, QUESTION, extra_body={"documents": ["doc_987654"]})
    assert e.value.code == "document_not_found"


def test_prompt_four_times_the_window(client):
    """A LongBench-style prompt (instruction, long context, question) 4x longer than the
    window: the server scans the middle, keeps head and tail, answers from the evidence."""
    window = client.models.retrieve(MODEL).model_extra["context_length"]
    words = int(window * 4 / 1.05)  # the filler has about 1.14 tokens per word
    context = make_text(words, 0.45, seed=5)
    prompt = ("You are given a long text. Answer the question based on the text.\n\n" + context +
              "\n\nNow answer the question based on the text above.\n\nQuestion: " + QUESTION +
              "\nAnswer:")
    t0 = time.time()
    r = client.with_options(timeout=1800).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16,
        temperature=0, extra_body={"retrieval": {"budget": 768}})
    dt = time.time() - t0
    s3 = r.model_extra["s3"]
    assert s3["path"] == "long_prompt"
    assert s3["prompt_tokens_original"] >= 4 * window
    assert r.usage.prompt_tokens < window
    ev = r.model_extra["evidence"]
    assert ev and all(e["doc"] == "prompt" for e in ev)
    # offsets point into the message as sent
    for e in ev:
        assert prompt[e["start"]:e["end"]] == e["text"]
    assert any("PELICAN-4471" in e["text"] for e in ev), [e["text"][:80] for e in ev]
    assert r.choices[0].message.content
    assert s3["scan_cached"] is False
    print("long prompt: %d tokens, scan %.1f s (%.0f tok/s), total %.1f s, answer %r" % (
        s3["prompt_tokens_original"], s3["scan_ms"] / 1e3, s3["scan_tokens_per_second"], dt,
        r.choices[0].message.content))
    # the same context again, other mode: the scanned middle comes from the long-prompt cache
    r2 = client.with_options(timeout=1800).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16,
        temperature=0, extra_body={"retrieval": {"mode": "bm25", "budget": 768}})
    s2 = r2.model_extra["s3"]
    assert s2["scan_cached"] is True and s2["scan_ms"] == 0
    assert s2["scanned_tokens"] == s3["scanned_tokens"]
    assert s2["mode"] == "bm25"
    assert any("PELICAN-4471" in e["text"] for e in r2.model_extra["evidence"])


def test_prompt_within_window_with_explicit_budget(client):
    """A prompt that fits the window but asks for retrieval at a smaller budget (matched-budget
    evaluation) takes the evidence path; without the retrieval field it is read whole."""
    context = make_text(1400, 0.5, seed=9)
    prompt = ("Read the text and answer.\n\n" + context + "\n\nQuestion: " + QUESTION +
              "\nAnswer:")
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8,
        temperature=0, extra_body={"retrieval": {"mode": "bm25", "budget": 256}})
    s3 = r.model_extra["s3"]
    assert s3["path"] == "long_prompt"
    assert s3["mode"] == "bm25"
    assert r.usage.prompt_tokens < s3["prompt_tokens_original"]
    assert any("PELICAN-4471" in e["text"] for e in r.model_extra["evidence"])
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=4,
        temperature=0)
    assert plain.model_extra["s3"]["path"] == "full"
    assert plain.usage.prompt_tokens > s3["budget"] + 768
