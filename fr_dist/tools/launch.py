"""Launch training jobs as torchrun would, with one process per stage.

One job, run in this process:

    python -m fr_dist.launch +experiment=fashion_resnet20
    python -m fr_dist.launch splits=4 algo=fr model=resnet20 data=synthetic

A sweep (Hydra multirun over conf/launch.yaml): one torchrun job per point, one after
another, each in its own subprocess (`python -m fr_dist.launch POINT hydra.run.dir=DIR`,
with `--standalone` rendezvous on a free port) and its own run directory under the sweep
directory; a failed point becomes a row of the results and the sweep goes on:

    python -m fr_dist.launch -m splits=1,2,4 algo=fr,bp model=mlp data=synthetic

The sweep ends with results.csv and results.md in the sweep directory (one row per point,
from each point's summary.json) and exits 1 if any point failed.

The same sweep run again into the same directory (`hydra.sweep.dir=DIR`) skips every point
that finished (summary.json says ok and .hydra/overrides.yaml holds the point's overrides);
an interrupted or failed point runs again in its directory, continuing from its latest
checkpoint (resume=auto). A directory that holds a run of other overrides is removed first,
and so is every point's with FR_DIST_RERUN=1, which runs them all afresh.

The number of processes is `splits` x `replicas`. Unlike bare torchrun, a failure ends
with the failing rank's one-line message: torchrun's own report is not printed.
Configuration errors are found before anything starts: one line `[launch] error: ...`, exit 1.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fr_dist.compose import CONF_DIR, compose, one_line
from fr_dist.config import validate
from fr_dist.errors import FRError

ROWS_DIR = ".launch"  # in the sweep directory: one JSON row per finished point
RERUN_ENV = "FR_DIST_RERUN"  # =1: a sweep runs every point afresh, even one that finished earlier
# test_acc is a classifier's, val_loss and tokens_per_s a language model's: each kind leaves the other's empty
COLUMNS = ["point", "algo", "splits", "seed", "status", "test_acc", "val_loss", "final_train_loss", "samples_per_s",
           "tokens_per_s", "wall_s", "peak_mem_bytes", "overrides"]
_exit_code = 0  # of the job or sweep run through Hydra, set by _task / SweepResults


def run_job(overrides: list[str], processes: int) -> int:
    """Run `python -m fr_dist.train OVERRIDES` on `processes` local processes; its exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the trainer sets threads_per_rank itself
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc_per_node={processes}", "--module", "fr_dist.train", *overrides])
    try:
        run(args)
    except ChildFailedError:
        return 1  # the failing rank printed why
    except SignalException as e:  # Ctrl-C or SIGTERM: torchrun stopped the ranks
        print(f"[launch] stopped by signal {int(e.sigval)}", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a.startswith("-") for a in argv):  # -m, --cfg job, --help ...: Hydra's command line
        return hydra_main(argv)
    try:
        raw = compose([o for o in argv if not o.startswith("hydra.")])
        c = _validate(raw)
    except (FRError, ValueError) as e:
        print(f"[launch] error: {one_line(str(e))}", file=sys.stderr)
        return 1
    return run_job(argv, c.splits * c.replicas)


# ---------------------------------------------------------------------------------------
# Sweeps: Hydra multirun


