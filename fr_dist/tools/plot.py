"""Curves and tables of finished runs: ``python -m fr_dist.plot RUN_OR_SWEEP_DIR...``

Every run directory under each given path (one with metrics.jsonl and summary.json) is
read (``--only algo=fr`` keeps the runs whose summary has that value); the PNG files go
into that path, or into ``--out DIR``:

- loss_vs_step.png, loss_vs_time.png: training loss against the step and the training
  time (the rows' ``time_s`` when logged, else accumulated from each row's samples_per_s:
  start-up and evaluation excluded);
- test_acc_vs_epoch.png, test_acc_vs_time.png: test accuracy of the evaluation rows;
- val_loss_vs_step.png, val_loss_vs_time.png: a language model's validation loss per token
  (its perplexity on the right-hand axis), instead of the accuracy;
- sigma_vs_step.png, cos_vs_step.png: when rows carry keys starting with ``sigma`` or
  ``cos`` (the sufficient-direction diagnostic), one curve per key, one panel per line.

One line per (algo, splits), plus any other setting whose value differs between the
runs; runs that differ only in their seed are averaged. Two markdown tables are printed:
one row per run, and one per line (mean ± std over seeds, memory, sigma; a language
model's validation loss and tokens/s where a classifier has its accuracy and samples/s).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DIAG_PREFIXES = ("sigma", "cos")
EVAL_KEYS = ("test_acc", "val_loss")  # an evaluation row's score: a classifier's, a language model's
IGNORED_OVERRIDES = ("seed", "algo", "splits", "progress", "hydra.", "wandb.")


@dataclass
class Run:
    path: Path
    summary: dict
    rows: list[dict]  # one per step and kind (training, evaluation), the last one logged
    batch_size: int | None = None
    overrides: dict = field(default_factory=dict)  # from .hydra/overrides.yaml, without IGNORED_OVERRIDES
    config: dict = field(default_factory=dict)  # .hydra/config.yaml flattened to dotted keys, the same keys left out
    _times: dict | None = field(default=None, repr=False)

    @property
    def train_rows(self) -> list[dict]:
        return [r for r in self.rows if "loss" in r]

    @property
    def language_model(self) -> bool:
        """Scored by validation loss per token (its rows say so before its first evaluation: tokens_per_s)."""
        return "val_loss" in self.summary or any("val_loss" in r or "tokens_per_s" in r for r in self.rows)

    def times(self) -> dict[int, float]:
        """Seconds of training up to each logged training step (worked out once).

        The rows' time_s, else: each row's samples_per_s covers the steps since the previous
        row, over the time since that row (or since the last evaluation ended), so the sum is
        the training time. Empty when neither is there.
        """
        if self._times is None:
            rows, self._times = self.train_rows, {}
            if rows and all("time_s" in r for r in rows):
                self._times = {r["step"]: float(r["time_s"]) for r in rows}
            elif self.batch_size and all(r.get("samples_per_s") for r in rows):
                t, last = 0.0, 0
                for r in rows:
                    t += (r["step"] - last) * self.batch_size / r["samples_per_s"]
                    self._times[r["step"]], last = t, r["step"]
        return self._times

    def time_at(self, step: int, row: dict) -> float | None:
        if "time_s" in row:
            return float(row["time_s"])
        times = self.times()
        before = [s for s in times if s <= step]
        return times[max(before)] if before else None


def find_runs(root: Path) -> list[Run]:
    """Every run directory at or under `root`, sorted by path."""
    dirs = sorted({p.parent for p in Path(root).rglob("metrics.jsonl")})  # `root` itself first
    return [load_run(d) for d in dirs if (d / "summary.json").is_file()]


def load_run(d: Path) -> Run:
    summary = json.loads((d / "summary.json").read_text())
    by_key = {}
    for line in filter(None, map(str.strip, (d / "metrics.jsonl").read_text().splitlines())):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut short by a crash
        if "step" in row:  # a resumed run logs some steps again: the last row wins
            by_key[(row["step"], _evaluation(row), "loss" in row)] = row
    rows = sorted(by_key.values(), key=lambda r: (r["step"], _evaluation(r)))
    run = Run(d, summary, rows)
    from omegaconf import OmegaConf

    cfg, ovr = d / ".hydra" / "config.yaml", d / ".hydra" / "overrides.yaml"
    with contextlib.suppress(Exception):  # an unreadable config: no settings, no batch size
        if cfg.is_file():
            raw = OmegaConf.to_container(OmegaConf.load(cfg), resolve=False)
            run.batch_size = int(raw.get("batch_size"))
            run.config = {k: v for k, v in _flatten(raw).items() if not _ignored(k) and k != "algo.name"}
    with contextlib.suppress(Exception):
        if ovr.is_file():
            for o in OmegaConf.to_container(OmegaConf.load(ovr)):
                key, _, value = str(o).partition("=")
                key = key.lstrip("+~")
                if not _ignored(key):
                    run.overrides[key] = value
    return run


def _evaluation(row: dict) -> bool:
    return any(k in row for k in EVAL_KEYS)


def _ignored(key: str) -> bool:
    return any(key == i or (i.endswith(".") and key.startswith(i)) for i in IGNORED_OVERRIDES)


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else str(v)
    return out


def labels(runs: list[Run]) -> list[str]:
    """A line's name per run: algo, splits, and the settings that differ between runs.

    Settings come from each run's saved config, or from its overrides where a run has none.
    """
    from_config = all(r.config for r in runs)
    settings = [r.config for r in runs] if from_config else [r.overrides for r in runs]
    keys = sorted({k for s in settings for k in s})
    # A saved config holds only its own algorithm's algo.* keys: a key some runs lack does not vary.
    varying = [k for k in keys
               if len({s[k] for s in settings if k in s} if from_config else {s.get(k) for s in settings}) > 1]
    out = []
    for r, s in zip(runs, settings):
        # a setting a run leaves unset (None: e.g. threads_per_rank, chosen at start-up) or a switch it
        # leaves off names nothing: "fr K=4 algo.weight_prediction=True" beside "fr K=4"
        extra = " ".join(f"{k}={s[k]}" for k in varying if k in s and s[k] not in (None, "None", False, "False"))
        out.append(f"{r.summary.get('algo', '?')} K={r.summary.get('splits', '?')}" + (f" {extra}" if extra else ""))
    return out


def lines(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs grouped into the lines of the figures, by `labels`; seeds are counted in the name."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run, label in zip(runs, labels(runs)):
        groups[label].append(run)
    return {(f"{k} ({len(v)} seeds)" if len({r.summary.get('seed') for r in v}) > 1 else k): v
            for k, v in groups.items()}


def _mean_std(values: list) -> str:
    values = [float(v) for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.4f}" if values else ""
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"  # sample std


def _short(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:.1e}"  # a diverging run's sigma can be huge


def line_table(runs: list[Run]) -> str:
    """One markdown row per line of the figures: test accuracy (a language model's final and best
    validation loss) and final training loss as mean ± sample standard deviation over its runs
    that finished (failed ones are counted), samples/s (tokens/s), each stage's peak activation
    memory (the largest over its runs), and the whole model's sufficient-direction sigma over all
    its measurements (when the runs had `diag_every`). A table of both kinds has both columns."""
    language_models, classifiers = any(r.language_model for r in runs), not all(r.language_model for r in runs)
    scores = ["test_acc"] * classifiers + ["val_loss", "best_val_loss"] * language_models
    speeds = [("samples_per_s", "samples/s")] * classifiers + [("tokens_per_s", "tokens/s")] * language_models
    header = ["line", "runs", *scores, "final_train_loss", *(name for _, name in speeds),
              "peak activations MiB per stage", "sigma mean (min)"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, group in lines(runs).items():
        mem = [max(m) for m in zip(*[[s.get("peak_mem_bytes") or 0 for s in r.summary["stages"]]
                                     for r in group if r.summary.get("stages")])]
        failed = sum(r.summary.get("status") != "ok" for r in group)  # e.g. a non-finite loss: no score
        cells = [label, f"{len(group)}, {failed} failed" if failed else str(len(group)),
                 *(_mean_std([r.summary.get(key) for r in group]) for key in [*scores, "final_train_loss"])]
        for key, _ in speeds:
            speed = [r.summary[key] for r in group if r.summary.get(key)]
            cells.append(f"{sum(speed) / len(speed):.0f}" if speed else "")
        cells.append("/".join(f"{m / 2**20:.1f}" for m in mem))
        sigma = [row["sigma"] for r in group for row in r.rows if isinstance(row.get("sigma"), (int, float))]
        cells.append(f"{_short(sum(sigma) / len(sigma))} ({_short(min(sigma))})" if sigma else "")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _mean_curves(groups: dict[str, list[Run]], points) -> dict[str, tuple[list, list]]:
    """Per group, x and y averaged over the group's runs; `points(run)` yields (key, x, y)."""
    curves = {}
    for label, runs in groups.items():
        acc = defaultdict(list)
        for run in runs:
            for key, x, y in points(run):
                if x is not None and y is not None:
                    acc[key].append((x, y))
        if acc:  # per key the mean x and the mean y
            means = [[sum(v) / len(v) for v in zip(*acc[k])] for k in sorted(acc)]
            curves[label] = tuple(map(list, zip(*means)))
    return curves


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def _figure(path: Path, curves: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
            perplexity: bool = False) -> Path | None:
    """One figure of `curves`; `perplexity`: the y values are losses per token, exp(y) is read on the right."""
    if not curves:
        return None
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if perplexity:
        import numpy as np

        # clipped both ways: the axis maps every tick, not only the data's, and exp overflows past 709 (log of 0)
        axis = ax.secondary_yaxis("right", functions=(lambda y: np.exp(np.minimum(y, 700.0)),
                                                      lambda ppl: np.log(np.maximum(ppl, 1e-300))))
        axis.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _panels(path: Path, panels: dict[str, dict[str, tuple[list, list]]], xlabel: str, ylabel: str,
            title: str) -> Path | None:
    """One panel of curves per line (a figure of its own when there is one line)."""
    if len(panels) <= 1:
        return _figure(path, next(iter(panels.values()), {}), xlabel, ylabel, title)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharex=True)
    for ax, (label, curves) in zip(axes.flat, panels.items()):
        for key, (xs, ys) in curves.items():
            ax.plot(xs, ys, label=key, linewidth=1.5 if key == ylabel else 1.0)
        ax.set_title(label, fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.suptitle(title)
    return _save(fig, path)


def _step(run: Run, row: dict) -> int:
    return row["step"]


def _points(y: str, x=_step):
    """`_mean_curves`'s points of the figure of key `y`: (step, x, y) of each row of a run holding `y`."""
    return lambda run: ((row["step"], x(run, row), row[y]) for row in run.rows if y in row)


# (file name, y key, x of a row, x label, y label, title): the figures of every plot
FIGURES = (("loss_vs_step", "loss", _step, "step", "training loss", "Training loss"),
           ("loss_vs_time", "loss", lambda run, row: run.times().get(row["step"]), "training time (s)",
            "training loss", "Training loss against time"),
           ("test_acc_vs_epoch", "test_acc", lambda run, row: row.get("epoch"), "epoch", "test accuracy",
            "Test accuracy"),
           ("test_acc_vs_time", "test_acc", lambda run, row: run.time_at(row["step"], row), "training time (s)",
            "test accuracy", "Test accuracy against time"),
           ("val_loss_vs_step", "val_loss", _step, "step", "validation loss per token", "Validation loss"),
           ("val_loss_vs_time", "val_loss", lambda run, row: run.time_at(row["step"], row), "training time (s)",
            "validation loss per token", "Validation loss against time"))


def plot(runs: list[Run], root: Path) -> list[Path]:
    """Draw the PNG files of `runs` into the directory `root`; their paths."""
    root = Path(root)
    if not runs:
        return []
    named = lines(runs)
    written = [_figure(root / f"{name}.png", _mean_curves(named, _points(y, x)), xlabel, ylabel, title,
                       perplexity=y == "val_loss")
               for name, y, x, xlabel, ylabel, title in FIGURES]
    for prefix in DIAG_PREFIXES:
        keys = sorted({k for r in runs for row in r.rows for k, v in row.items()
                       if k.startswith(prefix) and isinstance(v, (int, float)) and not isinstance(v, bool)})
        if not keys:
            continue
        panels = {}  # one panel per line: its stages' curves ("sigma" alone is the whole model)
        for label, runs_ in named.items():
            panel = {k: c for key in keys for k, c in _mean_curves({key: runs_}, _points(key)).items()}
            if panel:
                panels[label] = panel
        written.append(_panels(root / f"{prefix}_vs_step.png", panels, "step", prefix, f"{prefix} per stage"))
    return [p for p in written if p is not None]


def table(runs: list[Run], root: Path) -> str:
    """The runs as the sweep's results table (fr_dist.launch), in markdown."""
    from fr_dist.tools.launch import markdown_table, summary_row

    rows = []
    for run in runs:
        rel = run.path.relative_to(root) if run.path.is_relative_to(root) else run.path
        rows.append({"point": str(rel), **summary_row(run.summary),
                     "overrides": " ".join(f"{k}={v}" for k, v in run.overrides.items())})
    return markdown_table(rows, only_varying=True)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m fr_dist.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="keep the runs whose summary.json has KEY equal to VALUE (e.g. algo=fr); repeatable")
    p.add_argument("--out", type=Path, help="write the PNG files here instead of into each path")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    only = [o.partition("=")[::2] for o in a.only]
    if any(not k or not v for k, v in only):
        print(f"[plot] error: --only takes KEY=VALUE, got {' '.join(a.only)}", file=sys.stderr)
        return 1
    status = 0
    for root in a.paths:
        if not root.is_dir():
            print(f"[plot] error: {root} is not a directory", file=sys.stderr)
            status = 1
            continue
        runs = [r for r in find_runs(root) if all(str(r.summary.get(k)) == v for k, v in only)]
        if not runs:
            print(f"[plot] error: no run directory (metrics.jsonl and summary.json) under {root}"
                  + (f" with {' '.join(a.only)}" if only else ""), file=sys.stderr)
            status = 1
            continue
        print(table(runs, root), end="")
        print(line_table(runs), end="")
        out = a.out or root
        out.mkdir(parents=True, exist_ok=True)
        for path in plot(runs, out):
            print(f"[plot] wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
