"""LongBench v1 protocol data: prompt templates, generation lengths, which tasks use the
chat template, which keep only the first line of a prediction.

The templates and lengths are loaded from config/*.json, byte-identical to LongBench's
config/dataset2prompt.json and config/dataset2maxlen.json (English and code tasks)."""

import json
import os

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


def _load(name):
    with open(os.path.join(_CONFIG_DIR, name), encoding="utf-8") as f:
        return json.load(f)


DATASET2PROMPT = _load("dataset2prompt.json")
DATASET2MAXLEN = _load("dataset2maxlen.json")

# The 16 English + code tasks, in LongBench's reporting order.
TASKS = [
    "narrativeqa", "qasper", "multifieldqa_en",
    "hotpotqa", "2wikimqa", "musique",
    "gov_report", "qmsum", "multi_news",
    "trec", "triviaqa", "samsum",
    "passage_count", "passage_retrieval_en",
    "lcc", "repobench-p",
]

CATEGORY = {
    "narrativeqa": "Single-doc QA", "qasper": "Single-doc QA", "multifieldqa_en": "Single-doc QA",
    "hotpotqa": "Multi-doc QA", "2wikimqa": "Multi-doc QA", "musique": "Multi-doc QA",
    "gov_report": "Summarization", "qmsum": "Summarization", "multi_news": "Summarization",
    "trec": "Few-shot", "triviaqa": "Few-shot", "samsum": "Few-shot",
    "passage_count": "Synthetic", "passage_retrieval_en": "Synthetic",
    "lcc": "Code", "repobench-p": "Code",
}

# pred.py: no chat template for these ("chat models are better off without build prompts").
RAW_TASKS = frozenset(["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"])

# eval.py: these keep only pred.lstrip('\n').split('\n')[0] before scoring.
FIRST_LINE_TASKS = frozenset(["trec", "triviaqa", "samsum", "lsht"])

# Tasks whose gold answers are spans of the context, so "is a gold answer inside the
# evidence" (answer recall) means something. Summaries, counts, classes and code lines are
# not looked up in the evidence.
RECALL_TASKS = frozenset([
    "narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
    "triviaqa", "passage_retrieval_en",
])

# pred.py's model2maxlen: "the window minus about 500": 4k -> 3500, 8k -> 7500,
# 16k -> 15500, 32k -> 31500 (k = 1024 tokens, counted as 1000).
WINDOW_MARGIN = 500

SEED = 42


def check_task(dataset):
    """Raise ValueError for a dataset this harness does not know."""
    if dataset not in DATASET2PROMPT:
        raise ValueError("unknown LongBench dataset %r (English and code tasks: %s)"
                         % (dataset, ", ".join(TASKS)))


def build_prompt(dataset, item):
    """The filled template, exactly as pred.py builds it: template.format(**item)."""
    check_task(dataset)
    return DATASET2PROMPT[dataset].format(**item)


def uses_chat(dataset):
    """True when the prompt goes through the model's chat template (a single user turn)."""
    return dataset not in RAW_TASKS


def max_new_tokens(dataset):
    check_task(dataset)
    return DATASET2MAXLEN[dataset]


def max_length_for_window(window):
    """pred.py's max_length for a model with this context window, following its
    config/model2maxlen.json: a window of K*1024 tokens gives K*1000 - 500 (8192 -> 7500);
    any other window gives window - 500."""
    window = int(window)
    if window <= WINDOW_MARGIN:
        raise ValueError("window %d too small" % window)
    if window % 1024 == 0:
        return window // 1024 * 1000 - WINDOW_MARGIN
    return window - WINDOW_MARGIN


def first_line(pred):
    return pred.lstrip("\n").split("\n")[0]