def hydra_main(argv: list[str]) -> int:
    """Run Hydra's command line over conf/launch.yaml with `argv`; the exit code."""
    global _exit_code
    import hydra

    try:
        check_points(argv)
    except FRError as e:
        print(f"[launch] error: {e}", file=sys.stderr)
        return 1
    _exit_code = 0
    saved = sys.argv
    sys.argv = [saved[0] if saved else "fr_dist.launch", *argv]
    try:
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="launch")(_task)()
    except KeyboardInterrupt:
        print("[launch] interrupted: the same command again skips the finished points and resumes the rest",
              file=sys.stderr)
        return 130
    except ValueError as e:  # Hydra's verdict on its flags, e.g. --cfg with -m
        print(f"[launch] error: {e}", file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    return _exit_code


def check_points(argv: list[str]) -> None:
    """Compose and validate every point of the sweep in `argv` before any starts.

    Raises FRError naming the point. Points come from the basic sweeper's expansion
    (the cartesian product of the comma lists); other sweepers are checked per point
    when their points run.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:  # argparse printed the usage and why
        raise FRError("bad command line (see above)") from None
    if args.config_name or args.config_dir or args.config_path or args.cfg or args.help or args.hydra_help \
            or args.info or args.shell_completion or args.experimental_rerun:
        return  # Hydra's own business
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException as e:
        raise FRError(f"bad override: {one_line(str(e))}") from None
    hydra_overrides = [o.input_line for o in parsed if o.is_hydra_override()]
    task = [o for o in parsed if not o.is_hydra_override()]
    if args.multirun:
        try:
            points = BasicSweeper.split_arguments(task, None)[0]
        except HydraException as e:
            raise FRError(one_line(str(e))) from None
    else:
        points = [[o.input_line for o in task]]
    for point in points:
        cfg = compose(point + hydra_overrides, "launch")
        where = f" (point {' '.join(point)})" if args.multirun and len(points) > 1 else ""
        try:
            _validate(cfg)
        except FRError as e:
            raise FRError(f"{e}{where}") from None


def _validate(cfg):
    """The config checked for a job of splits x replicas processes (the launcher starts them all)."""
    world = 1
    for key in ("splits", "replicas"):
        try:
            world *= int(cfg.get(key, 1))
        except Exception:
            raise FRError(f"bad configuration: {key}={cfg.get(key)!r} must be a positive integer") from None
    return validate(cfg, world_size=world)


def _quote(value: str) -> str:
    """`value` as a quoted Hydra override value."""
    return "'" + value.replace("\\", "_").replace("'", "_") + "'"


def _task(cfg) -> None:
    """Hydra's task: in a sweep one point, else one job in this process."""
    global _exit_code
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    if hc.mode != RunMode.MULTIRUN:
        try:
            c = _validate(cfg)
        except FRError as e:
            print(f"[launch] error: {e}", file=sys.stderr)
            _exit_code = 1
            return
        _exit_code = run_job([*overrides, f"hydra.run.dir={hc.runtime.output_dir}"], c.splits * c.replicas)
        return
    run_point(cfg, overrides, Path(hc.runtime.output_dir), Path(hc.sweep.dir), int(hc.job.num))


STOPPED_BY_SIGNAL = (128 + 2, 128 + 15)  # run_job's exit after SIGINT, SIGTERM


def run_point(cfg, overrides: list[str], point_dir: Path, sweep_dir: Path, num: int) -> dict:
    """Train one sweep point in a subprocess, unless it finished earlier; its results row (also
    saved in the sweep directory).

    Never raises but KeyboardInterrupt: Hydra's basic sweeper stops the sweep at the first
    failed task. A point stopped by SIGINT or SIGTERM stops the sweep (a rerun resumes it),
    also where this process did not see the signal (a background job ignores SIGINT).
    """
    point_dir, sweep_dir = point_dir.resolve(), sweep_dir.resolve()
    try:
        rel = str(point_dir.relative_to(sweep_dir))
    except ValueError:
        rel = str(point_dir)
    row = {"point": rel, "algo": _get(cfg, "algo.name"), "splits": _get(cfg, "splits"), "seed": _get(cfg, "seed"),
           "status": "", "overrides": " ".join(overrides), "override_list": list(overrides)}
    try:
        _validate(cfg)
        if _get(cfg, "wandb.group") is None:
            overrides = [*overrides, f"wandb.group={_quote(sweep_dir.name)}"]
        summary = point_dir / "summary.json"
        earlier = recorded_overrides(point_dir)
        rerun = os.environ.get(RERUN_ENV) == "1"
        if earlier == overrides and not rerun and _status(summary) == "ok":
            row.update(summary_row(json.loads(summary.read_text())))
            print(f"[launch] point {num} ({row['overrides']}) finished earlier: skipped", flush=True)
            return _save_row(row, sweep_dir, num)
        if earlier is not None and (rerun or earlier != overrides):  # its checkpoints are not this point's
            why = f"{RERUN_ENV}=1" if rerun else f"it ran other overrides: {' '.join(earlier)}"
            print(f"[launch] point {num}: removing the earlier run in {point_dir} ({why})", flush=True)
            shutil.rmtree(point_dir)
        before = summary.read_bytes() if summary.exists() else None
        print(f"[launch] point {num} in {point_dir}", flush=True)
        started = time.perf_counter()
        rc = run_subprocess([sys.executable, "-m", "fr_dist.launch", *overrides, f"hydra.run.dir={point_dir}"])
        fresh = summary.exists() and summary.read_bytes() != before  # not a summary left by an earlier run
        row.update(summary_row(json.loads(summary.read_text())) if fresh else {})
        if not fresh or (rc != 0 and row["status"] == "ok"):
            row["status"] = f"failed (exit {rc})"
        print(f"[launch] point {num}: {row['status']} ({time.perf_counter() - started:.1f} s)", flush=True)
        if rc in STOPPED_BY_SIGNAL:  # the user (or the scheduler) stopped the job: stop the sweep, not just a point
            _save_row(row, sweep_dir, num)
            raise KeyboardInterrupt
    except FRError as e:
        row["status"] = f"config error: {e}"
        print(f"[launch] point {num}: error: {e}", file=sys.stderr, flush=True)
    except Exception as e:  # a launcher bug must not end the sweep either
        row["status"] = f"launch error: {type(e).__name__}: {e}"
        print(f"[launch] point {num}: {row['status']}", file=sys.stderr, flush=True)
    return _save_row(row, sweep_dir, num)


def _save_row(row: dict, sweep_dir: Path, num: int) -> dict:
    rows = sweep_dir / ROWS_DIR
    rows.mkdir(parents=True, exist_ok=True)
    (rows / f"{num}.json").write_text(json.dumps(dict(row, num=num)) + "\n")
    return row


def recorded_overrides(run_dir: Path) -> list[str] | None:
    """The overrides the trainer recorded in `run_dir` (.hydra/overrides.yaml), or None if it holds no run."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.exists() else None


def _status(summary: Path) -> str | None:
    """The status a run's summary.json records, or None without one."""
    try:
        return json.loads(summary.read_text()).get("status")
    except (OSError, ValueError):
        return None


def run_subprocess(cmd: list[str]) -> int:
    """Run `cmd` with this process's output; its exit code.

    On Ctrl-C the child (in our process group, so interrupted too) gets time to stop its
    ranks (they run in sessions of their own) before it is terminated.
    """
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
        raise


def _get(cfg, key: str):
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key)
    except Exception:
        return None


