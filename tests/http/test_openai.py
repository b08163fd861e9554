"""The official openai client against a running s3serve (started by tests/http/run.sh).

Environment: S3_TEST_BASE_URL (http://127.0.0.1:PORT), S3_TEST_API_KEY, S3_TEST_MODEL.
Generations are short (max_tokens <= 8) so that the suite stays fast on a small CPU.
"""
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
