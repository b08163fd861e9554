#!/usr/bin/env python3
"""eval/needle_eval.py - evidence answer-recall of retrieval on the documents of
eval/needles.py: ingest every document with `s3serve ingest`, then for every question, mode
and budget run `s3serve retrieve` and count the questions whose gold answer appears in the
returned spans (case-insensitive substring).

Usage: eval/needle_eval.py [--dir eval/out/needles] [--db DIR/needles.db] [--ingest-extra OPTS]
                           [--modes s3,bm25,hybrid] [--budgets 512,1024,2048]
                           [--bin build/s3serve] [--sae FILE] [--json OUT]
Prints a table: recall per (set, length) row and (mode, budget) column, and the mean
retrieval latency. The database is reused: documents already ingested are not scanned again
(ids are kept next to the database, in DB.ids.json).
"""
import argparse
import collections
import json
import os
import subprocess
import sys


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("needle_eval: %s failed (%d): %s" % (" ".join(cmd[:3]), p.returncode,
                                                      p.stderr.strip()[-400:]))
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="eval/out/needles")
    ap.add_argument("--db", default=None)
    ap.add_argument("--modes", default="s3,bm25,hybrid")
    ap.add_argument("--budgets", default="512,1024,2048")
    ap.add_argument("--bin", default="build/s3serve")
    ap.add_argument("--sae", default=None)
    ap.add_argument("--extra", default="", help="extra retrieve options, space separated")
    ap.add_argument("--ingest-extra", default="",
                    help="extra ingest options, space separated (e.g. \"--index-k 4\")")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    db = a.db or os.path.join(a.dir, "needles.db")
    sae = ["--sae", a.sae] if a.sae else []
    qs = [json.loads(l) for l in open(os.path.join(a.dir, "questions.jsonl"), encoding="utf-8")]
    state_path = db + ".ids.json"
    ids = json.load(open(state_path)) if os.path.exists(state_path) else {}
    for name in sorted({q["doc"] for q in qs}):
        if name in ids:
            continue
        out = run([a.bin, "ingest", "--db", db, "--quiet"] + sae + a.ingest_extra.split() +
                  [os.path.join(a.dir, name)])
        ids[name] = out.split()[-1]
        json.dump(ids, open(state_path, "w"))
        print("ingested %s as %s" % (name, ids[name]), file=sys.stderr)

    modes = a.modes.split(",")
    budgets = [int(b) for b in a.budgets.split(",")]
    hits = collections.defaultdict(int)
    count = collections.defaultdict(int)
    ms = collections.defaultdict(list)
    extra = a.extra.split() if a.extra else []
    rows = []
    for q in qs:
        key = (q["set"], q["tokens"])
        count[key] += 1
        for m in modes:
            for b in budgets:
                out = run([a.bin, "retrieve", "--db", db, "--doc", ids[q["doc"]], "--mode", m,
                           "--budget", str(b)] + sae + extra + [q["question"]])
                r = json.loads(out)
                text = "\n".join(s["text"] for s in r["spans"]).lower()
                ok = q["answer"].lower() in text
                hits[key + (m, b)] += ok
                ms[m].append(r.get("retrieval_ms", 0.0))
                rows.append({"doc": q["doc"], "question": q["question"], "mode": m,
                             "budget": b, "hit": ok, "tokens": r["tokens"]})

    cols = [(m, b) for m in modes for b in budgets]
    print("evidence answer-recall (gold answer inside the returned spans)")
    print("%-8s %7s %3s  " % ("set", "tokens", "n") +
          " ".join("%11s" % ("%s@%d" % c) for c in cols))
    table = {}
    for key in sorted(count):
        vals = [hits[key + c] / count[key] for c in cols]
        table["%s-%d" % key] = dict(zip(["%s@%d" % c for c in cols], vals))
        print("%-8s %7d %3d  " % (key[0], key[1], count[key]) +
              " ".join("%11.3f" % v for v in vals))
    for m in modes:
        print("mean retrieval latency %s: %.1f ms" % (m, sum(ms[m]) / max(1, len(ms[m]))))
    if a.json:
        json.dump({"table": table, "rows": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
