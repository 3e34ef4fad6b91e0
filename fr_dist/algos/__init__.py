"""Training algorithms: one module per schedule, all behind the interface in base.py.

gpipe, 1f1b, interleaved1f1b, zb, zbv and dualpipev are the separate pipelining runner (pipe.py): no
engine schedule.
"""

from fr_dist.algos import bp, ddg, dni, fr
from fr_dist.algos.pipe import PIPELINES  # torch.distributed.pipelining: {name: PipeAlgo}

ALGOS = {"fr": fr, "bp": bp, "ddg": ddg, "dni": dni}  # schedules the engine executes
