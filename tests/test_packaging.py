"""The wheel: it carries conf/ as fr_dist/conf, and its entry points work outside the checkout.

One module-scoped build (pip wheel from a copy of the sources, offline, into a temporary
folder), one `pip install --target` of it; the commands then run from a directory outside
the checkout with only that target on PYTHONPATH, and the test first proves that the
installed copy, not the checkout, is what they import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "fr_dist", "conf")  # what the build reads
TINY = ["model=mlp", "model.hidden=[8]", "data=synthetic", "data.shape=[1,4,4]", "data.train_size=32",
        "data.test_size=8", "batch_size=8", "epochs=1", "max_steps=2", "progress=false"]


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the --target folder it is installed in, a working directory outside the checkout)."""
    if pip("--version", cwd=ROOT).returncode != 0:
        pytest.skip("pip is not available in this Python")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"  # pip builds in the source tree (build/, *.egg-info): build a copy
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    built = pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src),
                cwd=tmp)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("fr_dist-*.whl")
    target = tmp / "site"
    done = pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    outside = tmp / "elsewhere"
    outside.mkdir()
    return wheel, target, outside


def run(installed, *args: str) -> subprocess.CompletedProcess:
    _, target, outside = installed
    env = dict(os.environ, PYTHONPATH=str(target), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=outside, env=env, capture_output=True, text=True, timeout=120)


def test_wheel_carries_every_config_and_module(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"fr_dist/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert len(configs) >= 20 and "fr_dist/conf/config.yaml" in configs and "fr_dist/conf/launch.yaml" in configs
    assert configs - names == set()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fr_dist").rglob("*.py")}
    assert modules - names == set(), "a subpackage missing from setup.cfg's packages"
    assert not [n for n in names if n.startswith("conf/") or n.startswith("tests/")]


def test_installed_copy_is_what_runs(installed):
    _, target, _ = installed
    proc = run(installed, "-c", "import json, fr_dist.compose, fr_dist.train, fr_dist.tools.launch as l; "
                                "print(json.dumps([fr_dist.__file__, fr_dist.train.__file__, l.__file__, "
                                "str(fr_dist.compose.CONF_DIR)]))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    package, train, launch, conf = json.loads(proc.stdout)
    installed_package = target.resolve() / "fr_dist"
    assert Path(package) == installed_package / "__init__.py"
    assert Path(train) == installed_package / "train.py" and Path(launch) == installed_package / "tools" / "launch.py"
    assert Path(conf) == installed_package / "conf"


def test_train_and_launch_run_from_the_wheel(installed, tmp_path):
    proc = run(installed, "-m", "fr_dist.train", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["algo"] == "fr" and summary["splits"] == 1
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2
    # Hydra's own command line (hydra.main over the installed launch.yaml) composes the job
    proc = run(installed, "-m", "fr_dist.launch", "--cfg", "job", "model=resnet8", "splits=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "splits: 2" in proc.stdout and "name: resnet8" in proc.stdout and "name: sgd" in proc.stdout
