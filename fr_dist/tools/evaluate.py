"""Score an exported model or a run's staged checkpoint on a test set, in one process.

    python -m fr_dist.evaluate RUN_DIR_OR_MODEL_PT [data=... data.data_root=... batch_size=...]

A classifier gets its test accuracy; a language model (text data) its validation
loss per token and perplexity over every validation window.

The data section defaults to the run's own (the overrides in RUN_DIR/.hydra/overrides.yaml;
for a model.pt, those of the run directory it lies in, where export writes it); overrides
change it.
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
from fr_dist.models.objective import cross_entropy, perplexity
from fr_dist.tools.export import load, plain_model


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches) -> float:
    """Top-1 accuracy over every test sample, in eval mode."""
    model.eval()
    correct = 0
    for e in range(batches.test_batches):
        y = batches.test_labels(e)
        correct += int((model(batches.test_inputs(e))[: len(y)].argmax(1) == y).sum())
    return correct / batches.test_size


@torch.no_grad()
def validation_loss(model: torch.nn.Module, batches) -> float:
    """Mean cross entropy per token over every validation window, in eval mode.

    Summed per batch and divided once, as the trainer's evaluation does, so the two agree.
    """
    model.eval()
    loss_sum, tokens = 0.0, 0
    for e in range(batches.test_batches):
        y = batches.test_labels(e)
        loss_sum += float(cross_entropy(model(batches.test_inputs(e))[: len(y)].float(), y, reduction="sum"))
        tokens += y.numel()
    return loss_sum / tokens


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path, overrides = Path(argv[0]), argv[1:]
    try:
        exported, run_dir = load(path)
        saved = run_dir / ".hydra" / "overrides.yaml"
        base = list(OmegaConf.load(saved)) if saved.exists() else []
        raw = compose([*base, *overrides])
        c = validate(raw, world_size=int(raw.splits))
        model = plain_model(exported)
        batches = datasets.load(c.data, c.batch_size, c.seed)
    except FRError as e:
        print(f"[evaluate] error: {e}", file=sys.stderr)
        return 1
    if batches.tokens:
        loss = validation_loss(model, batches)
        print(f"[evaluate] val_loss {loss:.4f} val_ppl {perplexity(loss):.4f} on "
              f"{batches.test_y.numel()} tokens ({len(batches.test_y)} windows) of {c.data.name}")
        return 0
    acc = accuracy(model, batches)
    print(f"[evaluate] test_acc {acc:.4f} on {batches.test_size} samples of {c.data.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
