"""Scores, retention, answer recall and time per sample; markdown, CSV and PNG."""

import csv
import json
import os

from .client import MODES
from .metrics import score_pred_file
from .protocol import TASKS
from .runner import read_preds


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize_run(run_dir):
    """{"settings", "modes": {mode: {"tasks": {task: {...}}, "avg", "retention", "recall",
    "time_s", "n", "errors"}}} from the pred files under run_dir/<mode>/."""
    settings = {}
    sp = os.path.join(run_dir, "run.json")
    if os.path.exists(sp):
        with open(sp, encoding="utf-8") as f:
            settings = json.load(f)
    modes = {}
    present = [m for m in os.listdir(run_dir) if os.path.isdir(os.path.join(run_dir, m))]
    ordered = [m for m in MODES if m in present] + sorted(m for m in present if m not in MODES)
    for mode in ordered:
        tasks = {}
        all_rows = []
        for task in TASKS:
            path = os.path.join(run_dir, mode, task + ".jsonl")
            if not os.path.exists(path):
                continue
            rows = read_preds(path)
            if not rows:
                continue
            all_rows.extend(rows)
            hits = [r.get("evidence_hit") for r in rows if r.get("evidence_hit") is not None]
            tasks[task] = {
                "score": score_pred_file(task, rows),
                "n": len(rows),
                "recall": round(100 * sum(hits) / len(hits), 2) if hits else None,
                "time_s": round(_mean([r.get("time_s") for r in rows]), 4),
                "errors": sum(1 for r in rows if r.get("error")),
            }
        if not tasks:
            continue
        hits = [r.get("evidence_hit") for r in all_rows if r.get("evidence_hit") is not None]
        modes[mode] = {
            "tasks": tasks,
            "avg": round(_mean([t["score"] for t in tasks.values()]), 2),
            "recall": round(100 * sum(hits) / len(hits), 2) if hits else None,
            "time_s": round(_mean([r.get("time_s") for r in all_rows]), 4),
            "n": len(all_rows),
            "errors": sum(t["errors"] for t in tasks.values()),
        }
    full = modes.get("full")
    for mode, m in modes.items():
        m["retention"] = None
        for task, t in m["tasks"].items():
            base = full["tasks"].get(task) if full else None
            t["retention"] = (round(t["score"] / base["score"], 4)
                              if base and base["score"] > 0 else None)
        if full:
            common = [t for t in m["tasks"] if t in full["tasks"]]
            a = _mean([m["tasks"][t]["score"] for t in common])
            b = _mean([full["tasks"][t]["score"] for t in common])
            m["retention"] = round(a / b, 4) if common and b else None
    return {"settings": settings, "modes": modes}


def _fmt(x, pct=False):
    if x is None:
        return "n/a"
    if pct:
        return "%.0f%%" % (100 * x)
    return "%.2f" % x


def _tasks_of(summaries):
    seen = set()
    for s in summaries.values():
        for m in s["modes"].values():
            seen.update(m["tasks"])
    return [t for t in TASKS if t in seen]


def markdown(summaries):
    """One table: a row per (run, mode), a column per task, then avg, retention vs full,
    evidence answer-recall and seconds per sample."""
    tasks = _tasks_of(summaries)
    head = ["context", "mode"] + tasks + ["avg", "retention", "recall", "s/sample", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in summaries.items():
        for mode, m in s["modes"].items():
            cells = [label, mode]
            for t in tasks:
                cells.append(_fmt(m["tasks"][t]["score"]) if t in m["tasks"] else "")
            cells += [_fmt(m["avg"]), _fmt(m["retention"], pct=True),
                      "n/a" if m["recall"] is None else "%.1f%%" % m["recall"],
                      "%.2f" % m["time_s"], str(m["n"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["context", "mode", "task", "n", "score", "retention", "recall", "time_s",
              "errors"]


def csv_rows(summaries):
    for label, s in summaries.items():
        for mode, m in s["modes"].items():
            for task, t in m["tasks"].items():
                yield {"context": label, "mode": mode, "task": task, "n": t["n"],
                       "score": t["score"], "retention": t["retention"],
                       "recall": t["recall"], "time_s": t["time_s"], "errors": t["errors"]}
            yield {"context": label, "mode": mode, "task": "avg", "n": m["n"],
                   "score": m["avg"], "retention": m["retention"], "recall": m["recall"],
                   "time_s": m["time_s"], "errors": m["errors"]}


def write_csv(summaries, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for row in csv_rows(summaries):
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})


def write_png(summaries, path):
    """Grouped bars: average score per context, one bar per mode (per task when there is
    a single context)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = []
    for s in summaries.values():
        for m in s["modes"]:
            if m not in modes:
                modes.append(m)
    if len(summaries) == 1:
        (label, s), = summaries.items()
        groups = _tasks_of(summaries) + ["avg"]

        def value(mode, g):
            m = s["modes"].get(mode)
            if not m:
                return 0.0
            return m["avg"] if g == "avg" else m["tasks"].get(g, {}).get("score", 0.0)
        title = "LongBench score by task (%s)" % label
    else:
        groups = list(summaries)

        def value(mode, g):
            m = summaries[g]["modes"].get(mode)
            return m["avg"] if m else 0.0
        title = "LongBench average score by context length"
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(modes)) / 2.5), 4.5))
    width = 0.8 / max(1, len(modes))
    for k, mode in enumerate(modes):
        xs = [i + (k - (len(modes) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [value(mode, g) for g in groups], width, label=mode)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if len(groups) > 4 else 0, ha="right"
                       if len(groups) > 4 else "center")
    ax.set_ylabel("score (0-100)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(run_dirs, out_dir, labels=None, png=True):
    """Scores every run dir, writes scores.json into each, and results.md/.csv/.png into
    out_dir. Returns the summaries keyed by label."""
    summaries = {}
    for i, d in enumerate(run_dirs):
        label = labels[i] if labels else os.path.basename(os.path.normpath(d))
        s = summarize_run(d)
        with open(os.path.join(d, "scores.json"), "w", encoding="utf-8") as f:
            json.dump(s, f, indent=1)
            f.write("\n")
        summaries[label] = s
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown(summaries))
    write_csv(summaries, os.path.join(out_dir, "results.csv"))
    if png:
        write_png(summaries, os.path.join(out_dir, "results.png"))
    return summaries
