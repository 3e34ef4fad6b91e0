"""The parts of the GPU check, each run in its own process by tools/gpu_check.py.

A part adds checks to its `Record`, which rewrites the part's JSON file after every one:
a part killed at its time cap still leaves what it had measured. A check is a dict with
"name", "ok" (True, False, or None for a figure that passes or fails nothing) and its
figures; "skipped" says why a check did not run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from fr_dist.tools import gpu_jobs as jobs

# Parameters after a GPU run against the CPU simulator: relative 1e-3 of each tensor's
# largest magnitude (+1e-6 for tensors near zero). A tiny MLP trained in fp32 with TF32 off
# (deterministic=true) for 16 SGD steps: GPU and CPU kernels reduce in other orders, about
# 1e-7 relative per operation, and a few steps of a well-conditioned MLP amplify that to
# 1e-6..1e-5; a real fault (a stale or missing gradient, a skipped step, a swapped batch)
# moves the parameters by lr * |g|, 1e-2 relative or more. The check also reports how far
# training moved them ("moved_rel"), which must exceed the tolerance tenfold.
RTOL, ATOL = 1e-3, 1e-6
# bf16 against fp32: per-step losses within 5% (bf16 keeps 8 mantissa bits, 4e-3 relative
# rounding per operation; fp32 master weights keep 16 steps from drifting further).
BF16_LOSS_RTOL = 0.05
# The trainer's single-stage overhead against the plain loop (samples/s of summary.json).
OVERHEAD_GOAL = 0.03

# A tiny seeded MLP run: 4 blocks (K <= 4), 16 steps, no dropout (CUDA draws other masks than
# the CPU reference), one thread per rank (the CPU reference's reduction order).
TINY = ["algo=fr", "model=mlp", "model.hidden=[32,32,32]", "model.dropout=0.0", "data.shape=[1,8,8]",
        "data.classes=4", "data.train_size=256", "data.test_size=64", "batch_size=16", "epochs=1", "seed=3",
        "optim.lr=0.05", "log_every=1", "threads_per_rank=1", "deterministic=true"]


class Record:
    """A part's checks, written to `path` after each one."""

    def __init__(self, path: Path, deadline: float):
        self.path, self.deadline, self.checks = path, deadline, []
        self.write()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, name: str, ok, **figures) -> dict:
        check = {"name": name, "ok": ok, **figures}
        self.checks.append(check)
        self.write()
        return check

    def skip(self, name: str, why: str) -> None:
        self.add(name, None, skipped=why)

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"checks": self.checks}, indent=1) + "\n")
        os.replace(tmp, self.path)


def smoke(rec: Record, cpu: bool, work: Path) -> None:
    """Imports, versions, the GPU: what every other part needs."""
    started = time.perf_counter()
    import hydra
    import omegaconf
    import torch

    import fr_dist
    import fr_dist.train  # the trainer's own imports

    figures = {"import_s": round(time.perf_counter() - started, 2), "python": sys.version.split()[0],
               "torch": torch.__version__, "hydra": hydra.__version__, "omegaconf": omegaconf.__version__,
               "fr_dist": str(Path(fr_dist.__file__).parent), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        figures.update(device_name=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                       cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported(),
                       nccl=torch.distributed.is_nccl_available())
        x = torch.randn(256, 256, device="cuda")
        figures["matmul_ok"] = bool(torch.isfinite(x @ x).all().item())  # the kernels run on this GPU
    ok = True if cpu else figures["cuda_available"] and figures.get("matmul_ok", False)
    rec.add("imports and device", ok, **figures)


def gpu_tests(rec: Record, cpu: bool, work: Path) -> None:
    """The suite's GPU tests: pytest -m gpu, with this machine's GPUs."""
    import re

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    rc = jobs.run_capped(cmd, work / "pytest.log", rec.left() - 2, cwd=root)
    lines = (work / "pytest.log").read_text(errors="replace").splitlines()
    last = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed|error)", line)),
                lines[-1] if lines else "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    ok = rc == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped")  # a GPU node skips none
    rec.add("pytest -m gpu", ok, rc=rc, result=last, log=str(work / "pytest.log"))


def _device(cpu: bool) -> list[str]:
    return ["device=cpu"] if cpu else ["device=cuda", "transport=gloo"]


