"""Score an exported model or a run's staged checkpoint on a test set, in one process.

    python -m fr_dist.evaluate RUN_DIR_OR_MODEL_PT [data=... data.data_root=... batch_size=...]

The data section defaults to the run's own (RUN_DIR/.hydra/config.yaml, or
the run directory two levels above an exported model.pt); overrides change it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fr_dist import data as datasets
from fr_dist.compose import compose
from fr_dist.config import validate
from fr_dist.errors import FRError
from fr_dist.tools.export import find, merge, plain_model


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches) -> float:
    """Top-1 accuracy over every test sample, in eval mode."""
    model.eval()
    correct = 0
    for e in range(batches.test_batches):
        y = batches.test_labels(e)
        correct += int((model(batches.test_inputs(e))[: len(y)].argmax(1) == y).sum())
    return correct / batches.test_size


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path, overrides = Path(argv[0]), argv[1:]
    try:
        if path.is_file():
            exported = torch.load(path, map_location="cpu", weights_only=False)
            run_dir = path.parent
        else:
            directory = find(path)
            exported, run_dir = merge(directory), directory.parent.parent
        saved = run_dir / ".hydra" / "overrides.yaml"
        base = list(OmegaConf.load(saved)) if saved.exists() else []
        raw = compose([*base, *overrides])
        c = validate(raw, world_size=int(raw.splits))
        model = plain_model(exported)
        batches = datasets.load(c.data, c.batch_size, c.seed)
    except FRError as e:
        print(f"[evaluate] error: {e}", file=sys.stderr)
        return 1
    acc = accuracy(model, batches)
    print(f"[evaluate] test_acc {acc:.4f} on {batches.test_size} samples of {c.data.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
