import os
import sys

ROOT = os.environ.get("S3_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
EVAL_DIR = os.path.join(ROOT, "eval")
if EVAL_DIR not in sys.path:
    sys.path.insert(0, EVAL_DIR)


def pytest_configure(config):
    # difflib is the harness's pinned matcher; fuzzywuzzy warns when Levenshtein is absent.
    config.addinivalue_line("filterwarnings",
                            "ignore:Using slow pure-python SequenceMatcher:UserWarning")
