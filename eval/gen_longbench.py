#!/usr/bin/env python3
"""Writes LongBench-format synthetic task files with planted facts in real filler text.

The filler is prose from the Python documentation sources that Debian's python3.11-doc
package installs (reStructuredText under /usr/share/doc/python3.11/html/_sources); the
facts are about invented people, places and things, so a model can only answer from the
context. Files carry LongBench's fields (input, context, answers, length, dataset,
language, all_classes, _id) and LongBench's dataset names, so the harness runs them with
the official templates and metrics:

  passage_retrieval_en  30 paragraphs "Paragraph i: ..."; the abstract restates a fact
                        planted in one of them; answer "Paragraph k"
  passage_count         paragraphs, some repeated; answer the number of unique ones
  multifieldqa_en       one document with a planted fact and two look-alike distractors
  hotpotqa              "Passage i:" documents; a two-hop question over two planted facts

Usage: gen_longbench.py --out DIR --tokens 4096 [--n 20] [--seed 0] [--tasks a,b]
--tokens is the approximate prompt length in model tokens (words x TOKENS_PER_WORD).
"""

import argparse
import glob
import json
import os
import random
import re
import sys

DEFAULT_FILLER_DIR = "/usr/share/doc/python3.11/html/_sources"
TASKS = ("passage_retrieval_en", "passage_count", "multifieldqa_en", "hotpotqa")
# Tokens per whitespace word of this filler under a GPT-2-style BPE (measured on the
# SmolLM2 tokenizer: 1.33 on 800 paragraphs of the cleaned documentation prose).
TOKENS_PER_WORD = 1.33

