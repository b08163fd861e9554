"""Entry point: `python eval/longbench ...` or `python -m longbench ...` (eval/ on the path)."""

import os
import sys

if not __package__:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from longbench.cli import main
else:
    from .cli import main

if __name__ == "__main__":
    sys.exit(main())