def staged(rec: Record, cpu: bool, work: Path) -> None:
    """FR on one GPU through the staged transport: repeats bit for bit, equals the CPU simulator.

    On the CPU (--cpu) the ranks run the simulator's kernels with one thread each, so the
    reference must agree bit for bit there (tolerance 0).
    """
    rtol, atol = (0.0, 0.0) if cpu else (RTOL, ATOL)
    device = "cpu" if cpu else "cuda"
    for K in (2,) if cpu else (2, 4):
        overrides = [*TINY, *_device(cpu)]
        runs = []
        for i in range(2):
            job = jobs.run_job([f"splits={K}", *overrides], work / f"fr{K}_{i}", rec.left())
            runs.append(job)
            if not jobs.job_ok(job, device):
                rec.add(f"FR K={K} {'CPU' if cpu else 'staged GPU'} run {i + 1}", False, rc=job["rc"],
                        error=job.get("error", f"status {(job['summary'] or {}).get('status')}"))
                break
        else:
            a, b = (jobs.final_states(work / f"fr{K}_{i}", K) for i in range(2))
            stages = runs[0]["summary"]["stages"]
            mem = [s.get("cuda_max_allocated_bytes") for s in stages]
            same = jobs.compare(a, b, 0.0, 0.0)
            rec.add(f"FR K={K} deterministic: two runs bit for bit", same["bitwise"],
                    seconds=[r["seconds"] for r in runs], samples_per_s=runs[0]["summary"]["samples_per_s"],
                    where=same["where"], **({} if cpu else {"cuda_max_allocated_bytes": mem}))
            if not cpu and not all(mem):
                rec.add(f"FR K={K} summary: cuda_max_allocated_bytes per stage", False, got=mem)
            initial, want, want_losses = jobs.reference(K, overrides)
            close = jobs.compare(a, want, rtol, atol)
            moved = jobs.compare(want, initial, 0.0, 0.0)["worst_rel"]
            ok = close["close"] and moved > 10 * rtol and len(runs[0]["losses"]) == len(want_losses)
            rec.add(f"FR K={K} equals the CPU simulator", ok, rtol=rtol, worst_rel=close["worst_rel"],
                    where=close["where"], moved_rel=moved, bitwise=close["bitwise"])


def single(rec: Record, cpu: bool, work: Path) -> None:
    """K = 1 on NCCL: fp32 against CPU backprop, bf16 against fp32, compile=true against CPU backprop."""
    overrides = [*TINY, "splits=1", "device=cuda", "transport=nccl"]
    fp32 = jobs.run_job(overrides, work / "nccl_fp32", rec.left())
    if not jobs.job_ok(fp32, "cuda"):
        rec.add("K=1 NCCL fp32", False, rc=fp32["rc"], error=fp32.get("error"))
        return
    _, want, _ = jobs.reference(1, TINY)
    close = jobs.compare(jobs.final_states(work / "nccl_fp32", 1), want, RTOL, ATOL)
    rec.add("K=1 NCCL fp32 equals CPU backprop", close["close"], rtol=RTOL, worst_rel=close["worst_rel"],
            where=close["where"], seconds=fp32["seconds"], samples_per_s=fp32["summary"]["samples_per_s"])
    for key, value in (("precision", "bf16"), ("compile", "true")):
        name = f"K=1 NCCL {key}={value}"
        verdict = jobs.refusal([*overrides, f"{key}={value}"], key)
        if verdict and verdict[0] == "unknown":
            rec.skip(name, f"part skipped: this fr_dist has no {key} key yet ({verdict[1]})")
            continue
        if verdict:
            rec.add(name, False, error=verdict[1])
            continue
        job = jobs.run_job([*overrides, f"{key}={value}"], work / f"nccl_{key}", rec.left())
        if not jobs.job_ok(job, "cuda"):
            rec.add(name, False, rc=job["rc"], error=job.get("error"))
        elif key == "precision":
            worst = max(abs(a - b) / abs(b) for a, b in zip(job["losses"], fp32["losses"], strict=True))
            rec.add(f"{name}: losses within {BF16_LOSS_RTOL:.0%} of fp32", worst <= BF16_LOSS_RTOL,
                    worst_loss_rel=round(worst, 4), seconds=job["seconds"])
        else:
            close = jobs.compare(jobs.final_states(work / f"nccl_{key}", 1), want, RTOL, ATOL)
            rec.add(f"{name} equals CPU backprop", close["close"], rtol=RTOL, worst_rel=close["worst_rel"],
                    where=close["where"], seconds=job["seconds"])


def perf_overrides(cpu: bool) -> list[str]:
    """The overrides of the throughput runs: ResNet-56 at 512 on a GPU, ResNet-8 at 64 on the CPU.

    Many steps over a small set (10 epochs, one evaluation at the end) keep the host memory
    and the start-up of each rank small.
    """
    B, steps, shape, model = (64, 20, "[3,16,16]", "resnet8") if cpu else (512, 100, "[3,32,32]", "resnet56")
    return [f"model={model}", f"data.shape={shape}", "data.classes=10", f"data.train_size={B * steps // 10}",
            f"data.test_size={B}", f"batch_size={B}", "epochs=10", f"max_steps={steps}", "eval_every=100",
            f"log_every={steps // 10}", "ckpt_every=0", "seed=0"]


