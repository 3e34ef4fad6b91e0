"""fr_dist: Features Replay (Huo, Gu, Huang, NeurIPS 2018) as a multiprocess trainer."""

from fr_dist.errors import FRError

__all__ = ["FRError"]
__version__ = "0.1.0"
