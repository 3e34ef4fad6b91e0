"""Training algorithms: one module per schedule, all behind the interface in base.py.

gpipe and 1f1b are the separate pipelining runner (pipe.py): no engine schedule.
"""

from fr_dist.algos import bp, ddg, dni, fr
from fr_dist.algos.pipe import GPIPE, ONE_F_ONE_B

ALGOS = {"fr": fr, "bp": bp, "ddg": ddg, "dni": dni}  # schedules the engine executes
PIPELINES = {"gpipe": GPIPE, "1f1b": ONE_F_ONE_B}  # torch.distributed.pipelining
