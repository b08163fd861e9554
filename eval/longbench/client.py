"""HTTP client of the s3serve OpenAI-compatible API (standard library only).

Mapping (LongBench pred.py): tasks that use the chat template (11 of the 16 English and
code tasks) go to POST /v1/chat/completions as a single user message (no system message);
the raw tasks (trec, triviaqa, samsum, lcc, repobench-p; lsht in Chinese) go to
POST /v1/completions with the raw prompt. Greedy decoding is
temperature 0 with seed 42 and max_tokens = the task's maxgen.

Extension fields: request `retrieval: {"mode": "full|s3|bm25|hybrid", "budget": N}`;
response `evidence: [{doc, start, end, score, source, text}]` and `s3: {...}` (which path
the server took)."""

import json
import socket
import time
import urllib.error
import urllib.request

from .protocol import SEED, max_new_tokens, uses_chat

# Harness modes. "beyond" sends the whole prompt with no retrieval field, so the server's
# own long-prompt path decides; "full" sends the middle-truncated prompt.
MODES = ("full", "s3", "bm25", "hybrid", "beyond")
RETRIEVAL_MODES = ("s3", "bm25", "hybrid")


class ServerError(RuntimeError):
    """The server answered with an HTTP error status (recorded, the run goes on)."""

    def __init__(self, status, body):
        super().__init__("HTTP %d: %s" % (status, body[:300]))
        self.status = status
        self.body = body


class ConnectError(RuntimeError):
    """The server could not be reached (the run stops; it can be resumed)."""


def build_request(dataset, prompt, mode, budget, model=None):
    """Returns (path, body) for one sample."""
    body = {
        "max_tokens": max_new_tokens(dataset),
        "temperature": 0,
        "seed": SEED,
        "stream": False,
    }
    if model:
        body["model"] = model
    if uses_chat(dataset):
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        path = "/v1/completions"
        body["prompt"] = prompt
    if mode == "full":
        body["retrieval"] = {"mode": "full"}
    elif mode in RETRIEVAL_MODES:
        body["retrieval"] = {"mode": mode, "budget": int(budget)}
    elif mode != "beyond":
        raise ValueError("unknown mode %r" % mode)
    return path, body


def response_text(resp):
    """The generated text of a chat or text completion response."""
    choices = resp.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if isinstance(c.get("message"), dict):
        return c["message"].get("content") or ""
    return c.get("text") or ""


class Client:
    def __init__(self, base_url, api_key=None, timeout_s=3600, retries=3):
        base = base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        self.base = base
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries

    def _request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = "Bearer " + self.api_key
        last = None
        for attempt in range(self.retries):
            req = urllib.request.Request(self.base + path, data=data, headers=headers,
                                         method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    return json.loads(r.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")
                if e.code in (502, 503) and attempt + 1 < self.retries:
                    last = ServerError(e.code, text)
                    time.sleep(1.0 * (attempt + 1))
                    continue
                raise ServerError(e.code, text) from None
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as e:
                last = e
                if attempt + 1 < self.retries:
                    time.sleep(1.0 * (attempt + 1))
        raise ConnectError("%s %s%s: %s" % (method, self.base, path, last))

    def models(self):
        return self._request("GET", "/v1/models")

    def complete(self, path, body):
        return self._request("POST", path, body)

    def discover(self):
        """(model id, context window or None) from GET /v1/models, when it says."""
        try:
            resp = self.models()
        except (ServerError, ConnectError, ValueError):
            return None, None
        data = resp.get("data") or []
        if not data:
            return None, None
        m = data[0]
        window = None
        for key in ("context_length", "context_window", "n_ctx", "max_model_len",
                    "n_ctx_train"):
            for where in (m, m.get("meta") or {}):
                if isinstance(where.get(key), int):
                    window = where[key]
                    break
            if window:
                break
        return m.get("id"), window
