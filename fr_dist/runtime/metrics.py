"""Run outputs of the reporting rank (the last stage): metrics.jsonl, summary.json, W&B."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import uuid
from pathlib import Path


class Reporter:
    """Writes one JSON row per logged step, the summary, and mirrors rows to W&B.

    Only the last stage makes one: it holds the loss. Steps are monotonic.
    """

    def __init__(self, run_dir: Path, wandb_cfg, config: dict, name: str):
        self.run_dir = run_dir
        self.rows = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self.wandb = None
        if wandb_cfg.mode != "disabled":
            import wandb

            self.wandb = wandb.init(
                mode=wandb_cfg.mode, project=wandb_cfg.project, group=wandb_cfg.group,
                name=name, dir=str(run_dir), config=config, resume="allow", id=self._run_id(),
            )

    def _run_id(self) -> str:
        """The W&B run id kept in the run directory, so a restarted job continues its run."""
        path = self.run_dir / "wandb_id.txt"
        if not path.exists():
            path.write_text(uuid.uuid4().hex[:12])
        return path.read_text().strip()

    def truncate(self, step: int) -> None:
        """Forget rows after `step`: a resumed run logs them again."""
        self.rows.close()
        path = self.run_dir / "metrics.jsonl"
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
        self.rows = open(path, "a", buffering=1)

    def log(self, row: dict) -> None:
        self.rows.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def summary(self, summary: dict) -> None:
        path = self.run_dir / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, path)
        if self.wandb is not None:
            flat = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
            for stage in summary.get("stages", []):  # per-stage figures, gathered from every rank
                name = f"stage{stage.get('stage', stage['rank'])}"
                if summary.get("replicas", 1) > 1:
                    name += f"_replica{stage['replica']}"
                skip = ("rank", "stage", "replica", "blocks")
                flat.update({f"{name}/{k}": v for k, v in stage.items() if k not in skip})
            self.wandb.summary.update(flat)

    def close(self) -> None:
        self.rows.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def stage_figures(stage, plan, progress) -> dict:
    """This stage's row of summary.json's `stages` list."""
    k = stage.rt.stage
    worker = stage.pipeline or stage.engine.worker
    row = {"rank": stage.rt.rank, "stage": k, "replica": stage.rt.replica,
           "blocks": [i for a, b in plan.meta.get("chunks") or [plan.meta["blocks"]] for i in range(a, b)],
           "params": sum(p.numel() for p in stage.module.parameters()),
           "busy_frac": round(stage.busy_s / max(progress.train_s, 1e-9), 4),
           "peak_mem_bytes": worker.peak_mem_bytes}
    ring = getattr(worker, "ring", None)
    if ring is not None:  # the stored inputs alone (part of peak_mem_bytes): their dtype is the link's
        row["ring_bytes"] = ring.nbytes
    if stage.compile_s is not None:
        from fr_dist.runtime.compiled import compile_seconds, compiled_graphs

        row["compile_s"] = round(stage.compile_s, 3)
        row["late_compile_s"] = round(compile_seconds() - stage.compile_clock, 3)  # 0: all compiled at start-up
        row["compiled_graphs"] = compiled_graphs()
    if stage.rt.device.type == "cuda":
        import torch

        row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(stage.rt.device)
    return row


def git_revision() -> str:
    """The checkout's revision when fr_dist runs from one, else the installed version."""
    root = Path(__file__).resolve().parent.parent.parent  # fr_dist/runtime/metrics.py -> the checkout
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=5).stdout.split()
        if len(out) == 2 and Path(out[0]).resolve() == root:  # not another repository around an install
            return out[1]
    except OSError:
        pass
    try:
        return importlib.metadata.version("fr_dist")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
