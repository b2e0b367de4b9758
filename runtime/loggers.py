"""Metric sinks: ``metrics.jsonl`` always, plus W&B, TensorBoard or nothing.

W&B runs offline when no API key is configured (``WANDB_API_KEY`` or a login in
``~/.netrc``), so training never waits on a network; sync later with
``wandb sync <run dir>/wandb/offline-run-*``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import UserError


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlWriter:
    """Appends one JSON object per log step; survives resumes (append mode, steps only grow)."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = path
        if truncate_after_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("env_steps", 0) <= truncate_after_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def close(self) -> None:
        self.file.close()


class Logger:
    """Base sink: ignores everything."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar metrics at ``step`` env steps."""

    def log_video(self, path: Path, step: int) -> None:
        """Attach an evaluation video."""

    def log_checkpoint(self, path: Path) -> None:
        """Attach the final checkpoint as an artifact."""

    def close(self) -> None:
        """Flush and finish."""


def wandb_has_key() -> bool:
    """True when W&B could authenticate without asking (key in env or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


# The values W&B accepts in the WANDB_MODE environment variable.
WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun", "shared", "run")


class WandbLogger(Logger):
    """Weights & Biases run: project/group/tags from agent, env and experiment, full config."""

    def __init__(self, cfg, run_dir: Path, config: dict[str, Any], name: str, group: str, tags: list[str],
                 resume_id: str | None = None):
        import wandb

        mode = cfg.mode
        env_mode = os.environ.get("WANDB_MODE")
        if env_mode is not None and not env_mode.strip():
            del os.environ["WANDB_MODE"]   # set but empty: W&B itself would refuse it; the config decides
            env_mode = None
        if env_mode:
            if env_mode not in WANDB_ENV_MODES:
                raise UserError(f"the environment variable WANDB_MODE={env_mode!r} is not a W&B mode",
                                choices=WANDB_ENV_MODES)
            mode = env_mode
        elif mode == "auto":
            mode = "online" if wandb_has_key() else "offline"
        self.cfg = cfg
        self.wandb = wandb
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group or group,
                              tags=list(cfg.tags) + tags, config=config, name=name, dir=str(run_dir),
                              mode=mode, id=resume_id, resume="allow" if resume_id else None,
                              settings=wandb.Settings(quiet=True, console="off"))
        self.mode = mode

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_video(self, path: Path, step: int) -> None:
        if self.cfg.log_videos:
            self.run.log({"eval/video": self.wandb.Video(str(path), format="mp4")}, step=step)

    def log_checkpoint(self, path: Path) -> None:
        if self.cfg.log_checkpoint:
            artifact = self.wandb.Artifact(f"checkpoint-{self.run.id}", type="model")
            artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``<run dir>/tensorboard``."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def log_video(self, path: Path, step: int) -> None:
        self.writer.add_text("eval/video", str(path), step)

    def close(self) -> None:
        self.writer.close()


def make_logger(cfg, run_dir: Path, config: dict[str, Any], name: str, group: str, tags: list[str],
                resume_id: str | None = None) -> Logger:
    """The sink named by ``cfg.kind``."""
    if cfg.kind == "wandb":
        return WandbLogger(cfg, run_dir, config, name, group, tags, resume_id)
    if cfg.kind == "tensorboard":
        return TensorBoardLogger(run_dir)
    return Logger()
