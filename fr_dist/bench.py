"""`python -m fr_dist.bench`: the command; the implementation is fr_dist/tools/bench/."""

import sys

from fr_dist.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
