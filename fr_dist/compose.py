"""The configuration as Hydra composes it: conf/ (or the wheel's fr_dist/conf) plus overrides, errors in one line.

config.py holds the schema and checks what this returns.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fr_dist.errors import FRError


def _conf_dir() -> Path:
    """The configs: fr_dist/conf/ in an installed wheel (package data), else the checkout's conf/.

    A checkout (``python -m`` from the repository root, or an editable install) has
    conf/ beside the package; a wheel carries the same files inside it (setup.cfg).
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    return package.parent / "conf"  # neither: Hydra's "Primary config directory not found" names it


CONF_DIR = _conf_dir()


def compose(overrides: list[str], config_name: str = "config") -> DictConfig:
    """conf/CONFIG_NAME.yaml with command-line `overrides`, without the hydra node.

    Hydra's errors become one FRError line.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise FRError(f"bad configuration: {one_line(str(e))}") from None
    except ValueError as e:  # Hydra's refusal of a config group set to null (model=null)
        for key, _, value in (o.lstrip("+~").partition("=") for o in overrides):
            if value == "null" and (CONF_DIR / key).is_dir():
                names = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
                default = next((d[key] for d in OmegaConf.load(CONF_DIR / "config.yaml").defaults
                                if isinstance(d, DictConfig) and key in d), names[0])
                raise FRError(f"{key}=null: {key} is a config group, not a value: choose one of "
                              f"{', '.join(names)} (e.g. {key}={default})") from None
        raise FRError(f"bad configuration: {one_line(str(e))}") from None
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def one_line(msg: str) -> str:
    """Hydra's multi-line message on one line: "Could not find 'algo/x'; Available options in 'algo': bp, fr"."""
    text, in_list = "", False
    for line in msg.split("\nConfig search path")[0].splitlines():
        line = line.strip()
        if not line:
            continue
        if not text:
            text = line
        elif text.endswith(":") or (in_list and " " not in line):
            text += (", " if in_list else " ") + line
            in_list = True
            continue
        else:
            text += (" " if text.endswith(".") else "; ") + line
        in_list = False
    return text