_UNDERLINE = re.compile(r"^([=\-~^*#+'\"`.])\1{2,}\s*$")
_ROLE_TARGET = re.compile(r":[\w:.-]+:`([^`<]*?)\s*<[^`>]*>`")
_ROLE = re.compile(r":[\w:.-]+:`!?~?([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?")
_REF = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``([^`]*)``")
_BACKTICK = re.compile(r"`([^`]*)`")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EMPH = re.compile(r"\*([^*\s][^*]*)\*")
_SUBST = re.compile(r"\|[^|\s][^|]*\|_?")


def clean_markup(text):
    text = _ROLE_TARGET.sub(r"\1", text)

    def role(m):
        s = m.group(1)
        return s.rsplit(".", 1)[-1] if m.group(0).find("`~") >= 0 else s
    text = _ROLE.sub(role, text)
    text = _LINK.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _REF.sub(r"\1", text)
    text = _BACKTICK.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    text = _SUBST.sub("", text)
    text = text.replace("::", ":").replace("\\", "")
    return " ".join(text.split())


def _prose_block(lines):
    first = lines[0]
    if first[:1].isspace() or first.startswith(("..", ":", "*", "-", "+", "|", "=", "#",
                                                ">>>", "$", "%", "(", "[", "{", "<")):
        return False
    if any(_UNDERLINE.match(ln) for ln in lines):
        return False
    if any(ln[:1].isspace() for ln in lines[1:]):
        return False
    return True


def load_filler(filler_dir=DEFAULT_FILLER_DIR, min_words=25):
    """Prose paragraphs [(title, text)] from the reST sources, in a fixed order."""
    files = sorted(glob.glob(os.path.join(filler_dir, "**", "*.rst.txt"), recursive=True))
    if not files:
        raise SystemExit("no filler text under %s (install Debian's python3.11-doc, or pass "
                         "--filler-dir)" % filler_dir)
    seen = set()
    out = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read().split("\n")
        title = None
        for i in range(len(raw) - 1):
            if raw[i].strip() and _UNDERLINE.match(raw[i + 1]) and not _UNDERLINE.match(raw[i]):
                title = clean_markup(raw[i])
                break
        if not title:
            title = os.path.basename(path).split(".")[0]
        block = []
        for ln in raw + [""]:
            if ln.strip():
                block.append(ln.rstrip())
                continue
            if block and _prose_block(block):
                text = clean_markup(" ".join(block))
                if (len(text.split()) >= min_words and text.endswith(".")
                        and text not in seen and "`" not in text):
                    seen.add(text)
                    out.append((title, text))
            block = []
    return out


# ---- invented entities ------------------------------------------------------------------

_SYL = ["ka", "lo", "mi", "ren", "tor", "vel", "zan", "qui", "dor", "sha", "bri", "nek",
        "fal", "gru", "hol", "is", "mor", "pel", "thu", "wyn", "ost", "ari", "bel", "cor",
        "dra", "eth", "gal", "jor", "lum", "nav"]
_CITY_END = ["wick", "ford", "holm", "mere", "by", "stad", "haven", "port", "dale", "burg"]
_OBJECTS = ["brass compass", "leather ledger", "walnut telescope", "silver key",
            "clockwork bird", "copper kettle", "painted globe", "glass hourglass",
            "iron lantern", "ivory chess set", "woollen tapestry", "bronze bell"]
_ORG_ADJ = ["Amber", "Northern", "Quiet", "Crimson", "Lantern", "Harbour", "Granite",
            "Willow", "Silver", "Eastern"]
_ORG_NOUN = ["Cartographers' Guild", "Society of Bellfounders", "Weavers' Institute",
             "Academy of Tides", "League of Clockmakers", "Circle of Archivists"]


def _word(rng, n):
    return "".join(rng.choice(_SYL) for _ in range(n)).capitalize()


def person(rng):
    return "%s %s" % (_word(rng, 2), _word(rng, rng.choice((2, 3))))


def city(rng):
    return _word(rng, 2) + rng.choice(_CITY_END)


def org(rng):
    return "%s %s" % (rng.choice(_ORG_ADJ), rng.choice(_ORG_NOUN))


def _distinct(rng, fn, k):
    out = []
    while len(out) < k:
        v = fn(rng)
        if v not in out:
            out.append(v)
    return out


def single_fact(rng):
    """(fact sentence, question, answer, distractor sentences)."""
    kind = rng.randrange(3)
    people = _distinct(rng, person, 3)
    if kind == 0:
        obj = rng.choice(_OBJECTS)
        cities = _distinct(rng, city, 3)
        facts = ["%s keeps the %s in a house in %s." % (p, obj, c)
                 for p, c in zip(people, cities)]
        return (facts[0], "In which city does %s keep the %s?" % (people[0], obj), cities[0],
                facts[1:])
    if kind == 1:
        obj = rng.choice(_OBJECTS)
        years = rng.sample(range(1702, 1949), 3)
        facts = ["The %s that belongs to %s was made in the year %d." % (obj, p, y)
                 for p, y in zip(people, years)]
        return (facts[0], "In which year was the %s that belongs to %s made?" % (obj, people[0]),
                str(years[0]), facts[1:])
    cities = _distinct(rng, city, 3)
    codes = rng.sample(range(1000, 9999), 3)
    facts = ["The access code of the %s archive is %d." % (c, n) for c, n in zip(cities, codes)]
    return (facts[0], "What is the access code of the %s archive?" % cities[0], str(codes[0]),
            facts[1:])


# ---- filler assembly --------------------------------------------------------------------

class Filler:
    def __init__(self, paras, rng):
        self.paras = paras
        self.rng = rng
        self.order = list(range(len(paras)))
        rng.shuffle(self.order)
        self.pos = 0

    def take(self, n_words):
        """[(title, text)] of n_words words (the last paragraph cut short), no paragraph
        repeated before the pool is exhausted."""
        out, got = [], 0
        while got < n_words:
            if self.pos >= len(self.order):
                self.rng.shuffle(self.order)
                self.pos = 0
            title, text = self.paras[self.order[self.pos]]
            self.pos += 1
            w = text.split()
            if got + len(w) > n_words:  # cut the last paragraph to land on n_words
                text = " ".join(w[:n_words - got])
                w = w[:n_words - got]
            out.append((title, text))
            got += len(w)
        return out


def _insert_sentence(text, sentence, rng):
    """Put sentence between two sentences of text (at a random boundary)."""
    parts = re.split(r"(?<=\.)\s+", text)
    k = rng.randrange(len(parts) + 1)
    return " ".join(parts[:k] + [sentence] + parts[k:])


def _words(*texts):
    return sum(len(t.split()) for t in texts)


def _item(task, i, tokens, seed, inp, context, answers):
    return {
        "input": inp,
        "context": context,
        "answers": answers,
        "length": _words(inp, context, *answers),
        "dataset": task,
        "language": "en",
        "all_classes": None,
        "_id": "syn-%s-%d-%d-%04d" % (task, tokens, seed, i),
    }


def gen_passage_retrieval(rng, filler, words, task_i, tokens, seed):
    per = max(8, words // 30)
    paras = [" ".join(t for _, t in filler.take(per)) for _ in range(30)]
    k = rng.randrange(30)
    p, obj, c, y = person(rng), rng.choice(_OBJECTS), city(rng), rng.randrange(1702, 1949)
    paras[k] = _insert_sentence(paras[k], "In %d, %s moved the %s to %s." % (y, p, obj, c), rng)
    context = "\n\n".join("Paragraph %d: %s" % (j + 1, t) for j, t in enumerate(paras))
    abstract = ("This paragraph notes that %s relocated the %s to the town of %s in the year %d."
                % (p, obj, c, y))
    return _item("passage_retrieval_en", task_i, tokens, seed, abstract, context,
                 ["Paragraph %d" % (k + 1)])


def gen_passage_count(rng, filler, words, task_i, tokens, seed):
    unique = rng.randint(3, 12)
    total = unique + rng.randint(1, unique)
    per = max(8, words // total)
    base = [" ".join(t for _, t in filler.take(per)) for _ in range(unique)]
    seq = list(range(unique)) + [rng.randrange(unique) for _ in range(total - unique)]
    rng.shuffle(seq)
    context = "\n\n".join("Paragraph %d: %s" % (j + 1, base[s]) for j, s in enumerate(seq))
    return _item("passage_count", task_i, tokens, seed, "", context, [str(unique)])


def gen_single_doc(rng, filler, words, task_i, tokens, seed):
    fact, question, answer, distractors = single_fact(rng)
    paras = [t for _, t in filler.take(words)]
    for s in [fact] + distractors:
        j = rng.randrange(len(paras))
        paras[j] = _insert_sentence(paras[j], s, rng)
    return _item("multifieldqa_en", task_i, tokens, seed, question, "\n\n".join(paras), [answer])


def gen_multi_doc(rng, filler, words, task_i, tokens, seed):
    n_pass = max(4, min(20, words // 400))
    per = max(8, words // n_pass)
    passages = []
    for _ in range(n_pass):
        chunk = filler.take(per)
        passages.append([chunk[0][0], " ".join(t for _, t in chunk)])
    p1, p2 = _distinct(rng, person, 2)
    o1, o2 = _distinct(rng, org, 2)
    c1, c2 = _distinct(rng, city, 2)
    facts = ["%s is a member of the %s." % (p1, o1), "The %s has its headquarters in %s." % (o1, c1),
             "%s is a member of the %s." % (p2, o2), "The %s has its headquarters in %s." % (o2, c2)]
    slots = rng.sample(range(n_pass), 2) + [rng.randrange(n_pass) for _ in range(2)]
    for s, j in zip(facts, slots):
        passages[j][1] = _insert_sentence(passages[j][1], s, rng)
    context = "\n".join("Passage %d:\n%s\n%s" % (j + 1, t, x) for j, (t, x) in enumerate(passages))
    q = "In which city are the headquarters of the organisation that %s is a member of?" % p1
    return _item("hotpotqa", task_i, tokens, seed, q, context, [c1])


GENERATORS = {
    "passage_retrieval_en": gen_passage_retrieval,
    "passage_count": gen_passage_count,
    "multifieldqa_en": gen_single_doc,
    "hotpotqa": gen_multi_doc,
}


def generate(out_dir, tokens, n, seed=0, tasks=TASKS, filler_dir=DEFAULT_FILLER_DIR,
             paras=None):
    """Writes <out_dir>/<task>.jsonl for each task; returns {task: path}."""
    paras = paras if paras is not None else load_filler(filler_dir)
    words = max(50, int(tokens / TOKENS_PER_WORD) - 200)  # leave room for the template
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for ti, task in enumerate(tasks):
        if task not in GENERATORS:
            raise SystemExit("unknown task %r (synthetic tasks: %s)" % (task, ", ".join(TASKS)))
        rng = random.Random("%d/%s/%d" % (seed, task, tokens))
        filler = Filler(paras, random.Random("%d/%s/%d/filler" % (seed, task, tokens)))
        path = os.path.join(out_dir, task + ".jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for i in range(n):
                item = GENERATORS[task](rng, filler, words, i, tokens, seed)
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        paths[task] = path
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tokens", type=int, default=4096, help="approximate prompt tokens")
    p.add_argument("--n", type=int, default=20, help="samples per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--filler-dir", default=DEFAULT_FILLER_DIR)
    a = p.parse_args(argv)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    paths = generate(a.out, a.tokens, a.n, a.seed, tasks, a.filler_dir)
    for t, path in paths.items():
        print("%s: %d samples, ~%d tokens -> %s" % (t, a.n, a.tokens, path), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
