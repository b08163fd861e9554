"""Command line: run, report."""

import argparse
import os
import sys

from .client import MODES, Client
from .protocol import TASKS, max_length_for_window
from .report import markdown, write_reports
from .runner import check_settings, run, tasks_in
from .truncate import make_tokenizer

DEFAULT_URL = "http://127.0.0.1:8080"


def _csv(s):
    return [x.strip() for x in s.split(",") if x.strip()]


def cmd_run(a):
    tasks = _csv(a.tasks) if a.tasks else tasks_in(a.data)
    if not tasks:
        raise SystemExit("no LongBench task files (<task>.jsonl) in %s" % a.data)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit("unknown tasks: %s (known: %s)" % (", ".join(unknown), ", ".join(TASKS)))
    modes = _csv(a.modes)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit("unknown modes: %s (known: %s)" % (", ".join(bad), ", ".join(MODES)))
    client = Client(a.url, api_key=a.api_key or os.environ.get("S3_API_KEY"),
                    timeout_s=a.timeout)
    model, window = client.discover()
    if a.window:
        window = a.window
    if a.max_length:
        max_length = a.max_length
    else:
        if not window:
            window = 8192
            print("window not reported by the server; assuming %d (use --window)" % window,
                  file=sys.stderr)
        max_length = max_length_for_window(window)
    settings = {
        "url": a.url, "model": a.model or model, "window": window, "max_length": max_length,
        "budget": a.budget, "tokenizer": a.tokenizer, "modes": modes, "tasks": tasks,
        "data": os.path.abspath(a.data),
    }
    settings = check_settings(a.out, settings, force=a.force)
    print("longbench: %d task(s) x %d mode(s), max_length %d, budget %d -> %s"
          % (len(tasks), len(modes), max_length, a.budget, a.out), file=sys.stderr)
    run(client, a.data, a.out, modes, tasks, settings,
        lambda: make_tokenizer(a.tokenizer, a.model_file), limit=a.limit,
        retry_errors=a.retry_errors)
    summaries = write_reports([a.out], a.out, labels=[a.label] if a.label else None,
                              png=not a.no_png)
    sys.stdout.write(markdown(summaries))
    return 0


def cmd_report(a):
    labels = _csv(a.labels) if a.labels else None
    if labels and len(labels) != len(a.runs):
        raise SystemExit("--labels needs one label per run directory")
    summaries = write_reports(a.runs, a.out, labels=labels, png=not a.no_png)
    sys.stdout.write(markdown(summaries))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="longbench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run LongBench tasks against a running s3serve")
    r.add_argument("--data", required=True, help="directory of <task>.jsonl files")
    r.add_argument("--out", required=True, help="run directory (pred files, scores, report)")
    r.add_argument("--url", default=os.environ.get("S3_URL", DEFAULT_URL))
    r.add_argument("--api-key", default=None)
    r.add_argument("--modes", default="full,s3,bm25,hybrid",
                   help="comma list of %s" % ",".join(MODES))
    r.add_argument("--tasks", default=None, help="comma list (default: every file in --data)")
    r.add_argument("--budget", type=int, default=2048, help="evidence tokens (s3/bm25/hybrid)")
    r.add_argument("--window", type=int, default=None,
                   help="model context window (default: from /v1/models, else 8192)")
    r.add_argument("--max-length", type=int, default=None,
                   help="middle-truncation length in tokens (default: from the window as "
                        "LongBench's model2maxlen: 8192 -> 7500)")
    r.add_argument("--tokenizer", default="s3serve",
                   help="whitespace | s3serve[:BINARY] | cmd:ENCODE|DECODE (full mode only)")
    r.add_argument("--model-file", default=None, help="GGUF for the tokenizer CLI")
    r.add_argument("--model", default=None, help="model name sent in requests")
    r.add_argument("--limit", type=int, default=None, help="first N samples per task")
    r.add_argument("--timeout", type=float, default=3600.0, help="seconds per request")
    r.add_argument("--retry-errors", action="store_true",
                   help="re-run samples that recorded a server error")
    r.add_argument("--force", action="store_true", help="resume despite changed settings")
    r.add_argument("--label", default=None, help="row label (default: the --out name)")
    r.add_argument("--no-png", action="store_true")
    r.set_defaults(fn=cmd_run)

    q = sub.add_parser("report", help="score run directories; one table/CSV/PNG for all")
    q.add_argument("runs", nargs="+", help="run directories (from `run --out`)")
    q.add_argument("--out", required=True, help="where results.md/.csv/.png go")
    q.add_argument("--labels", default=None, help="comma list, one per run (e.g. 4k,32k)")
    q.add_argument("--no-png", action="store_true")
    q.set_defaults(fn=cmd_report)

    a = p.parse_args(argv)
    return a.fn(a)
