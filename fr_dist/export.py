"""`python -m fr_dist.export`: the command; the implementation is fr_dist/tools/export.py."""

import sys

from fr_dist.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
