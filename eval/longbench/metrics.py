"""LongBench v1 metrics (metrics.py / eval.py), reproduced with their quirks.

Scores are only comparable with LongBench's if these functions behave exactly like the
originals, including where the originals are odd:
- qa_f1_score: SQuAD normalisation (lower, strip string.punctuation, drop a/an/the,
  collapse whitespace), multiset token F1, 0 when nothing overlaps.
- rouge_score: ROUGE-L F of the `rouge` package 1.0.1 (summary-level union LCS over
  sentences split on ".", unique words, no lower-casing); ANY exception gives 0.0, which
  covers an empty hypothesis and the recursion limit of its LCS reconstruction.
- classification_score: the loop removes from the list it iterates over, so a match right
  after a removed one is never examined; kept as is.
- retrieval_score / count_score: share of the numbers in the prediction equal to the gold.
- code_sim_score: first line without ` # or //, then fuzzywuzzy.fuzz.ratio / 100 with
  difflib's SequenceMatcher (the choice this harness pins; python-Levenshtein is not used).
"""

import difflib
import re
import string
import warnings
from collections import Counter

with warnings.catch_warnings():
    # fuzzywuzzy warns when python-Levenshtein is absent; difflib is our pinned choice.
    warnings.simplefilter("ignore")
    from fuzzywuzzy import fuzz

from rouge import Rouge

from .protocol import FIRST_LINE_TASKS, first_line

# Pin the matcher: fuzzywuzzy prefers python-Levenshtein when it is importable, and the two
# give slightly different ratios. Force difflib whatever is installed.
fuzz.SequenceMatcher = difflib.SequenceMatcher
FUZZ_BACKEND = "difflib"

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction, ground_truth, **kwargs):
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction)
    recall = 1.0 * num_same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction, ground_truth, **kwargs):
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def rouge_score(prediction, ground_truth, **kwargs):
    rouge = Rouge()
    try:
        scores = rouge.get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # LongBench: bare except; any failure (RecursionError too) is 0.0
        return 0.0
    return scores["rouge-l"]["f"]


def classification_score(prediction, ground_truth, **kwargs):
    all_classes = kwargs["all_classes"]
    em_match_list = []
    for class_name in all_classes:
        if class_name in prediction:
            em_match_list.append(class_name)
    # Quirk kept on purpose: removing while iterating skips the element after a removal.
    for match_term in em_match_list:
        if match_term in ground_truth and match_term != ground_truth:
            em_match_list.remove(match_term)
    if ground_truth in em_match_list:
        return 1.0 / len(em_match_list)
    return 0.0


def _number_share(prediction, gold):
    numbers = re.findall(r"\d+", prediction)
    right = sum(1 for number in numbers if str(number) == str(gold))
    return 0.0 if len(numbers) == 0 else float(right / len(numbers))


def retrieval_score(prediction, ground_truth, **kwargs):
    gold_id = re.findall(r"Paragraph (\d+)", ground_truth)[0]
    return _number_share(prediction, gold_id)


def count_score(prediction, ground_truth, **kwargs):
    return _number_share(prediction, ground_truth)


def code_sim_score(prediction, ground_truth, **kwargs):
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if ("`" not in candidate) and ("#" not in candidate) and ("//" not in candidate):
            line = candidate
            break
    return fuzz.ratio(line, ground_truth) / 100


DATASET2METRIC = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "passage_count": count_score,
    "passage_retrieval_en": retrieval_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}


def sample_score(dataset, prediction, answers, all_classes):
    """max over gold answers of the dataset's metric, after the first-line rule (0..1)."""
    if dataset in FIRST_LINE_TASKS:
        prediction = first_line(prediction)
    metric = DATASET2METRIC[dataset]
    score = 0.0
    for ground_truth in answers:
        score = max(score, metric(prediction, ground_truth, all_classes=all_classes))
    return score


def scorer(dataset, predictions, answers, all_classes):
    """eval.py's scorer: round(100 * mean of sample scores, 2). As in eval.py, a single
    all_classes list (the one of the file's last line) serves every item."""
    if not predictions:
        return 0.0
    total = 0.0
    for prediction, ground_truths in zip(predictions, answers):
        total += sample_score(dataset, prediction, ground_truths, all_classes)
    return round(100 * total / len(predictions), 2)


def scorer_e(dataset, predictions, answers, lengths, all_classes):
    """eval.py's LongBench-E scorer: the same mean per length bin (<4k, 4-8k, 8k+)."""
    bins = {"0-4k": [], "4-8k": [], "8k+": []}
    for prediction, ground_truths, length in zip(predictions, answers, lengths):
        s = sample_score(dataset, prediction, ground_truths, all_classes)
        if length < 4000:
            bins["0-4k"].append(s)
        elif length < 8000:
            bins["4-8k"].append(s)
        else:
            bins["8k+"].append(s)
    return {k: (round(100 * sum(v) / len(v), 2) if v else None) for k, v in bins.items()}


def score_pred_file(dataset, rows):
    """Score parsed pred-file rows (dicts with pred/answers/all_classes) as eval.py does."""
    predictions = [r["pred"] for r in rows]
    answers = [r["answers"] for r in rows]
    all_classes = rows[-1].get("all_classes") if rows else None
    return scorer(dataset, predictions, answers, all_classes)


def _word_pattern(text):
    norm = normalize_answer(text)
    if not norm:
        return None
    return re.compile(r"(?:^|\s)" + re.escape(norm) + r"(?:\s|$)")


def answer_in_text(answers, text):
    """True when some gold answer, normalised like qa_f1, occurs in the normalised text as
    whole words ("paragraph 1" does not match inside "paragraph 12")."""
    if not text:
        return False
    hay = normalize_answer(text)
    for a in answers:
        pat = _word_pattern(a)
        if pat is not None and pat.search(hay):
            return True
    return False
