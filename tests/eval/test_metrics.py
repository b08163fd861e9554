"""Every LongBench metric against values computed by hand, quirks included."""

import difflib

import pytest
from fuzzywuzzy import fuzz

from longbench import metrics as M
from longbench.protocol import FIRST_LINE_TASKS


def test_normalize_answer():
    assert M.normalize_answer("The Quick, brown fox!") == "quick brown fox"
    assert M.normalize_answer("An apple a day") == "apple day"
    assert M.normalize_answer("theatre  Anthem") == "theatre anthem"
    # punctuation goes before articles: "the-end" becomes one word "theend"
    assert M.normalize_answer("the-end") == "theend"
    assert M.normalize_answer("  A.B.C.  ") == "abc"
    assert M.normalize_answer("") == ""


def test_qa_f1():
    # pred [cat, sat, on, mat], gold [cat, on, mat]: P 3/4, R 1, F1 6/7
    assert M.qa_f1_score("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # multiset overlap: [paris, paris] vs [paris]: P 1/2, R 1
    assert M.qa_f1_score("Paris paris", "Paris") == pytest.approx(2 / 3)
    assert M.qa_f1_score("London", "Paris") == 0
    assert M.qa_f1_score("", "Paris") == 0
    assert M.qa_f1_score("The Paris.", "paris") == 1.0


def test_rouge_l_union_lcs():
    # hyp sentences ["The cat sat", "on the mat"]; ref words {the,cat,sat,on,mat} m=5;
    # hyp unique words {The,cat,sat,on,the,mat} n=6 (no lower-casing); union LCS 5
    p, r = 5 / 6, 1.0
    assert M.rouge_score("The cat sat. on the mat", "the cat sat on the mat") == \
        pytest.approx(2 * p * r / (p + r + 1e-8), abs=1e-12)
    # "a b x" and "c e" against "a b c d e": LCS a b / c e, union 4; m = n = 5
    assert M.rouge_score("a b x. c e", "a b c d e") == \
        pytest.approx(2 * 0.64 / (1.6 + 1e-8), abs=1e-12)
    # unique words: m = n = 1
    assert M.rouge_score("the the the", "the") == pytest.approx(2 / (2 + 1e-8), abs=1e-12)
    assert M.rouge_score("Cat", "cat") == 0.0


def test_rouge_quirks():
    assert M.rouge_score("", "the cat") == 0.0        # empty hypothesis raises -> 0.0
    assert M.rouge_score("...", "the cat") == 0.0     # only "." -> no sentence -> 0.0
    assert M.rouge_score("the cat", "") == 0.0
    # "a b. " -> sentences ["a b", ""]: the empty string counts as a word (n = 3)
    p, r = 2 / 3, 1.0
    assert M.rouge_score("a b. ", "a b") == pytest.approx(2 * p * r / (p + r + 1e-8),
                                                          abs=1e-12)
    # "3.5" is split on "." into two sentences "3" and "5"
    assert M.rouge_score("3.5", "3 5") == pytest.approx(2 / (2 + 1e-8), abs=1e-12)
    # the recursive LCS reconstruction walks 1100 steps: RecursionError -> 0.0
    assert M.rouge_score("a" + " b" * 1100, "a") == 0.0


def test_classification():
    classes = ["Abbreviation", "Entity", "Description", "Human", "Location", "Numeric"]
    assert M.classification_score("Location", "Location", all_classes=classes) == 1.0
    assert M.classification_score("Human or Location", "Location", all_classes=classes) == 0.5
    assert M.classification_score("no idea", "Location", all_classes=classes) == 0.0
    assert M.classification_score("Human", "Location", all_classes=classes) == 0.0


def test_classification_list_mutation_quirk():
    # matches [a, ab, abc, x]; "a" is removed, which makes the loop skip "ab":
    # [ab, abc, x] -> 1/3 (a correct filter would leave [abc, x] -> 1/2)
    assert M.classification_score("abc x", "abc", all_classes=["a", "ab", "abc", "x"]) == \
        pytest.approx(1 / 3)
    # [a, ab, abc] -> remove "a", skip "ab" -> [ab, abc] -> 1/2
    assert M.classification_score("abc", "abc", all_classes=["a", "ab", "abc"]) == 0.5
    # order matters: [abc, ab, a] -> "abc" kept, "ab" removed, "a" skipped -> [abc, a]
    assert M.classification_score("abc", "abc", all_classes=["abc", "ab", "a"]) == 0.5


def test_retrieval():
    assert M.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    assert M.retrieval_score("Paragraph 3 or Paragraph 13", "Paragraph 3") == 0.5
    assert M.retrieval_score("3, 3 and 4", "Paragraph 3") == pytest.approx(2 / 3)
    assert M.retrieval_score("none of them", "Paragraph 3") == 0.0
    assert M.retrieval_score("Paragraph 1", "Paragraph 12") == 0.0
    assert isinstance(M.retrieval_score("x", "Paragraph 1"), float)


def test_count():
    assert M.count_score("7", "7") == 1.0
    assert M.count_score("There are 7 unique paragraphs out of 10", "7") == 0.5
    assert M.count_score("07", "7") == 0.0  # string comparison of the digit runs
    assert M.count_score("seven", "7") == 0.0


def test_code_sim_first_line_rule():
    assert fuzz.SequenceMatcher is difflib.SequenceMatcher
    assert M.FUZZ_BACKEND == "difflib"
    # leading newlines stripped, comment lines skipped
    assert M.code_sim_score("\n\n# comment\nx = foo(1)\ny", "x = foo(1)") == 1.0
    # fence line skipped; "return a+b" vs "return a + b": 2*10/22 = 90.9 -> 91
    assert M.code_sim_score("```python\nreturn a+b\n```", "return a + b") == 0.91
    # a line containing "#" anywhere is skipped, even inside a string
    assert M.code_sim_score('s = "#"\nt = 1', "t = 1") == 1.0
    assert M.code_sim_score("// c\n", "x") == 0.0
    # no usable line -> "" ; fuzz.ratio("", "") is 100 (equality checked before emptiness)
    assert M.code_sim_score("# only a comment", "") == 1.0
    assert M.code_sim_score("# only a comment", "x = 1") == 0.0
    # "abcd" vs "abxd": matches a,b,d -> 2*3/8 = 75
    assert M.code_sim_score("abcd", "abxd") == 0.75


def test_first_line_rule():
    assert FIRST_LINE_TASKS == {"trec", "triviaqa", "samsum", "lsht"}
    classes = ["Human", "Location"]
    assert M.sample_score("trec", "\nLocation\nHuman", ["Location"], classes) == 1.0
    assert M.classification_score("\nLocation\nHuman", "Location", all_classes=classes) == 0.5
    assert M.sample_score("triviaqa", "\n\nParis\nnot London", ["Paris"], None) == 1.0
    assert M.sample_score("samsum", "a b\nc d", ["a b"], None) == pytest.approx(2 / (2 + 1e-8))
    # other tasks keep every line: [paris, london] vs [paris] -> 2/3
    assert M.sample_score("hotpotqa", "Paris\nLondon", ["Paris"], None) == pytest.approx(2 / 3)


def test_scorer_max_and_rounding():
    # max over gold answers: "paris france" vs ["Paris", "Paris, France"] -> 1
    assert M.scorer("hotpotqa", ["paris france"], [["Paris", "Paris, France"]], None) == 100.0
    assert M.scorer("hotpotqa", ["Paris", "x", "y"], [["Paris"], ["z"], ["z"]], None) == 33.33
    assert M.scorer("passage_count", ["2 or 3"], [["3"]], None) == 50.0


def test_scorer_uses_last_all_classes():
    rows = [{"pred": "Human", "answers": ["Human"], "all_classes": ["Location"]},
            {"pred": "Human", "answers": ["Human"], "all_classes": ["Human"]}]
    assert M.score_pred_file("trec", rows) == 100.0
    assert M.score_pred_file("trec", rows[::-1]) == 0.0


def test_scorer_e_bins():
    out = M.scorer_e("passage_count", ["1", "2", "3"], [["1"], ["1"], ["3"]],
                     [100, 5000, 9000], None)
    assert out == {"0-4k": 100.0, "4-8k": 0.0, "8k+": 100.0}


def test_answer_in_text():
    assert M.answer_in_text(["Paragraph 1"], "see Paragraph 1: text")
    assert not M.answer_in_text(["Paragraph 1"], "see Paragraph 12: text")
    assert M.answer_in_text(["nope", "The Corbelford"], "headquarters in Corbelford.")
    assert not M.answer_in_text(["Paris"], "")
    assert not M.answer_in_text([""], "anything")
