"""Training algorithms: one module per schedule, all behind the interface in base.py."""

from fr_dist.algos import bp, fr

ALGOS = {"fr": fr, "bp": bp}
