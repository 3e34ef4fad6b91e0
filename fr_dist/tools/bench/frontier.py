"""The frontier a user chooses from: throughput against peak activation memory per stage.

    python -m fr_dist.bench --frontier               # ResNet-20, batch 128, K = 2, M = 1, 2, 4, 8, 16
    python -m fr_dist.bench --frontier --quick       # smoke test

One torchrun job per point, K = 2 ranks x 1 thread, the throughput benchmark's model, data
and cuts (FR's profiled cut, the pipelines' own; the schedules with virtual stages cut
K x V chunks uniformly, the only partition they take). The points: FR with
``algo.replay_chunks=M``, and every schedule of torch.distributed.pipelining with M
micro-batches, with recompute (``algo.checkpoint``) off and on where the schedule allows
it. A combination the trainer refuses is listed with its one-line reason. A point is on
the frontier when no other point is at least as fast with at most its memory (the larger
of the stages' peaks, the stage a user must fit).

Each point is also predicted by the simulator (``fr_dist.tools.simulate``) from the
profile at the batch and at each micro-batch size, and the same simulator predicts every
point at K = 4 and 8 on a deeper model, which 2 cores cannot measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fr_dist.algos.pipe import SCHEDULES, SINGLE
from fr_dist.config import SPLIT_BACKWARD, check_microbatches
from fr_dist.errors import FRError

PIPELINES = tuple(SCHEDULES)
V = 2  # chunks per rank of the virtual schedules (zbv and dualpipev take exactly 2)


@dataclass(frozen=True)
class Point:
    """One configuration on the frontier: an algorithm, its M, recompute on or off."""

    algo: str
    M: int
    recompute: bool = False

    @property
    def name(self) -> str:
        return f"{self.algo}_M{self.M}" + ("_ckpt" if self.recompute else "")

    @property
    def label(self) -> str:
        what = f"replay_chunks={self.M}" if self.algo == "fr" else f"M={self.M}"
        return f"{self.algo} {what}" + (" recompute" if self.recompute else "")

    def overrides(self, fr_cut: int, pipe_cut: int) -> list[str]:
        out = [f"algo={self.algo}", "splits=2", "threads_per_rank=1"]
        if self.algo == "fr":
            return out + [f"algo.replay_chunks={self.M}", f"partition=[{fr_cut}]"]
        out += [f"microbatches={self.M}", f"algo.checkpoint={str(self.recompute).lower()}"]
        return out + ([f"partition=[{pipe_cut}]"] if self.algo in SINGLE else [f"algo.virtual={V}"])


def points(Ms, algos=("fr", *PIPELINES)) -> list[Point]:
    """Every point of `algos` with each M of `Ms`, recompute off and on (the split-backward schedules refuse it)."""
    unknown = [a for a in algos if a not in ("fr", *PIPELINES)]
    if unknown:
        raise FRError(f"the frontier takes fr and {', '.join(PIPELINES)}, not {', '.join(unknown)}")
    out = []
    for algo in algos:
        recompute = (False,) if algo == "fr" or algo in SPLIT_BACKWARD else (False, True)
        out += [Point(algo, M, r) for r in recompute for M in Ms]
    return out


def predict_point(p: Point, K: int, batch_size: int, costs, mb_costs_of, links, cuts=None) -> float | None:
    """The simulator's s/batch for `p` with K stages; None where the trainer, torch or the simulator refuses it."""
    from fr_dist.tools.simulate import predict

    mb = mb_costs_of(p.M)
    try:
        if p.algo == "fr":
            return predict(costs, K, links, "fr", cuts=cuts, replay_chunks=p.M, mb_costs=mb)
        check_microbatches(p.algo, p.M, batch_size, K, 1 if p.algo in SINGLE else V)  # the trainer's own rules
        return predict(costs, K, links, p.algo, M=p.M, cuts=cuts if p.algo in SINGLE else None, mb_costs=mb,
                       checkpoint=p.recompute, V=V)
    except (ValueError, FRError):  # a refused M, torch's refusal, too few blocks for K x V chunks
        return None


