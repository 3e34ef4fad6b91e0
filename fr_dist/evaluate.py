"""`python -m fr_dist.evaluate`: the command; the implementation is fr_dist/tools/evaluate.py."""

import sys

from fr_dist.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
