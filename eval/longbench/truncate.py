"""Tokenizers (pluggable) and LongBench's middle truncation.

pred.py tokenizes the filled prompt without truncation; when it has more than max_length
tokens it keeps decode(ids[:half]) + decode(ids[-half:]) with half = int(max_length/2),
special tokens skipped. The truncation needs the served model's own tokenizer; the
harness asks the s3serve binary for it (`s3serve tokenize --model M` reads text on stdin
and prints token ids; `s3serve detokenize --model M` reads ids on stdin and prints the
text, special tokens skipped). Any object with encode(text) -> list[int] and
decode(ids) -> str can stand in.
"""

import os
import shlex
import subprocess


class TokenizerError(RuntimeError):
    pass


class WhitespaceTokenizer:
    """Words as tokens (ids index a growing vocabulary). For tests of the truncation
    logic and for dry runs only: it is not the model's tokenizer."""

    name = "whitespace"

    def __init__(self):
        self._ids = {}
        self._words = []

    def encode(self, text):
        out = []
        for w in text.split():
            i = self._ids.get(w)
            if i is None:
                i = len(self._words)
                self._ids[w] = i
                self._words.append(w)
            out.append(i)
        return out

    def decode(self, ids):
        return " ".join(self._words[i] for i in ids)


class CommandTokenizer:
    """Runs an external tokenizer: encode_cmd reads UTF-8 text on stdin and prints
    whitespace-separated ids; decode_cmd reads ids on stdin and prints UTF-8 text."""

    def __init__(self, encode_cmd, decode_cmd, name="command", timeout_s=600):
        self.encode_cmd = list(encode_cmd)
        self.decode_cmd = list(decode_cmd)
        self.name = name
        self.timeout_s = timeout_s

    def _run(self, cmd, data):
        try:
            p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TokenizerError("%s: %s" % (" ".join(cmd), e)) from e
        if p.returncode != 0:
            raise TokenizerError("%s exited %d: %s" % (
                " ".join(cmd), p.returncode, p.stderr.decode("utf-8", "replace").strip()[:500]))
        return p.stdout

    def encode(self, text):
        out = self._run(self.encode_cmd, text.encode("utf-8"))
        try:
            return [int(x) for x in out.split()]
        except ValueError as e:
            raise TokenizerError("tokenizer printed something other than ids: %r"
                                 % out[:200]) from e

    def decode(self, ids):
        data = (" ".join(str(int(i)) for i in ids) + "\n").encode("ascii")
        return self._run(self.decode_cmd, data).decode("utf-8", "replace")


def s3serve_tokenizer(binary, model=None):
    """The served model's tokenizer through the s3serve CLI."""
    tail = ["--model", model] if model else []
    return CommandTokenizer([binary, "tokenize"] + tail, [binary, "detokenize"] + tail,
                            name="s3serve")


def make_tokenizer(spec, model=None):
    """spec: "whitespace", "s3serve[:BINARY]" (default binary build/s3serve), or
    "cmd:ENCODE_CMD|DECODE_CMD" (two shell-quoted command lines)."""
    if spec == "whitespace":
        return WhitespaceTokenizer()
    if spec == "s3serve" or spec.startswith("s3serve:"):
        binary = spec.split(":", 1)[1] if ":" in spec else os.path.join("build", "s3serve")
        if not os.path.exists(binary):
            raise TokenizerError("tokenizer binary %s not found (build s3serve, or pass "
                                 "--tokenizer s3serve:PATH)" % binary)
        return s3serve_tokenizer(binary, model)
    if spec.startswith("cmd:"):
        parts = spec[4:].split("|")
        if len(parts) != 2:
            raise TokenizerError("cmd tokenizer needs 'cmd:ENCODE|DECODE'")
        return CommandTokenizer(shlex.split(parts[0]), shlex.split(parts[1]), name="cmd")
    raise TokenizerError("unknown tokenizer %r" % spec)


def middle_truncate(prompt, tokenizer, max_length):
    """Returns (prompt', n_tokens_before). prompt' is prompt when it has at most max_length
    tokens, else the first and last int(max_length/2) tokens decoded separately and joined,
    exactly as LongBench's pred.py does."""
    ids = tokenizer.encode(prompt)
    n = len(ids)
    if n <= max_length:
        return prompt, n
    half = int(max_length / 2)
    head = tokenizer.decode(ids[:half])
    tail = tokenizer.decode(ids[-half:]) if half > 0 else ""
    return head + tail, n
