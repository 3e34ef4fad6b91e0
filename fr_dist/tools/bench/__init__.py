"""Throughput benchmark: FR against BP, GPipe and 1F1B on this machine, as ratios.

    python -m fr_dist.bench                 # defaults: ResNet-20, batch 128, 3x32x32 synthetic, CPU
    python -m fr_dist.bench --quick         # smoke test: few steps, one repeat
    python -m fr_dist.bench --out bench.json --repeats 5 --steps 60

What it does, in one process tree:
1. Profiles the model's blocks in this process (``fr_dist.partition.profile``, one thread, as
   each rank runs) at the batch size and at the micro-batch size, measures the link
   model, and picks FR's boundary with ``partition.profiled_cuts`` and the pipeline
   peers' with ``partition.pipeline_cuts`` (passed to the jobs as explicit cuts).
   Optionally (default on) it profiles again while a second process keeps the other
   core busy with the same kind of work: the per-rank cost when two ranks share the
   machine, which is what a 2-rank job really pays.
2. Runs every configuration (one torchrun job each, ``python -m fr_dist.launch``
   in a subprocess, its own run directory) `repeats` times, round-robin so that
   drift hits all alike, and reads ``samples_per_s`` (training only: start-up and
   evaluation excluded), ``busy_frac`` and ``peak_mem_bytes`` from ``summary.json``.
3. Prints a table of medians; ratios are taken within each round (one run of each
   configuration) and their median reported. Efficiency = the simulator's predicted
   ideal time (``fr_dist.tools.simulate`` with the profiled costs) / measured time.
4. Profiles deeper models (default ResNet-56 and ResNet-110, same batch and shape)
   and prints the simulator's predicted FR speedup over one-worker BP for K = 2..8.
Everything goes to ``bench.json`` (``--out``).

Modules: ``configs`` (what is benchmarked), ``profiling`` (step 1 and the predictions),
``runs`` (step 2), ``report`` (steps 3 and 4: the table and the printed report),
``cli`` (the command line).
"""

from fr_dist.tools.bench.cli import main, parse

__all__ = ["main", "parse"]
