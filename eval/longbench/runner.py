"""The run loop: one pred file per (mode, task), appended one line per sample and flushed,
so an interrupted run resumes where it stopped (samples already in the file are skipped)."""

import json
import os
import sys
import time

from . import __version__
from .client import MODES, ConnectError, ServerError, build_request, response_text
from .metrics import FUZZ_BACKEND, answer_in_text
from .protocol import RECALL_TASKS, TASKS, build_prompt, check_task
from .truncate import middle_truncate

# Settings that change the meaning of the predictions: a resumed run must match them.
PINNED_SETTINGS = ("max_length", "budget", "tokenizer")


def load_items(data_dir, task):
    """Items of <data_dir>/<task>.jsonl (LongBench's data/ layout)."""
    path = os.path.join(data_dir, task + ".jsonl")
    items = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError as e:
                raise ValueError("%s:%d: %s" % (path, lineno, e)) from e
    return items


def tasks_in(data_dir):
    """The known tasks that have a file in data_dir, in LongBench's order."""
    return [t for t in TASKS if os.path.exists(os.path.join(data_dir, t + ".jsonl"))]


def item_key(item, index):
    k = item.get("_id")
    return str(k) if k is not None else "#%d" % index


def read_preds(path, drop_errors=False):
    """Rows of a pred file. A partly written last line (the run was killed mid-write) is
    cut off; with drop_errors, rows that recorded a server error are removed so they run
    again. The file is rewritten when either happens."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    rewrite = False
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
        rewrite = True
    rows = []
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            rewrite = True
            continue
        if drop_errors and row.get("error"):
            rewrite = True
            continue
        rows.append(row)
    if rewrite:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    return rows


class Progress:
    def __init__(self, stream=None, every_s=2.0):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = every_s
        self.last = 0.0

    def update(self, mode, task, done, total, mean_s, force=False):
        now = time.monotonic()
        if not force and not self.tty and now - self.last < self.every_s:
            return
        self.last = now
        eta = (total - done) * mean_s
        line = "[%s] %s %d/%d  %.2f s/sample  eta %dm%02ds" % (
            mode, task, done, total, mean_s, int(eta) // 60, int(eta) % 60)
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if force else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run_sample(client, task, item, mode, settings, tokenizer):
    """One request; returns the pred-file row (LongBench's four fields first)."""
    prompt = build_prompt(task, item)
    n_tokens = None
    tok_s = None
    if mode == "full":
        t0 = time.monotonic()
        prompt, n_tokens = middle_truncate(prompt, tokenizer, settings["max_length"])
        tok_s = time.monotonic() - t0
    path, body = build_request(task, prompt, mode, settings["budget"], settings.get("model"))
    error = None
    t0 = time.monotonic()
    try:
        resp = client.complete(path, body)
        pred = response_text(resp)
    except ServerError as e:
        resp, pred, error = {}, "", str(e)
    elapsed = time.monotonic() - t0

    answers = item.get("answers") or []
    evidence = resp.get("evidence")
    hit = None
    if task in RECALL_TASKS and not error:
        if isinstance(evidence, list):
            text = "\n".join(str(e.get("text") or "") for e in evidence if isinstance(e, dict))
            hit = answer_in_text(answers, text)
        elif mode == "full":
            hit = answer_in_text(answers, prompt)  # what the model saw
    row = {
        "pred": pred,
        "answers": answers,
        "all_classes": item.get("all_classes"),
        "length": item.get("length"),
        "_id": None,
        "mode": mode,
        "time_s": round(elapsed, 4),
        "prompt_tokens": n_tokens,
        "evidence_hit": hit,
        "n_evidence": len(evidence) if isinstance(evidence, list) else None,
    }
    if tok_s is not None:
        row["tokenize_s"] = round(tok_s, 4)
    if isinstance(resp.get("s3"), dict):
        row["s3"] = resp["s3"]
    if isinstance(resp.get("usage"), dict):
        row["usage"] = resp["usage"]
    if error:
        row["error"] = error
    return row


def check_settings(out_dir, settings, force=False):
    """Record the run's settings; refuse to resume with different pinned settings."""
    path = os.path.join(out_dir, "run.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        diff = [k for k in PINNED_SETTINGS if old.get(k) != settings.get(k)]
        if diff and not force:
            raise SystemExit("%s was made with other settings (%s: %s vs %s); use another "
                             "--out or --force" % (path, ", ".join(diff),
                                                   [old.get(k) for k in diff],
                                                   [settings.get(k) for k in diff]))
        merged = dict(old)
        merged.update(settings)
        merged["modes"] = sorted(set(old.get("modes", [])) | set(settings.get("modes", [])),
                                 key=_mode_order)
        merged["tasks"] = [t for t in TASKS
                           if t in set(old.get("tasks", [])) | set(settings.get("tasks", []))]
        settings = merged
    settings = dict(settings)
    settings["harness_version"] = __version__
    settings["fuzz_backend"] = FUZZ_BACKEND
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1, sort_keys=True)
        f.write("\n")
    return settings


def _mode_order(m):
    return MODES.index(m) if m in MODES else len(MODES)


def run(client, data_dir, out_dir, modes, tasks, settings, tokenizer_factory, limit=None,
        retry_errors=False, progress=None):
    """Runs every (mode, task); returns the number of requests sent. Each sample goes through
    all modes before the next one, so the server's long-prompt cache scans its context once
    for all retrieval modes."""
    for m in modes:
        if m not in MODES:
            raise ValueError("unknown mode %r (modes: %s)" % (m, ", ".join(MODES)))
    for t in tasks:
        check_task(t)
    progress = progress or Progress()
    tokenizer = None
    sent = 0
    for task in tasks:
        items = load_items(data_dir, task)
        if limit is not None:
            items = items[:limit]
        total = len(items)
        done, files, n_done, spent, n_run = {}, {}, {}, {}, {}
        try:
            for mode in modes:
                mdir = os.path.join(out_dir, mode)
                os.makedirs(mdir, exist_ok=True)
                path = os.path.join(mdir, task + ".jsonl")
                rows = read_preds(path, drop_errors=retry_errors)
                done[mode] = {r.get("_id") for r in rows}
                n_done[mode] = sum(1 for i, it in enumerate(items)
                                   if item_key(it, i) in done[mode])
                spent[mode], n_run[mode] = 0.0, 0
                if n_done[mode] == total:
                    progress.update(mode, task, total, total, 0.0, force=True)
                    continue
                files[mode] = open(path, "a", encoding="utf-8")
            for i, item in enumerate(items):
                key = item_key(item, i)
                for mode in modes:
                    if mode not in files or key in done[mode]:
                        continue
                    if mode == "full" and tokenizer is None:
                        tokenizer = tokenizer_factory()
                    t0 = time.monotonic()
                    try:
                        row = run_sample(client, task, item, mode, settings, tokenizer)
                    except ConnectError as e:
                        raise SystemExit("server unreachable: %s\n(the run can be resumed "
                                         "with the same command)" % e) from None
                    row["_id"] = key
                    files[mode].write(json.dumps(row, ensure_ascii=False) + "\n")
                    files[mode].flush()
                    sent += 1
                    spent[mode] += time.monotonic() - t0
                    n_run[mode] += 1
                    n_done[mode] += 1
                    progress.update(mode, task, n_done[mode], total,
                                    spent[mode] / n_run[mode], force=(n_done[mode] == total))
        finally:
            for f in files.values():
                f.close()
    return sent
