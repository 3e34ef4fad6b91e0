"""What the benchmark runs: its configurations and the overrides every job shares."""

from __future__ import annotations

# (name, label, overrides) -- {fr_cut} / {pipe_cut} are filled in from the profile
CONFIGS = [
    ("bp1", "BP 1 proc x 1 thread", ["algo=bp", "splits=1", "threads_per_rank=1"]),
    ("bp2", "BP 1 proc x 2 threads", ["algo=bp", "splits=1", "threads_per_rank=2"]),
    ("fr2", "FR K=2 (2 x 1 thread)", ["algo=fr", "splits=2", "threads_per_rank=1", "partition=[{fr_cut}]"]),
    ("gpipe2", "GPipe K=2 M={M}", ["algo=gpipe", "splits=2", "threads_per_rank=1", "microbatches={M}",
                                   "partition=[{pipe_cut}]"]),
    ("1f1b2", "1F1B K=2 M={M}", ["algo=1f1b", "splits=2", "threads_per_rank=1", "microbatches={M}",
                                 "partition=[{pipe_cut}]"]),
    ("gpipe2c", "GPipe K=2 M={M} ckpt", ["algo=gpipe", "splits=2", "threads_per_rank=1", "microbatches={M}",
                                         "algo.checkpoint=true", "partition=[{pipe_cut}]"]),
    ("1f1b2c", "1F1B K=2 M={M} ckpt", ["algo=1f1b", "splits=2", "threads_per_rank=1", "microbatches={M}",
                                       "algo.checkpoint=true", "partition=[{pipe_cut}]"]),
]
BY_NAME = {c[0]: c for c in CONFIGS}
# The simulator's model of each configuration: (algo, K, checkpoint); bp2 has none (2 threads in one process)
PRED = {"bp1": ("bp", 1, False), "bp2": None, "fr2": ("fr", 2, False), "gpipe2": ("gpipe", 2, False),
        "1f1b2": ("1f1b", 2, False), "gpipe2c": ("gpipe", 2, True), "1f1b2c": ("1f1b", 2, True)}


def common_overrides(a) -> list[str]:
    steps_per_epoch = 16
    return [f"model={a.model}", "data=synthetic", f"data.shape=[{','.join(map(str, a.shape))}]",
            f"data.train_size={steps_per_epoch * a.batch_size}", f"batch_size={a.batch_size}",
            f"max_steps={a.steps}", f"epochs={-(-a.steps // steps_per_epoch) + 1}", "eval_every=100000",
            "ckpt_every=0", "resume=null", "wandb.mode=disabled", "progress=false", f"log_every={a.log_every}",
            f"seed={a.seed}"]
