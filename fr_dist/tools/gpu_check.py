"""Check a GPU machine in at most 5 minutes: ``launch/gpu_check.sh`` (or ``python -m fr_dist.tools.gpu_check``).

    python -m fr_dist.tools.gpu_check [--out gpu_check.json] [--parts smoke,staged,...]
    python -m fr_dist.tools.gpu_check --cpu            # every part that needs no GPU, on the CPU
    python -m fr_dist.tools.gpu_check --fetch-wheels   # the wheels an offline GPU node lacks

The parts run one after another, each in its own process with a time cap (its whole process
group is killed at the cap); the JSON is rewritten after every part, and every part writes
each check as it finishes, so a part that times out still leaves what it had measured:
- smoke: imports (torch, fr_dist, hydra, omegaconf), versions, the GPU and a matmul on it;
- gpu_tests: the suite's GPU tests, ``pytest -m gpu``;
- staged: FR K = 2 and 4 on one GPU through the staged transport (device=cuda transport=gloo),
  each run twice under deterministic=true and compared bit for bit, and with the CPU simulator;
- single: K = 1 on NCCL in fp32 (against CPU backprop), with precision=bf16 and compile=true
  (skipped while this fr_dist has no such key);
- perf: the trainer's single-stage overhead against a plain PyTorch loop (ResNet-56, batch
  512; goal under 3%), FR K = 1..4 time-shared on one GPU, gpipe and 1f1b at K = 1.
With --cpu: smoke, staged (K = 2 on the CPU, where the simulator agrees bit for bit) and the
overhead with ResNet-8 at batch 64. The exit code is 0 when no part failed or timed out.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUDGET_S = 295  # the whole check on a GPU: the parts' caps, each plus GRACE_S, fit in it
GRACE_S = 2  # a part past its own deadline gets this long to write its last check before it is killed
PART_NAMES = ("smoke", "gpu_tests", "staged", "single", "perf")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m fr_dist.tools.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run the parts that need no GPU, on the CPU")
    p.add_argument("--out", default="gpu_check.json", help="the results (JSON; default gpu_check.json)")
    p.add_argument("--parts", default=",".join(PART_NAMES), help="comma list of " + ", ".join(PART_NAMES))
    p.add_argument("--cap", action="append", default=[], metavar="PART=S",
                   help="another time cap for a part, in seconds (the whole check stays within "
                        f"{BUDGET_S} s on a GPU)")
    p.add_argument("--workdir", default=None, help="run directories (default outputs/gpu_check/DATE_TIME)")
    p.add_argument("--fetch-wheels", action="store_true",
                   help="download the pure-Python wheels an offline GPU node lacks into --wheels, and exit")
    p.add_argument("--wheels", default=str(ROOT / ".gpu_wheels"), help="where --fetch-wheels puts them")
    p.add_argument("--pythons", default="3.10,3.11,3.12,3.13",
                   help="the Python versions the GPU node may run: --fetch-wheels gets the wheels for each")
    p.add_argument("--platform", default="manylinux2014_x86_64",
                   help="the GPU node's platform tag, for the compiled wheels (PyYAML)")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--part-out", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.parts = [n for n in a.parts.split(",") if n]
    unknown = [n for n in a.parts if n not in PART_NAMES]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}: choose from {', '.join(PART_NAMES)}")
    caps = {}
    for item in a.cap:
        name, _, seconds = item.partition("=")
        try:
            caps[name] = float(seconds)
        except ValueError:
            caps[name] = 0.0
        if name not in PART_NAMES or not caps[name] > 0:
            p.error(f"--cap {item}: give PART=SECONDS with a part of {', '.join(PART_NAMES)} and seconds > 0")
    a.cap = caps
    return a


def main(argv=None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    if a.fetch_wheels:
        return fetch_wheels(Path(a.wheels), [v for v in a.pythons.split(",") if v], a.platform)
    if a.part:
        from fr_dist.tools.gpu_parts import run_part

        return run_part(a.part, a.cpu, Path(a.part_out), Path(a.workdir), a.deadline - time.time())
    return check(a)


def check(a) -> int:
    from fr_dist.tools.gpu_jobs import run_capped
    from fr_dist.tools.gpu_parts import PARTS

    started = time.monotonic()
    os.environ["WANDB_MODE"] = "disabled"  # the trainer imports wandb only for offline/online
    if not a.cpu:  # one GPU: K stages share it, never spread over several
        os.environ["CUDA_VISIBLE_DEVICES"] = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    work = Path(a.workdir or datetime.now().strftime("outputs/gpu_check/%Y-%m-%d_%H-%M-%S")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    result = {"mode": "cpu" if a.cpu else "gpu", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "workdir": str(work), "parts": {}}
    for name in a.parts:
        cap = PARTS[name][2 if a.cpu else 1]
        cap = a.cap.get(name, cap) if cap is not None else None
        left = BUDGET_S - (time.monotonic() - started) - GRACE_S
        smoke = result["parts"].get("smoke")
        if cap is None:
            part = {"status": "skipped", "why": "needs a GPU"}
        elif smoke and smoke["status"] != "passed":
            part = {"status": "not run", "why": "the smoke test did not pass"}
        elif left < 5:
            part = {"status": "not run", "why": f"out of the {BUDGET_S} s budget"}
        else:
            part = run_one(name, a.cpu, min(cap, left), work, run_capped)
        result["parts"][name] = part
        result["wall_s"] = round(time.monotonic() - started, 1)
        result["ok"] = all(p["status"] in ("passed", "skipped") for p in result["parts"].values())
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, out)
        print(f"[gpu_check] {name}: {part['status']} ({part.get('seconds', 0)} s)", flush=True)
    print(table(result), flush=True)
    print(f"[gpu_check] wrote {out} in {result['wall_s']} s; run directories in {work}", flush=True)
    return 0 if result["ok"] else 1


def run_one(name: str, cpu: bool, cap: float, work: Path, run_capped) -> dict:
    """Part `name` in its own process, killed at `cap` + GRACE_S s; its status and checks."""
    part_out = work / f"{name}.json"
    deadline = time.time() + cap
    cmd = [sys.executable, "-m", "fr_dist.tools.gpu_check", "--part", name, "--part-out", str(part_out),
           "--workdir", str(work / name), "--deadline", str(deadline), *(["--cpu"] if cpu else [])]
    began = time.monotonic()
    rc = run_capped(cmd, work / f"{name}.log", cap + GRACE_S, cwd=ROOT)
    checks = json.loads(part_out.read_text())["checks"] if part_out.exists() else []
    part = {"cap_s": round(cap), "seconds": round(time.monotonic() - began, 1), "checks": checks}
    if rc == "timeout" or any(c.get("rc") == "timeout" for c in checks):  # killed, or its job was at its deadline
        part["status"] = "timeout"
    elif rc != 0 or any(c["ok"] is False for c in checks) or not checks:
        part["status"] = "failed"
        if not checks:
            lines = (work / f"{name}.log").read_text(errors="replace").splitlines()
            part["why"] = f"exit {rc}: " + " | ".join(lines[-3:])[-600:]
    elif all("skipped" in c for c in checks):
        part["status"] = "skipped"
    else:
        part["status"] = "passed"
    return part


def table(result: dict) -> str:
    """The markdown table: one row per check (a part without checks: one row)."""
    lines = [f"GPU check ({result['mode']}), {result['date']}, {result.get('wall_s')} s", "",
             "| part | check | result | figures |", "|---|---|---|---|"]
    for name, part in result["parts"].items():
        status = part["status"]
        if not part.get("checks"):
            lines.append(f"| {name} | | {status} | {part.get('why', '')} |")
        for c in part.get("checks", []):
            verdict = "skipped" if "skipped" in c else {True: "pass", False: "FAIL", None: "measured"}[c["ok"]]
            shown = {k: v for k, v in c.items() if k not in ("name", "ok", "log") and v is not None}
            figures = ", ".join(f"{k} {_short(v)}" for k, v in shown.items())
            lines.append(f"| {name} | {c['name']} | {verdict} | {figures} |")
        if status == "timeout":
            lines.append(f"| {name} | (timed out after {part['cap_s']} s) | timeout | |")
    return "\n".join(lines)


def _short(v) -> str:
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return (text[:160] + "...").replace("|", "/") if len(text) > 160 else text.replace("|", "/")


def pinned() -> dict:
    """setup.cfg's requirements by name: {"hydra-core": "hydra-core==1.3.8", ...}."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = cfg["options"]["install_requires"].split() + cfg["options.extras_require"]["test"].split()
    return {r.split("=")[0].split(">")[0].split("<")[0]: r for r in reqs}


