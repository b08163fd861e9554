#!/usr/bin/env python3
"""Generate the llama.cpp reference fixtures (see tests/ref/README.md).

usage: python tests/ref/make_fixtures.py MODEL.gguf  (run from the repository root)

Writes tests/fixtures/tokenizer.json, greedy.json and logits.json. Needs llama-cpp-python
0.3.16, jinja2 and numpy. Deterministic: CPU, 2 threads, greedy argmax.
"""
import base64
import ctypes
import hashlib
import json
import os
import sys

import jinja2
import jinja2.sandbox
import llama_cpp
import numpy as np

PINNED = "0.3.16"
N_THREADS = 2
N_CTX = 2048
N_PREDICT = 64
TOP_K = 8
FIXTURES = "tests/fixtures"


def b64(b):
    return base64.b64encode(b).decode("ascii")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def tokenize(vocab, text, special):
    n_max = len(text) + 16
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, n_max, False, special)
    if n < 0:
        raise RuntimeError("tokenize failed: %d" % n)
    return list(buf[:n])


def detokenize(vocab, ids, unparse_special):
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    cap = 64 + 64 * len(ids)
    out = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), out, cap, False, unparse_special)
    if n < 0:
        raise RuntimeError("detokenize failed: %d" % n)
    return out.raw[:n]


# ---- tokenizer cases ------------------------------------------------------------------------

def tokenizer_cases():
    with open(os.path.join(FIXTURES, "pydoc_sample.txt"), "rb") as f:
        pydoc = f.read()
    code_py = (b"def fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
               b"    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
               b"    return a\n\nprint({k: v**2 for k, v in zip('abc', [1, 2, 3])})  # 1e-3\n")
    code_c = (b"static int f(const char *s, size_t n)\n{\n\tint rc = 0;\n\tif (n > 0x7f && s[0] != '\\0')"
              b" {\n\t\trc = -EINVAL; /* bad */\n\t}\n\treturn rc;\n}\n")
    cases = [
        ("pydoc_sample", pydoc, False),
        ("empty", b"", False),
        ("single_space", b" ", False),
        ("single_newline", b"\n", False),
        ("hello", b"Hello, world!", False),
        ("emoji", "I \u2764\ufe0f llamas \U0001F999\U0001F44D\U0001F3FD!".encode(), False),
        ("emoji_zwj", "family \U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 and "
                      "\U0001F3F3\ufe0f\u200d\U0001F308 ok".encode(), False),
        ("flags", "\U0001F1FA\U0001F1F8\U0001F1EF\U0001F1F5 \U0001F1E9\U0001F1EA!".encode(), False),
        ("cjk", "日本語のテキストです。中文文本，还有한국어 텍스트。".encode(), False),
        ("arabic", "مرحبا بالعالم! هذا نص عربي ١٢٣.".encode(), False),
        ("combining", "e\u0301te\u0301 n\u0303 a\u0300\u0301\u0302 Z\u0337\u0322a\u0334l\u0335g\u0336o"
                      .encode(), False),
        ("greek_cyrillic", "Αλφάβητο και кириллица: Ёжик в тумане.".encode(), False),
        ("unicode_spaces", "a\u00a0b\u2003c\u3000d\u2028e\u0085f\u202fg  \u00a0 h".encode(), False),
        ("invalid_cont", b"abc\x80def\xbf\xbf ghi", False),
        ("invalid_trunc", b"x\xc3 y\xe2\x82 z\xf0\x9f\x98", False),
        ("invalid_trunc_end", b"end\xe2\x82", False),
        ("invalid_overlong", b"o\xc0\x80v\xc1\xbf e\xe0\x80\xaf r", False),
        ("invalid_ff", b"\xff\xfe\xfd bytes \xf8\x88\x80\x80\x80", False),
        ("surrogate", b"s\xed\xa0\x80t \xed\xbf\xbf", False),
        ("spaces_run", b" " * 40 + b"x" + b" " * 17, False),
        ("tabs_newlines", b"\t\t\tindent\n\n\n\nblank\r\n\r\nwin\n \n  \n\t \t\nend", False),
        ("trailing_ws", b"trailing   \n\n", False),
        ("leading_ws", b"   \n leading", False),
        ("digits_long", b"1234567890123456789012345678901234567890", False),
        ("numbers_mixed", "3.14159 2024-01-01 1,000,000 x2 0xFF ٣٤٥ ①② ½".encode(), False),
        ("contractions", b"I'm here, you'll see; it's they've we'd I'd 'S 'LL 'VE DON'T can't", False),
        ("mixed_case", b"HeLLo WoRLD camelCaseIdentifier snake_case_name SCREAMING_CASE", False),
        ("code_python", code_py, False),
        ("code_c", code_c, False),
        ("punct_runs", b"!!! ??? ... --- *** ::: ;;; ((( ))) [[[]]] {{{}}} <<<>>> @@@ ###", False),
        ("url_email", b"https://docs.python.org/3/library/re.html?x=1&y=2#top a.b@c.org", False),
        ("apostrophes", "it\u2019s \u2018quoted\u2019 \"dq\" 's 't".encode(), False),
        ("im_start_plain", b"<|im_start|>user\nhi there<|im_end|>\n", False),
        ("im_start_special", b"<|im_start|>user\nhi there<|im_end|>\n", True),
        ("specials_adjacent", b"<|im_start|><|im_end|><|endoftext|>x<|im_end|>", True),
        ("special_partial", b"<|im_start <|im_end| <|endoftext|>tail", True),
        ("special_in_text", b"text <jupyter_code>print(1)<jupyter_output> 1", True),
        ("special_off_endoftext", b"a<|endoftext|>b", False),
        ("chatml_full", b"<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n"
                        b"What is 2+2?<|im_end|>\n<|im_start|>assistant\n", True),
        ("special_with_unicode", "<|im_start|>user\n\u00e9t\u00e9 \U0001F600<|im_end|>".encode(), True),
        ("new_unicode", "\U0001FAE8 \U00031350\U00031351 \U0001E030".encode(), False),
        ("nul_byte", b"a\x00b \x00", False),
        ("controls", b"\x01\x02\x1b[31mred\x1b[0m\x7f", False),
    ]
    return cases


