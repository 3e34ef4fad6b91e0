"""`python -m fr_dist.launch`: the command; the implementation is fr_dist/tools/launch.py."""

import sys

from fr_dist.tools.launch import main

if __name__ == "__main__":
    sys.exit(main())