def on_frontier(rows: list[dict]) -> list[bool]:
    """Per row: no other measured row is at least as fast with at most its memory, and better in one."""
    def key(r):
        return (r.get("samples_per_s"), max(r["peak_mem_bytes"]) if r.get("peak_mem_bytes") else None)

    out = []
    for r in rows:
        s, m = key(r)
        if s is None or m is None:
            out.append(False)
            continue
        beaten = any(s2 is not None and m2 is not None and s2 >= s and m2 <= m and (s2 > s or m2 < m)
                     for s2, m2 in map(key, rows))
        out.append(not beaten)
    return out


def refusal(row: dict) -> str:
    """The one-line reason of a job that did not run (its `error`: the log's last lines)."""
    lines = [x.strip() for x in row.get("error", "").split(" | ")]
    said = [x.split("error:", 1)[1].strip() for x in lines if "error:" in x]
    return said[0] if said else (lines[-1] if lines else "")


def format_frontier(rows: list[dict]) -> str:
    lines = ["| point | samples/s | peak activations MiB per stage | max MiB | on the frontier | predicted samples/s "
             "| predicted/measured s/batch |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("samples_per_s"):
            lines.append(f"| {r['label']} | did not run: {r.get('refused', '')} | | | | | |")
            continue
        mem = [m / 2**20 for m in r["peak_mem_bytes"]]
        pred = r.get("predicted_samples_per_s")
        eff = r["samples_per_s"] / pred if pred else None
        lines.append(f"| {r['label']} | {r['samples_per_s']:.1f}{' (disturbed)' if r.get('disturbed') else ''} | "
                     f"{'/'.join(f'{m:.0f}' for m in mem)} | "
                     f"{max(mem):.0f} | {'**yes**' if r.get('frontier') else ''} | "
                     f"{'' if pred is None else f'{pred:.1f}'} | {'' if eff is None else f'{eff:.0%}'} |")
    return "\n".join(lines) + "\n"


def format_predictions(table: dict) -> str:
    """Rows of {K: {label: speedup}}: the predicted speedup over one-worker BP per point and K."""
    Ks = sorted(table)
    labels = list(dict.fromkeys(lbl for K in Ks for lbl in table[K]))
    lines = ["| point | " + " | ".join(f"K={K}" for K in Ks) + " |", "|---|" + "---|" * len(Ks)]
    for lbl in labels:
        cells = [table[K].get(lbl) for K in Ks]
        lines.append(f"| {lbl} | " + " | ".join("" if c is None else f"{c:.2f}x" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_frontier(rows: list[dict], path: Path) -> Path:
    from fr_dist.tools.plot import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    measured = [r for r in rows if r.get("samples_per_s")]
    for algo in dict.fromkeys(r["algo"] for r in measured):
        for recompute in (False, True):
            group = [r for r in measured if r["algo"] == algo and r["recompute"] == recompute]
            if group:
                ax.plot([max(r["peak_mem_bytes"]) / 2**20 for r in group], [r["samples_per_s"] for r in group],
                        marker="s" if recompute else "o", linestyle=":" if recompute else "-", linewidth=1,
                        label=f"{algo}{' recompute' if recompute else ''}")
                for r in group:
                    ax.annotate(str(r["M"]), (max(r["peak_mem_bytes"]) / 2**20, r["samples_per_s"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
    best = sorted((r for r in measured if r.get("frontier")), key=lambda r: max(r["peak_mem_bytes"]))
    if best:
        ax.step([max(r["peak_mem_bytes"]) / 2**20 for r in best], [r["samples_per_s"] for r in best], where="post",
                color="black", linewidth=2, alpha=0.3, label="frontier")
    ax.set_xscale("log")
    ax.set_xlabel("peak activation memory of the larger stage (MiB, log scale)")
    ax.set_ylabel("samples/s (training)")
    ax.set_title("Throughput against memory, K = 2 (labels: M micro-batches or replay chunks)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the points fill the axes
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _costs_by_m(model: str, a, Ms, known: dict) -> dict:
    """{M: block costs profiled at batch / M}, each size profiled once; `known`: {size: costs} already profiled."""
    from fr_dist.tools.bench.profiling import profile

    by_size = dict(known)
    for size in sorted({a.batch_size // M for M in Ms} - set(by_size)):
        by_size[size] = profile(model, a.shape, size, a.warmup, a.iters).costs
    return {M: by_size[a.batch_size // M] for M in Ms}


def predicted_scaling(a, Ms, algos, Ks=(4, 8)) -> dict:
    """{model: {K: {label: predicted speedup over one-worker BP}}} on `a.scaling_models`' first model."""
    from fr_dist.tools.bench.profiling import profile

    models = [m for m in a.scaling_models.split(",") if m][:1]
    out = {}
    for model in models:
        print(f"[bench] profiling {model} at batch {a.batch_size} and its micro-batch sizes for K = "
              f"{', '.join(map(str, Ks))}", flush=True)
        full = profile(model, a.shape, a.batch_size, a.warmup, a.iters)
        mb = _costs_by_m(model, a, Ms, {a.batch_size: full.costs})
        bp1 = sum(f + b for f, b in full.costs)
        out[model] = {}
        for K in Ks:
            row = {}
            for p in points(Ms, algos):
                s = predict_point(p, K, a.batch_size, full.costs, mb.get, full.link_costs())
                row[p.label] = None if s is None else bp1 / s
            out[model][K] = row
    return out


def run(a) -> int:
    """The frontier benchmark: profile, one job per point, the table, the plot and the predictions."""
    import json
    import sys
    from datetime import datetime, timezone

    from fr_dist.tools.bench.configs import common_overrides
    from fr_dist.tools.bench.profiling import plan
    from fr_dist.tools.bench.report import machine
    from fr_dist.tools.bench.runs import run_config

    try:
        Ms = [int(m) for m in a.frontier_m.split(",") if m]
        algos = [x for x in a.frontier_algos.split(",") if x]
        todo = points(Ms, algos)
    except (ValueError, FRError) as e:
        print(f"[bench] error: --frontier-m {a.frontier_m} --frontier-algos {a.frontier_algos}: {e}", file=sys.stderr)
        return 1
    pl = plan(a, ["fr2"])  # profiles the batch and batch / --microbatches: reused below
    mb = _costs_by_m(a.model, a, Ms, {a.batch_size: pl.costs, a.batch_size // a.microbatches: pl.mb_costs})
    workdir = Path(a.workdir or datetime.now().strftime("outputs/bench/frontier_%Y-%m-%d_%H-%M-%S")).resolve()
    base = common_overrides(a)
    rows = []
    for n, p in enumerate(todo, 1):
        row = run_config(a, p.name, base + p.overrides(pl.fr_cuts[1], pl.pipe_cuts[1]), workdir / p.name)
        row.update(algo=p.algo, M=p.M, recompute=p.recompute, label=p.label)
        if row.get("disturbed"):  # one run per point: keep it, marked in the table
            row["samples_per_s"] = row.pop("measured_samples_per_s", None)
        cuts = pl.fr_cuts if p.algo == "fr" else pl.pipe_cuts
        s = predict_point(p, 2, a.batch_size, pl.costs, mb.get, pl.links, cuts)
        row["predicted_samples_per_s"] = None if s is None else a.batch_size / s
        if not row.get("error"):
            print(f"[bench] {n}/{len(todo)} {p.label}: {row['samples_per_s']} samples/s, peak "
                  f"{[round(m / 2**20) for m in row['peak_mem_bytes']]} MiB", flush=True)
        else:
            row["refused"] = refusal(row)
            print(f"[bench] {n}/{len(todo)} {p.label}: did not run: {row['refused']}", flush=True)
        rows.append(row)
    for row, best in zip(rows, on_frontier(rows)):
        row["frontier"] = best
    scaling = predicted_scaling(a, Ms, algos)
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
           "args": {k: v for k, v in vars(a).items() if k != "burn"}, "profile": pl.summary, "rows": rows,
           "predicted_speedup": scaling}
    text = [f"## fr_dist frontier, {out['date']}",
            f"{out['machine']}; {a.model}, batch {a.batch_size}, synthetic {'x'.join(map(str, a.shape))}, K = 2, "
            f"{a.steps} steps per point, one run each.", "", format_frontier(rows)]
    for model, table in scaling.items():
        text += [f"Predicted speedup over one-worker BP, {model} (simulator, profiled costs at each micro-batch "
                 f"size):", "", format_predictions(table)]
    print("\n".join(text), flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    png = plot_frontier(rows, Path(a.out).with_suffix(".png"))
    print(f"[bench] wrote {a.out} and {png}; run directories in {workdir}", flush=True)
    unexpected = [r for r in rows if r.get("error") and not r.get("refused")]
    return 1 if unexpected else 0
