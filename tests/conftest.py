"""Shared test setup: no network logging, one torch thread, helpers to run the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)


def run_cli(script: str, *args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300,
            input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` from the repository root and capture its output."""
    full_env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"), "OMP_NUM_THREADS": "1",
                **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}   # None unsets a variable
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout, input=input_text)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def only_run_dir(root: Path) -> Path:
    """The single run directory under ``root`` (runs_root of one training run)."""
    runs = [p.parent for p in root.rglob("config.yaml")]
    assert len(runs) == 1, runs
    return runs[0]


# Tiny CartPole DQN settings for fast end-to-end runs.
TINY = ["agent=dqn", "env=cartpole", "logger=none", "total_env_steps=1200", "agent.learning_starts=200",
        "agent.collect_steps=8", "agent.gradient_steps=4", "agent.batch_size=32", "agent.hidden=[32,32]",
        "eval.interval=600", "eval.episodes=2", "eval.num_envs=2", "checkpoint.interval=600",
        "logger.interval=200", "torch_threads=1"]


@pytest.fixture
def tiny_run(tmp_path: Path):
    """Train a tiny CartPole DQN; returns (completed process, run directory)."""
    result = run_cli("train.py", *TINY, f"runs_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result, only_run_dir(tmp_path)


def compose(*overrides: str):
    """The composed training config for ``overrides``, as train.py would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))