# ---- greedy / logits ----------------------------------------------------------------------------

RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
    "The quick brown fox",
    "1, 2, 3, 4, 5,",
    "Python is a programming language that",
    "Q: What is the boiling point of water?\nA:",
    "import numpy as np\n\nx = np.",
    "The three primary colors are",
    "In 1969, the first humans",
    "Dear Sir or Madam,\n\nI am writing to",
    "A list of fruits:\n- apple\n- banana\n-",
    "SELECT name, age FROM users WHERE",
    "The theory of relativity states that",
    "Le chat est sur",
    "<html>\n<head>\n<title>",
    "To make a cup of tea, first",
    "The mitochondria is the",
    "Here is a haiku about the sea:\n",
    "Translate to German: Good morning! ->",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant. Answer in one word."},
     {"role": "user", "content": "What color is the sky on a clear day?"}],
    [{"role": "user", "content": "Write a Python function that adds two numbers."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me a fun fact about octopuses."}],
    [{"role": "system", "content": "You summarise text."},
     {"role": "user", "content": "Summarise: The cat sat on the mat. It was warm. The cat slept."}],
    [{"role": "user", "content": "Translate 'thank you' into Spanish, French and German."}],
]


def render_chat(template, messages, add_gen):
    # as transformers' apply_chat_template renders it
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_gen)


def argmax(row):
    return int(np.argmax(row))  # first index on ties


