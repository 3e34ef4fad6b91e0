"""`python -m fr_dist.plot`: the command; the implementation is fr_dist/tools/plot.py."""

import sys

from fr_dist.tools.plot import main

if __name__ == "__main__":
    sys.exit(main())
