"""The README's "Your own data" example, run as written: its module, then its commands, in an empty folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.support import ROOT


def example() -> tuple[str, str]:
    """(the python block, the bash block) of the README's section "Your own data"."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Your own data", 1)[1].split("\n## ", 1)[0]
    (module,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (commands,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    return module, commands


def test_readme_custom_data_example_runs(tmp_path):
    module, commands = example()
    assert module.startswith("# mydata.py")
    (tmp_path / "mydata.py").write_text(module)
    # `python` is this interpreter, fr_dist this checkout; W&B off (the example's default is offline logging)
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = tmp_path.glob("outputs/*/*/summary.json")
    summary = json.loads(summary.read_text())
    assert (summary["status"], summary["data"], summary["splits"]) == ("ok", "mydata.datasets", 2)
    assert summary["steps"] == 2 * (1024 // 32)
    assert summary["test_acc"] > 0.6  # a learnable rule: well above chance (0.5)