def greedy(llm, vocab, prompt_ids, eog):
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(N_PREDICT):
        tok = argmax(llm.scores[llm.n_tokens - 1])
        out.append(tok)
        llm.eval([tok])
    first = next((i for i, t in enumerate(out) if t in eog), -1)
    text = detokenize(vocab, out if first < 0 else out[:first], False)
    return out, first, text


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_fixtures.py MODEL.gguf")
    model_path = sys.argv[1]
    if llama_cpp.__version__ != PINNED:
        sys.exit("llama-cpp-python %s required, found %s" % (PINNED, llama_cpp.__version__))
    header = {
        "generator": "tests/ref/make_fixtures.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(model_path),
        "model_sha256": sha256_file(model_path),
    }
    # llama.cpp's plain CPU path: no extra buffer types (on CPUs with AMX, llama.cpp 0.3.16
    # would route Q4_1 matrices of 32 or more tokens through its AMX kernels, whose logits are
    # far off: max |diff| 4-26 against a float64 reference). The plain path gives the same
    # logits for a token whatever the batch, and is the one s3serve's CPU backend reproduces
    # bit for bit. A prompt is one ubatch; each generated token is a ubatch of its own.
    default_params = llama_cpp.llama_cpp.llama_model_default_params

    def plain_params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    llama_cpp.llama_cpp.llama_model_default_params = plain_params
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX,
                          n_threads=N_THREADS, n_threads_batch=N_THREADS, logits_all=True,
                          verbose=False)
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()
    eog = {t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    # tokenizer.json
    cases = []
    for name, text, special in tokenizer_cases():
        ids = tokenize(vocab, text, special)
        cases.append({
            "name": name, "text_b64": b64(text), "special": special, "ids": ids,
            "decoded_b64": b64(detokenize(vocab, ids, False)),
            "decoded_special_b64": b64(detokenize(vocab, ids, True)),
        })
    tok = dict(header)
    tok["bos"] = llama_cpp.llama_vocab_bos(vocab)
    tok["eos"] = llama_cpp.llama_vocab_eos(vocab)
    tok["eog_ids"] = sorted(eog)
    tok["add_bos"] = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    tok["cases"] = cases
    write("tokenizer.json", tok)

    # greedy.json
    template = llm.metadata["tokenizer.chat_template"]
    gcases = []
    for i, p in enumerate(RAW_PROMPTS):
        text = p.encode()
        ids = tokenize(vocab, text, False)
        out, first, ctext = greedy(llm, vocab, ids, eog)
        gcases.append({"name": "raw_%02d" % i, "kind": "raw", "text": p, "prompt_ids": ids,
                       "completion_ids": out, "first_eog": first,
                       "completion_text_b64": b64(ctext)})
    for i, msgs in enumerate(CHATS):
        text = render_chat(template, msgs, True)
        ids = tokenize(vocab, text.encode(), True)
        out, first, ctext = greedy(llm, vocab, ids, eog)
        gcases.append({"name": "chat_%02d" % i, "kind": "chat", "messages": msgs, "text": text,
                       "prompt_ids": ids, "completion_ids": out, "first_eog": first,
                       "completion_text_b64": b64(ctext)})
    gr = dict(header)
    gr.update({"n_threads": N_THREADS, "n_ctx": N_CTX, "n_predict": N_PREDICT,
               "chat_template": template, "cases": gcases})
    write("greedy.json", gr)

    # logits.json
    with open(os.path.join(FIXTURES, "pydoc_sample.txt"), "rb") as f:
        pydoc = f.read()
    pyd_ids = tokenize(vocab, pydoc, False)
    seqs = [
        ("pydoc_a", pyd_ids[0:160]),
        ("pydoc_b", pyd_ids[5000:5128]),
        ("chat", tokenize(vocab, render_chat(template, CHATS[3], True).encode(), True)),
        ("short", tokenize(vocab, b"The capital of France is Paris.", False)),
    ]
    fixed = [0, 1, 2, 13, 198, 260, 1000, 49151]
    lseqs = []
    for name, ids in seqs:
        llm.reset()
        llm.eval(ids)
        rows = np.asarray(llm.scores[:len(ids)], dtype=np.float64)
        top1, top_ids, top_logits, fixed_logits = [], [], [], []
        for r in rows:
            order = np.argsort(-r, kind="stable")[:TOP_K]
            top1.append(argmax(r))
            top_ids.append([int(x) for x in order])
            top_logits.append([round(float(r[x]), 5) for x in order])
            fixed_logits.append([round(float(r[x]), 5) for x in fixed])
        lseqs.append({"name": name, "ids": ids, "top1": top1, "top_ids": top_ids,
                      "top_logits": top_logits, "fixed_logits": fixed_logits})
    lg = dict(header)
    lg.update({"n_threads": N_THREADS, "top_k": TOP_K, "fixed_ids": fixed, "sequences": lseqs})
    write("logits.json", lg)


def write(name, obj):
    path = os.path.join(FIXTURES, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("%s: %d bytes" % (path, os.path.getsize(path)))


if __name__ == "__main__":
    main()
