"""A stand-in for s3serve's OpenAI-compatible API, for harness tests (127.0.0.1 only)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """answer(path, body) -> (status, response dict). Requests are recorded in order."""

    def __init__(self, answer, models=None):
        self.requests = []
        self.answer = answer
        self.models = models or {"object": "list", "data": [{"id": "fake", "object": "model"}]}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, server.models)
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n))
                server.requests.append((self.path, body))
                status, resp = server.answer(self.path, body)
                self._send(status, resp)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def prompt_of(path, body):
    if path == "/v1/chat/completions":
        return body["messages"][0]["content"]
    return body["prompt"]


def reply(path, text, evidence=None):
    if path == "/v1/chat/completions":
        resp = {"object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}]}
    else:
        resp = {"object": "text_completion",
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}
    resp["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    if evidence is not None:
        resp["evidence"] = evidence
        resp["s3"] = {"path": "retrieval"}
    return resp
