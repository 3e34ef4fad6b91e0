"""Merge a run's stage checkpoints into one state_dict of the plain, unsplit model.

    python -m fr_dist.export RUN_DIR [--out model.pt]
    python -m fr_dist.export RUN_DIR/checkpoints/step_00000120 [--out model.pt]

The one positional path is a run directory (its latest complete checkpoint is
exported), its checkpoints/ folder (the same) or one complete step_N folder in it
(that checkpoint). The output goes to RUN_DIR/model.pt unless --out says where.

Stage k holds blocks[c_k:c_{k+1}] as an nn.Sequential, so its key "i.rest" is
the whole model's "(c_k + i).rest". The output loads with strict=True into
`nn.Sequential(*build_blocks(model, in_shape, classes))`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

from fr_dist.runtime import checkpoint
from fr_dist.errors import FRError
from fr_dist.models import build_blocks


def merge(directory: Path) -> dict:
    """{"model": state_dict, "meta": ...} from the complete checkpoint `directory`."""
    if not (directory / checkpoint.MARKER).exists():
        raise FRError(f"{directory} is not a complete checkpoint (no {checkpoint.MARKER} marker)")
    first = checkpoint.load_stage(directory, 0, {})
    meta = first["meta"]
    merged = {}
    for k in range(meta["splits"]):
        state = first if k == 0 else checkpoint.load_stage(directory, k, {"splits": meta["splits"]})
        ranges = state["meta"].get("chunks") or [state["meta"]["blocks"]]  # virtual stages: several ranges
        blocks = [i for start, end in ranges for i in range(start, end)]
        for name, value in state["model"].items():
            index, rest = name.split(".", 1)
            merged[f"{blocks[int(index)]}.{rest}"] = value
    keep = ("algo", "splits", "model", "in_shape", "classes", "tokens", "step")
    return {"model": merged, "meta": {key: meta.get(key) for key in keep}}


def plain_model(exported: dict) -> nn.Module:
    """The unsplit model with the exported weights."""
    meta = exported["meta"]
    model = nn.Sequential(*build_blocks(meta["model"], tuple(meta["in_shape"]), meta["classes"],
                                        bool(meta.get("tokens"))))
    model.load_state_dict(exported["model"])
    return model


def find(path: Path) -> Path:
    """A checkpoint directory from a run directory, a checkpoints/ folder or itself."""
    if (path / checkpoint.MARKER).exists():
        return path
    run_dir = path.parent if path.name == "checkpoints" else path
    latest = checkpoint.latest(run_dir)
    if latest is None:
        raise FRError(f"no complete checkpoint under {path}: give a run directory or a checkpoints/step_N folder")
    return latest


def load(path: Path) -> tuple[dict, Path]:
    """The exported model at `path` (a model.pt, or merged from a run directory or checkpoint folder) and the
    run directory it came from (a model.pt's own folder, where export writes it)."""
    if not path.is_file():
        directory = find(path)
        return merge(directory), directory.parent.parent
    try:
        exported = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # not a torch file, or a damaged one
        raise FRError(f"cannot read {path} as an exported model ({type(e).__name__}): give a model.pt written by "
                      f"python -m fr_dist.export, a run directory or a checkpoints/step_N folder") from None
    if not (isinstance(exported, dict) and {"model", "meta"} <= exported.keys()):
        raise FRError(f"{path} is not an exported model (no model and meta entries): give a model.pt written by "
                      f"python -m fr_dist.export, a run directory or a checkpoints/step_N folder")
    return exported, path.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fr_dist.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory (its latest complete checkpoint) or a step_N folder")
    parser.add_argument("--out", type=Path, help="output file (default: RUN_DIR/model.pt, also for a step_N folder)")
    args = parser.parse_args(argv)
    try:
        directory = find(args.run_dir)
        exported = merge(directory)
        plain_model(exported)  # proves it loads into the unsplit model
    except FRError as e:
        print(f"[export] error: {e}", file=sys.stderr)
        return 1
    out = args.out or (directory.parent.parent / "model.pt")
    checkpoint.atomic_save(exported, out)
    print(f"[export] {len(exported['model'])} tensors of {exported['meta']['splits']} stages "
          f"(step {exported['meta']['step']}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
