#!/usr/bin/env python3
"""eval/needles.py - long synthetic documents with planted facts ("needles") for measuring
evidence answer-recall of retrieval.

Filler: real prose, the held-out part of the Python 3.11 documentation corpus that
eval/sae_corpus.sh assembles from Debian's python3.11-doc (models/sae-corpus/heldout.txt;
the SAEs are trained on the other part, train.txt). A document of N tokens is a window of
that text, starting at a seeded offset and wrapping around, cut at paragraph boundaries;
needles are inserted between paragraphs at seeded depths.

Sets:
  single  one needle; the question shares the fact's key words
  multi   four needles of the same shape about different subjects (distractors for each
          other); one question per needle
  para    one needle; the question is a paraphrase sharing few content words with the fact

Output (OUT_DIR): <set>-<tokens>-<i>.txt documents and questions.jsonl, one line per question:
  {"doc": file name, "set", "tokens" (target), "question", "answer", "depth" (0..1)}

Usage: eval/needles.py [--out DIR] [--lengths 4096,32768] [--docs 8] [--seed 1]
                       [--filler FILE]
Deterministic for a seed and a filler file. Token counts are estimated at 4.0 bytes a token
(the default model's rate on this text); ingest reports the exact count.
"""
import argparse
import json
import os
import random
import sys

BYTES_PER_TOKEN = 4.0

FIRST = ["Marguerite", "Tobias", "Ingrid", "Rafael", "Yusuf", "Elena", "Kasimir", "Priya",
         "Oswin", "Lucia", "Dmitri", "Hana", "Bartholomew", "Signe", "Amadou", "Noor"]
LAST = ["Vasquez", "Lindqvist", "Okafor", "Brennan", "Takahashi", "Moreau", "Castellanos",
        "Haddad", "Petrov", "Nakamura", "Abernathy", "Quist", "Fairweather", "Oyelaran"]
PLACES = ["Aurora archive", "Kestrel observatory", "Bellwether library", "Obsidian vault",
          "Marigold greenhouse", "Tamarind depot", "Harrow lighthouse", "Cobalt foundry",
          "Juniper station", "Sable monastery", "Wren harbour office", "Quartz mill"]
WORDS = ["crimson", "falcon", "velvet", "harbor", "cedar", "lantern", "ember", "glacier",
         "thistle", "orchid", "copper", "meadow", "raven", "saffron", "tundra", "willow"]
# paraphrase pairs: (fact template, question template, answer choices)
PARA = [
    ("The keeper of the {place} brewed his tea only with water melted from {ans}.",
     "What did the person who looks after that building use to make a hot drink?",
     ["glacier ice", "spring snow", "hailstones"]),
    ("{name} paid for the old piano by trading away {ans}.",
     "What was given up in exchange for the musical instrument?",
     ["a silver pocket watch", "three oil paintings", "a racing bicycle"]),
    ("Every winter {name} migrates south to spend the cold months in {ans}.",
     "Where does that individual go when the weather turns freezing?",
     ["Valparaiso", "Marrakesh", "Hobart", "Cartagena"]),
    ("The recipe that {name} guards so jealously calls for a pinch of {ans}.",
     "Which secret ingredient goes into the closely protected dish?",
     ["smoked paprika", "dried lavender", "black cardamom"]),
    ("After the flood, the staff of the {place} rescued the records by carrying them up to the {ans}.",
     "Where were the documents taken to keep them safe from rising water?",
     ["bell tower", "hayloft", "clock room"]),
    ("{name} learned to sail from a retired fisherman who lived in {ans}.",
     "Who taught the boating lessons, and where was the teacher's home?",
     ["Tromso", "Galway", "Dunedin"]),
]


def load_paragraphs(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    paras = [p.strip() for p in text.split("\n\n")]
    return [p for p in paras if len(p) > 40]


def code(rng):
    return "%s-%s-%d" % (rng.choice(WORDS), rng.choice(WORDS), rng.randint(10, 99))


def needle_single(rng, used):
    place = rng.choice([p for p in PLACES if p not in used] or PLACES)
    used.add(place)
    ans = code(rng)
    fact = "The secret passphrase of the %s is %s." % (place, ans)
    q = "What is the secret passphrase of the %s?" % place
    return fact, q, ans


def needle_multi(rng, used):
    place = rng.choice([p for p in PLACES if p not in used] or PLACES)
    used.add(place)
    ans = str(rng.randint(1000, 9999))
    fact = "The access code of the %s is %s." % (place, ans)
    q = "What is the access code of the %s?" % place
    return fact, q, ans


def needle_para(rng, used):
    fact_t, q_t, answers = rng.choice(PARA)
    name = "%s %s" % (rng.choice(FIRST), rng.choice(LAST))
    place = rng.choice(PLACES)
    ans = rng.choice(answers)
    return fact_t.format(name=name, place=place, ans=ans), q_t, ans


def make_doc(rng, paras, n_tokens, needles):
    """Paragraphs from a random start until n_tokens, needles inserted at given depths."""
    target = int(n_tokens * BYTES_PER_TOKEN)
    start = rng.randrange(len(paras))
    body, size, i = [], 0, start
    while size < target:
        p = paras[i % len(paras)]
        body.append(p)
        size += len(p) + 2
        i += 1
    out = list(body)
    # insert deepest first so earlier indices stay valid
    for depth, fact in sorted(needles, reverse=True):
        at = max(1, min(len(out) - 1, int(round(depth * len(out)))))
        out.insert(at, fact)
    return "\n\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="eval/out/needles")
    ap.add_argument("--lengths", default="4096,32768")
    ap.add_argument("--docs", type=int, default=8, help="documents per set and length")
    ap.add_argument("--sets", default="single,multi,para")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--filler", default=os.path.join(os.path.dirname(__file__), "..", "models",
                                                     "sae-corpus", "heldout.txt"))
    a = ap.parse_args()
    if not os.path.exists(a.filler):
        sys.exit("needles: %s not found (run eval/sae_corpus.sh)" % a.filler)
    paras = load_paragraphs(a.filler)
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)
    lines = []
    for n_tok in [int(x) for x in a.lengths.split(",")]:
        for s in a.sets.split(","):
            for i in range(a.docs):
                used = set()
                if s == "single":
                    items = [needle_single(rng, used)]
                elif s == "multi":
                    items = [needle_multi(rng, used) for _ in range(4)]
                elif s == "para":
                    items = [needle_para(rng, used)]
                else:
                    sys.exit("needles: unknown set %s" % s)
                depths = [rng.uniform(0.05, 0.95) for _ in items]
                doc = make_doc(rng, paras, n_tok, [(d, it[0]) for d, it in zip(depths, items)])
                name = "%s-%d-%d.txt" % (s, n_tok, i)
                with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
                    f.write(doc)
                for d, (fact, q, ans) in zip(depths, items):
                    lines.append({"doc": name, "set": s, "tokens": n_tok, "question": q,
                                  "answer": ans, "fact": fact, "depth": round(d, 3)})
    with open(os.path.join(a.out, "questions.jsonl"), "w", encoding="utf-8") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")
    print("needles: %d questions over %d documents in %s" %
          (len(lines), len({l["doc"] for l in lines}), a.out))


if __name__ == "__main__":
    main()
