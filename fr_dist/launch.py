"""Launch a training job as torchrun would, with one process per stage.

    python -m fr_dist.launch +experiment=fashion_resnet20
    python -m fr_dist.launch splits=4 algo=fr model=resnet20 data=synthetic

The number of processes follows `splits`. Unlike bare torchrun, a failure ends
with the failing rank's one-line message: torchrun's own report is not printed.
"""

from __future__ import annotations

import logging
import os
import sys

from fr_dist.config import validate
from fr_dist.errors import FRError


def run_job(overrides: list[str], splits: int) -> int:
    """Run `python -m fr_dist.train OVERRIDES` on `splits` local processes; its exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the trainer sets threads_per_rank itself
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc_per_node={splits}", "--module", "fr_dist.train", *overrides])
    try:
        run(args)
    except ChildFailedError:
        return 1  # the failing rank printed why
    return 0


def main(argv: list[str] | None = None) -> int:
    from fr_dist.train import compose

    overrides = sys.argv[1:] if argv is None else argv
    try:
        raw = compose([o for o in overrides if not o.startswith("hydra.")])
        splits = int(raw.splits)
        validate(raw, world_size=splits)
    except (FRError, ValueError) as e:
        print(f"[launch] error: {e}", file=sys.stderr)
        return 1
    return run_job(overrides, splits)


if __name__ == "__main__":
    sys.exit(main())