def summary_row(summary: dict) -> dict:
    """The results columns of one summary.json."""
    row = {k: summary.get(k) for k in ("algo", "splits", "seed", "status", "test_acc", "val_loss", "final_train_loss",
                                       "samples_per_s", "tokens_per_s", "wall_s")}
    row["peak_mem_bytes"] = ";".join(str(s.get("peak_mem_bytes")) for s in summary.get("stages") or [])
    return row


def write_results(sweep_dir: Path) -> list[dict]:
    """results.csv and results.md from the rows the points left in `sweep_dir`; the rows."""
    sweep_dir = Path(sweep_dir)
    rows = [json.loads(p.read_text()) for p in (sweep_dir / ROWS_DIR).glob("*.json")]
    rows.sort(key=lambda r: r.get("num", 0))
    with open(sweep_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in COLUMNS})
    (sweep_dir / "results.md").write_text(markdown_table(rows, only_varying=True))
    return rows


def markdown_table(rows: list[dict], only_varying: bool = False) -> str:
    """`rows` as a markdown table; `only_varying`: the overrides column keeps those that differ between rows."""
    if only_varying and len(rows) > 1:
        lists = [r.get("override_list") or str(r.get("overrides") or "").split() for r in rows]
        keep = [o for o in dict.fromkeys(o for lst in lists for o in lst) if not all(o in lst for lst in lists)]
        rows = [dict(r, overrides=" ".join(o for o in lst if o in keep)) for r, lst in zip(rows, lists)]

    def cell(key, v):
        if v is None:
            return ""
        if isinstance(v, float) and key in ("test_acc", "val_loss", "final_train_loss"):
            return f"{v:.4f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(k, r.get(k)) for k in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class SweepResults(_Callback):
    """Hydra callback (conf/launch.yaml): the results table once every point has run.

    It runs on the machine that launched the sweep (with submitit too), from the rows
    each point wrote into the sweep directory.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        """Forget the rows of an earlier sweep into the same directory."""
        for old in (Path(str(config.hydra.sweep.dir)) / ROWS_DIR).glob("*.json"):
            old.unlink()

    def on_multirun_end(self, config, **kwargs) -> None:
        global _exit_code
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = write_results(sweep_dir)
        failed = [r for r in rows if r.get("status") != "ok"]
        print(markdown_table(rows, only_varying=True), end="", flush=True)
        print(f"[launch] {len(rows) - len(failed)} of {len(rows)} points ok; results in "
              f"{sweep_dir / 'results.csv'} and results.md", flush=True)
        if failed:
            _exit_code = 1


if __name__ == "__main__":
    sys.exit(main())