# pytest's dependencies on Python < 3.11: pip evaluates environment markers for its own
# interpreter, not for --python-version, so they are named here.
OLD_PYTEST = ["exceptiongroup", "tomli", "typing-extensions"]


def _older(version: str, than: str) -> bool:
    return tuple(map(int, version.split("."))) < tuple(map(int, than.split(".")))


def fetch_wheels(dest: Path, pythons: list[str], platform: str) -> int:
    """The wheels the offline GPU node lacks, into `dest`, with `dest`/requirements.txt.

    hydra-core and omegaconf as setup.cfg pins them, tqdm and pytest, with their dependencies
    for each Python version of `pythons` on `platform` (pure-Python wheels but PyYAML's and
    tomli's, Python 3.10 only). antlr4-python3-runtime is an sdist on the registry: it is built into a
    pure-Python wheel here first. Not wandb: its wheel is about 20 MB with a compiled service,
    and the check runs with wandb.mode=disabled, for which fr_dist never imports it. Nor torch:
    the node keeps its own.
    """
    pins = pinned()
    reqs = [pins["hydra-core"], pins["omegaconf"], pins["tqdm"], pins["pytest"]]
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    steps = [[*pip, "wheel", "--quiet", "-w", str(dest), pins["hydra-core"], pins["omegaconf"]]]
    steps += [[*pip, "download", "--quiet", "--only-binary=:all:", "--python-version", py, "--platform", platform,
               "--find-links", str(dest), "-d", str(dest), *reqs, *(OLD_PYTEST if _older(py, "3.11") else [])]
              for py in pythons]
    for step in steps:
        if subprocess.run(step, check=False).returncode:
            print(f"[gpu_check] error: pip {' '.join(step[4:])} failed (is the package registry reachable?)",
                  file=sys.stderr)
            return 1
    forbidden = [w.name for w in dest.glob("*.whl") if w.name.lower().startswith(("torch-", "nvidia", "wandb-"))]
    if forbidden:
        print(f"[gpu_check] error: {forbidden} in {dest}: the node keeps its own torch; remove them", file=sys.stderr)
        return 1
    (dest / "requirements.txt").write_text("\n".join(reqs) + "\n")
    wheels = sorted(dest.glob("*.whl"))
    for w in wheels:
        print(f"{w.stat().st_size / 1e6:8.2f} MB  {w.name}")
    total = sum(w.stat().st_size for w in wheels) / 1e6
    print(f"[gpu_check] {len(wheels)} wheels, {total:.1f} MB in {dest}: copy the checkout with it to the GPU node "
          f"and run launch/gpu_check.sh there", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