def perf(rec: Record, cpu: bool, work: Path) -> None:
    """The trainer's single-stage overhead against a plain loop; FR K = 1..4 and gpipe/1f1b at K = 1."""
    # One thread on the CPU: on a shared 2-core machine 2 threads made the plain loop up to
    # 30x slower than 1 (and unsteady). On a GPU node the cores this process may use (not
    # os.cpu_count(), which counts the host's in a container), shared by the ranks.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = 1 if cpu else cores
    base = perf_overrides(cpu)
    device = "cpu" if cpu else "cuda"
    bp_over = [*base, "algo=bp", "splits=1", f"device={device}", f"threads_per_rank={threads}"]
    plain = jobs.plain_loop_in_process(bp_over, device, threads, work / "plain.json", rec.left())
    bp = jobs.run_job(bp_over, work / "bp1", rec.left())
    if "error" in plain or not jobs.job_ok(bp, device):
        rec.add("overhead: bp K=1 against a plain loop", False, error=plain.get("error") or bp.get("error"))
        return
    # Judged on synchronised clocks: the trainer's metrics windows after the first (each ends
    # after a device sync) against the plain loop after as many warm-up steps. summary.json's
    # figure is reported too; on a GPU its training time leaves out the work still queued at
    # each sync (runtime/loop.py times the host's launches), so it reads high.
    steady, plain_steady = jobs.steady_rate(bp), plain["steady_samples_per_s"]
    summary, plain_all = bp["summary"]["samples_per_s"], plain["samples_per_s"]
    overhead = 1 - steady / plain_steady if steady else None
    # The goal is for a GPU; a small model on a shared CPU measures fixed costs and noise.
    ok = None if cpu else overhead is not None and overhead < OVERHEAD_GOAL
    rec.add("overhead: bp K=1 against a plain loop", ok, goal=None if cpu else f"< {OVERHEAD_GOAL:.0%}",
            overhead=None if overhead is None else round(overhead, 4), trainer_samples_per_s=steady,
            plain_samples_per_s=plain_steady, summary_samples_per_s=summary, plain_all_steps_samples_per_s=plain_all,
            summary_overhead=round(1 - summary / plain_all, 4), plain_s=plain["seconds"], job_s=bp["seconds"])
    if cpu:
        return
    runs = [(f"fr K={K} (one GPU, staged)", ["algo=fr", f"splits={K}", "transport=gloo",
                                             f"threads_per_rank={max(1, cores // K)}"]) for K in (1, 2, 3, 4)]
    runs += [(f"{a} K=1 M=4", [f"algo={a}", "splits=1", "microbatches=4", f"threads_per_rank={cores}"])
             for a in ("gpipe", "1f1b")]
    for name, over in runs:
        job = jobs.run_job([*base, "device=cuda", *over], work / name.split(" (")[0].replace(" ", "_"), rec.left())
        if not jobs.job_ok(job, "cuda"):
            rec.add(f"throughput {name}", False, rc=job["rc"], error=job.get("error"))
            continue
        rate = jobs.steady_rate(job)
        rec.add(f"throughput {name}", None, samples_per_s=rate, vs_bp1=round(rate / steady, 3) if rate else None,
                summary_samples_per_s=job["summary"]["samples_per_s"], seconds=job["seconds"],
                busy_frac=[s["busy_frac"] for s in job["summary"]["stages"]])


# name: (function, cap in s on a GPU, cap in s with --cpu or None: not run there). On a GPU
# the caps, each plus gpu_check.GRACE_S, add up to gpu_check.BUDGET_S = 295 s: with start-up
# the whole check stays within 5 minutes.
PARTS = {"smoke": (smoke, 30, 30), "gpu_tests": (gpu_tests, 50, None), "staged": (staged, 50, 60),
         "single": (single, 65, None), "perf": (perf, 90, 45)}


def run_part(name: str, cpu: bool, out: Path, work: Path, cap: float) -> int:
    """Run part `name` into `out` (its JSON) with `cap` s; 0 unless it raised."""
    work.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = "disabled"
    rec = Record(out, time.monotonic() + cap)
    try:
        PARTS[name][0](rec, cpu, work)
    except Exception as e:  # a bug or a broken install: the part failed, with why
        rec.add(f"{name}: raised", False, error=f"{type(e).__name__}: {e}"[:600])
        return 1
    return 0

