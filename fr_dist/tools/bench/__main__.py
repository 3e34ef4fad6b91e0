"""`python -m fr_dist.tools.bench`, the same as `python -m fr_dist.bench`."""

import sys

from fr_dist.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
