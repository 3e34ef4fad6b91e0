"""Steps 3 and 4 of the benchmark: medians, within-round ratios, the table and the printed report."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

# (configuration or configurations, label): FR K=2's throughput over theirs (the faster one of a tuple)
FR_RATIOS = (("bp1", "FR K=2 / BP 1 thread"), ("bp2", "FR K=2 / BP 2 threads"),
             ("gpipe2", "FR K=2 / GPipe"), ("1f1b2", "FR K=2 / 1F1B"),
             (("gpipe2", "1f1b2"), "FR K=2 / faster of GPipe, 1F1B"),
             (("gpipe2c", "1f1b2c"), "FR K=2 / faster of GPipe, 1F1B with checkpointing"))


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(rounds: list[dict[str, dict]], names: list[str], batch_size: int, predicted,
              base: str = "bp1") -> list[dict]:
    """One row per configuration: medians over rounds and within-round ratios.

    `predicted`: {name: s/iter}, or one such dict per round (a profile taken just
    before that round's runs); efficiency is then the median over rounds of that
    round's prediction / its measurement, and `predicted_vs_base` the predicted
    speedup over `base` (median over rounds).
    """
    per_round = predicted if isinstance(predicted, list) else [predicted] * len(rounds)
    rows = []
    for name in names:
        runs = [r[name] for r in rounds if name in r and r[name].get("samples_per_s")]
        sps = median([r["samples_per_s"] for r in runs])
        ratio = median([r[name]["samples_per_s"] / r[base]["samples_per_s"] for r in rounds
                        if r.get(name, {}).get("samples_per_s") and r.get(base, {}).get("samples_per_s")])
        s_iter = batch_size / sps if sps else None
        effs, pred_ratio = [], []
        for r, pr in zip(rounds, per_round):
            if pr.get(name) and r.get(name, {}).get("samples_per_s"):
                effs.append(pr[name] / (batch_size / r[name]["samples_per_s"]))
            if pr.get(name) and pr.get(base):
                pred_ratio.append(pr[base] / pr[name])
        pred = median([pr.get(name) for pr in per_round])
        row = {"name": name, "runs": len(runs), "samples_per_s": sps,
               "samples_per_s_all": [r["samples_per_s"] for r in runs],
               "steady_samples_per_s": median([r.get("steady_samples_per_s") for r in runs]),
               "s_per_iter": s_iter, f"vs_{base}": ratio, "predicted_s_per_iter": pred,
               f"predicted_vs_{base}": median(pred_ratio), "efficiency": median(effs),
               "busy_frac": [median(list(x)) for x in zip(*[r["busy_frac"] for r in runs])] if runs else None,
               "peak_mem_bytes": runs[0]["peak_mem_bytes"] if runs else None,
               "partition": runs[0].get("partition") if runs else None}
        rows.append(row)
    return rows


def pair_ratio(rounds, a: str, b) -> float | None:
    """Median over rounds of throughput(a) / throughput(best of b)."""
    b = [b] if isinstance(b, str) else list(b)
    out = []
    for r in rounds:
        if not r.get(a, {}).get("samples_per_s"):
            continue
        others = [r[x]["samples_per_s"] for x in b if r.get(x, {}).get("samples_per_s")]
        if others:
            out.append(r[a]["samples_per_s"] / max(others))
    return median(out)


def fr_ratios(rounds, names) -> dict:
    """{label: pair_ratio} of FR_RATIOS whose configurations all ran (FR K=2 among them)."""
    ratios = {}
    for other, label in FR_RATIOS:
        if "fr2" in names and all(o in names for o in ([other] if isinstance(other, str) else other)):
            ratios[label] = pair_ratio(rounds, "fr2", other)
    return ratios


def _f(v, fmt):
    return "" if v is None else format(v, fmt)


def format_table(rows: list[dict], labels: dict[str, str], base: str = "bp1") -> str:
    lines = ["| configuration | runs | samples/s | s/iter | vs BP 1 thread | predicted vs BP 1 thread "
             "| predicted s/iter | predicted/measured | busy_frac per stage | peak activations MB per stage |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        busy = "/".join(_f(b, ".2f") for b in r["busy_frac"] or [])
        mem = "/".join(_f(m / 2**20, ".0f") if m is not None else "" for m in r["peak_mem_bytes"] or [])
        vs, pvs = r.get(f"vs_{base}"), r.get(f"predicted_vs_{base}")
        lines.append(f"| {labels.get(r['name'], r['name'])} | {r.get('runs', '')} | {_f(r['samples_per_s'], '.1f')} | "
                     f"{_f(r['s_per_iter'], '.3f')} | {_f(vs, '.2f')}x | {_f(pvs, '.2f')}{'x' if pvs else ''} | "
                     f"{_f(r['predicted_s_per_iter'], '.3f')} | {_f(r['efficiency'], '.0%')} | {busy} | {mem} |")
    return "\n".join(lines) + "\n"


def report(out, rows, labels, ratios, scaling, a, base_name="bp1") -> str:
    """The printed report: the table, the ratios, the profile and the predicted scaling."""
    from fr_dist.tools.simulate import format_scaling

    p = out["profile"]
    lines = [f"## fr_dist benchmark, {out['date']}",
             f"{out['machine']}; {a.model}, batch {a.batch_size}, synthetic {'x'.join(map(str, a.shape))}, "
             f"{a.steps} steps per run, median of {a.repeats} run(s); ratios within a round, median over rounds.",
             "", format_table(rows, labels, base_name)]
    if ratios:
        lines.append("Ratios (throughput, measured in the same round): " + "; ".join(
            f"{k} {_f(v, '.2f')}x" for k, v in ratios.items()))
    fr = next((r for r in rows if r["name"] == "fr2"), None)
    if fr and fr.get(f"vs_{base_name}") and fr.get(f"predicted_vs_{base_name}"):
        vs, pvs = fr[f"vs_{base_name}"], fr[f"predicted_vs_{base_name}"]
        lines.append(f"FR K=2: {vs:.2f}x BP 1 thread measured, {pvs:.2f}x predicted ({vs / pvs:.0%} of the predicted "
                     f"speedup); time efficiency (predicted / measured s/iter, per round) "
                     f"{_f(fr['efficiency'], '.0%')}.")
    fr_cut = p["fr_cuts"][1]
    lines.append(
        f"Profile (1 thread, idle machine): BP one worker {p['bp1_s']:.3f} s/batch; FR K=2 cut {fr_cut}, stage costs "
        f"{'/'.join(f'{c:.3f}' for c in p['fr_stage_costs'])} s, predicted "
        f"{p['fr2_by_cut'][fr_cut]:.3f} s/batch = {p['bp1_s'] / p['fr2_by_cut'][fr_cut]:.2f}x BP; "
        f"link {p['link_costs'][fr_cut] * 1e3:.1f} ms at the cut. A cut inside a residual block (modelled: "
        f"halves of equal cost, features + residual sent) would allow {p['half_block_fr2_s']:.3f} s/batch = "
        f"{p['bp1_s'] / p['half_block_fr2_s']:.2f}x BP (cut at block {p['half_block_cut']:g}).")
    if "contended_slowdown" in p:
        lines.append(f"With the other core busy a block costs {p['contended_slowdown']:.2f}x as much; FR K=2 predicted "
                     f"from that profile: {p['contended_fr2_s']:.3f} s/batch.")
    for model, s in scaling.items():
        lines += ["", format_scaling(s["rows"], f"Predicted scaling, {model} (simulator, profiled costs, best "
                                                f"partitions; BP = one worker):")]
        if s.get("replicas"):
            lines += ["", f"Predicted FR with replicas, {model} (K stages x D replicas, a ring all-reduce per stage "
                          f"on the loopback link model):", "", "| K | D | s per global batch | samples/s |",
                      "|---|---|---|---|"]
            lines += [f"| {r['K']} | {r['D']} | {r['s_per_global_batch']:.3f} | {r['samples_per_s']:.0f} |"
                      for r in s["replicas"]]
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores {cpu}, torch {torch.__version__}, Python {platform.python_version()}"
