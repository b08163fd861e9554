"""Deterministic filler prose with one planted fact, for the document and long-prompt tests.

    python3 gen_text.py N_WORDS [--fact-at 0.4] [--seed 1] > text.txt

Prints about N_WORDS words in paragraphs; the sentence FACT (below) is planted once, at the
given fraction of the text. Importable: make_text(n_words, fact_at, seed).
"""
import random
import sys

FACT = "The secret launch code of the Aurora project is PELICAN-4471."
QUESTION = "What is the secret launch code of the Aurora project?"

_SUBJECTS = ["The river", "A quiet village", "The old library", "Every merchant", "The committee",
             "A young engineer", "The northern road", "The orchard", "Our neighbour", "The harbour"]
_VERBS = ["carried", "described", "remembered", "measured", "painted", "repaired", "visited",
          "collected", "announced", "ignored"]
_OBJECTS = ["the morning fog", "a list of old maps", "three wooden boats", "the spring harvest",
            "a forgotten song", "the price of bread", "the winter storms", "a box of letters",
            "the long bridge", "the market square"]
_TAILS = ["before the sun went down.", "while the bells were ringing.", "after a long debate.",
          "without saying a word.", "as the tide came in.", "for the third time that year.",
          "with great care.", "in the late afternoon.", "despite the rain.", "near the mill."]


def make_text(n_words, fact_at=0.4, seed=1):
    rng = random.Random(seed)
    paras, words, para = [], 0, []
    planted = False
    while words < n_words:
        if not planted and words >= n_words * fact_at:
            para.append(FACT)
            planted = True
        s = "%s %s %s %s" % (rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS),
                              rng.choice(_TAILS))
        para.append(s)
        words += len(s.split())
        if len(para) >= rng.randint(4, 8):
            paras.append(" ".join(para))
            para = []
    if para:
        paras.append(" ".join(para))
    if not planted:
        paras.append(FACT)
    return "\n\n".join(paras) + "\n"


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(args[0])
    fact_at = float(args[args.index("--fact-at") + 1]) if "--fact-at" in args else 0.4
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 1
    sys.stdout.write(make_text(n, fact_at, seed))
