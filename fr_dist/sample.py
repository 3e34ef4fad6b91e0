"""`python -m fr_dist.sample`: the command; the implementation is fr_dist/tools/sample.py."""

import sys

from fr_dist.tools.sample import main

if __name__ == "__main__":
    sys.exit(main())
