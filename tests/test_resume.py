"""An interrupted and resumed run continues exactly like an uninterrupted one (CPU, same seed)."""
from __future__ import annotations

import os
import signal

from agents.dqn import DQN
from conftest import TINY, compose, read_jsonl
from runtime.trainer import Trainer

SETTINGS = [a for a in TINY if not a.startswith(("total_env_steps", "checkpoint.interval"))] + [
    "total_env_steps=2000", "checkpoint.interval=100000", "agent.n_step=3"]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def test_interrupt_then_resume_matches_uninterrupted(tmp_path, monkeypatch):
    straight = Trainer(compose(*SETTINGS), run_dir=tmp_path / "straight").run()
    assert straight["status"] == "finished"

    original = DQN.train_iteration
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 37:   # mid-run, between log points: Ctrl-C arrives
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(DQN, "train_iteration", interrupted)
    first = Trainer(compose(*SETTINGS), run_dir=tmp_path / "resumed").run()
    monkeypatch.setattr(DQN, "train_iteration", original)
    assert first["status"] == "interrupted"
    assert 0 < first["steps"] < 2000
    assert (tmp_path / "resumed" / "checkpoints" / "latest.pt").is_file()

    resumed = Trainer(compose(*SETTINGS, f"resume={tmp_path / 'resumed'}"), run_dir=tmp_path / "unused").run()
    assert resumed["status"] == "finished"
    assert resumed["run_dir"] == str(tmp_path / "resumed")

    a = without_timing(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    b = without_timing(read_jsonl(tmp_path / "resumed" / "metrics.jsonl"))
    assert len(a) == len(b) > 5
    assert a == b
    assert resumed["eval/return_mean"] == straight["eval/return_mean"]


def test_resume_may_extend_the_budget(tmp_path):
    Trainer(compose(*SETTINGS), run_dir=tmp_path / "run").run()
    extended = Trainer(compose(*SETTINGS, f"resume={tmp_path / 'run'}", "total_env_steps=2400"),
                       run_dir=tmp_path / "unused").run()
    assert extended["status"] == "finished"
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert max(r["env_steps"] for r in records) >= 2400
