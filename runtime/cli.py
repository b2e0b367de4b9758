"""Command-line plumbing shared by train.py and eval.py: Hydra errors become clear exits."""
from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Callable

from runtime.errors import EXIT_USAGE, TrainingDiverged, UserError, report_and_exit

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def debug_requested(argv: list[str]) -> bool:
    """True when ``debug=true`` is on the command line (full stack traces wanted)."""
    return any(a.lower() in ("debug=true", "debug=1", "+debug=true") for a in argv)


def _group_options(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _group_choices(argv: list[str]) -> list[str]:
    """The command line's config-group choices (``agent=muzero``), which decide the valid keys."""
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    return [a for a in argv if "=" in a and a.split("=", 1)[0].lstrip("+~") in groups]


def _known_keys(config_name: str, argv: list[str]) -> list[str]:
    """Every key of the config composed with the command line's group choices (for hints)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name=config_name, overrides=_group_choices(argv))
    except Exception:  # noqa: BLE001 - hints only
        return []
    keys: list[str] = []

    def walk(node, prefix=""):
        for key, value in node.items():
            full = f"{prefix}{key}"
            keys.append(full)
            if isinstance(value, dict):
                walk(value, full + ".")

    walk(OmegaConf.to_container(cfg, resolve=False))
    return keys


def explain_hydra_error(err: Exception, config_name: str) -> UserError:
    """Turn a Hydra composition/override error into a UserError naming key and choices."""
    text = str(err)
    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if missing:
        group, option = missing.group(1), missing.group(2)
        return UserError(f"unknown {group} {option!r}", choices=_group_options(group), key=group)
    bad_key = re.search(r"Key '([^']+)' is not in struct", text) or re.search(r"Could not override '([^']+)'", text)
    if bad_key:
        key = bad_key.group(1)
        full = re.search(r"full_key: (\S+)", text)
        key = full.group(1) if full else key
        known = _known_keys(config_name, sys.argv[1:])
        close = difflib.get_close_matches(key, known, n=3)
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = [k for k in known if k.startswith(prefix) and "." not in k[len(prefix):]]
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return UserError(f"unknown config key {key!r}{hint}", choices=siblings)
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return UserError(f"bad command line: {first}")


def user_errors(task):
    """Decorator for a Hydra task function: UserError and divergence exit cleanly inside the job.

    Exiting inside the task keeps Hydra from printing its own error banner.
    """
    import functools

    @functools.wraps(task)
    def wrapped(cfg):
        debug = bool(cfg.get("debug", False)) or debug_requested(sys.argv)
        try:
            return task(cfg)
        except UserError as err:
            report_and_exit(err, debug)
        except TrainingDiverged:
            if debug:
                raise
            sys.exit(3)

    return wrapped


def run_hydra(main: Callable[[], None], config_name: str) -> None:
    """Run a ``@hydra.main`` function whose task is wrapped in :func:`user_errors`: Hydra's own
    composition errors (unknown config option, misspelt key) exit 2 with one paragraph too."""
    debug = debug_requested(sys.argv)
    os.environ["HYDRA_FULL_ERROR"] = "1"   # let exceptions reach us instead of Hydra's printer
    try:
        main()
    except Exception as err:  # noqa: BLE001
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(err, (HydraException, OmegaConfBaseException)) and not debug:
            report_and_exit(explain_hydra_error(err, config_name), debug)
        raise


__all__ = ["run_hydra", "EXIT_USAGE", "debug_requested"]
