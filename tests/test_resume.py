"""An interrupted and resumed run continues exactly like an uninterrupted one (CPU, same seed)."""
from __future__ import annotations

import os
import signal

import pytest

from agents.dqn import DQN
from conftest import TINY, compose, read_jsonl
from runtime.trainer import Trainer

SETTINGS = [a for a in TINY if not a.startswith(("total_env_steps", "checkpoint.interval"))] + [
    "total_env_steps=2000", "checkpoint.interval=100000", "agent.n_step=3"]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


MINATAR = [a for a in SETTINGS if a != "env=cartpole"] + ["env=minatar", "env.num_envs=2"]


@pytest.mark.parametrize("settings", [SETTINGS, MINATAR], ids=["cartpole", "minatar"])
def test_interrupt_then_resume_matches_uninterrupted(tmp_path, monkeypatch, capsys, settings):
    """Both env kinds whose state is snapshotted: the resumed run's whole log equals the straight one's."""
    straight = Trainer(compose(*settings), run_dir=tmp_path / "straight").run()
    assert straight["status"] == "finished"

    original = DQN.train_iteration
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 37:   # mid-run, between log points: Ctrl-C arrives
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(DQN, "train_iteration", interrupted)
    first = Trainer(compose(*settings), run_dir=tmp_path / "resumed").run()
    monkeypatch.setattr(DQN, "train_iteration", original)
    assert first["status"] == "interrupted"
    assert 0 < first["steps"] < 2000
    assert (tmp_path / "resumed" / "checkpoints" / "latest.pt").is_file()

    resume = [f"resume={tmp_path / 'resumed'}"]
    capsys.readouterr()
    resumed = Trainer(compose(*settings, *resume), run_dir=tmp_path / "unused", overrides=resume).run()
    assert resumed["status"] == "finished"
    assert "total_env_steps is now" not in capsys.readouterr().err   # the budget did not change
    assert resumed["run_dir"] == str(tmp_path / "resumed")

    a = without_timing(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    b = without_timing(read_jsonl(tmp_path / "resumed" / "metrics.jsonl"))
    assert len(a) == len(b) > 5
    assert a == b
    assert resumed["eval/return_mean"] == straight["eval/return_mean"]


def test_resume_may_extend_the_budget(tmp_path, capsys):
    Trainer(compose(*SETTINGS), run_dir=tmp_path / "run").run()
    given = [f"resume={tmp_path / 'run'}", "total_env_steps=2400"]
    extended = Trainer(compose(*given), run_dir=tmp_path / "unused", overrides=given).run()
    assert extended["status"] == "finished"
    # schedules are fractions of the run: the user is told they now follow the new total
    assert "total_env_steps is now 2,400 (was 2,000)" in capsys.readouterr().err
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert max(r["env_steps"] for r in records) >= 2400
    # everything not given on the command line comes from the stored run, not from today's defaults
    from runtime import checkpoint as ckpt

    stored = ckpt.load(tmp_path / "run")["config"]
    assert stored["agent"]["name"] == "dqn" and stored["agent"]["n_step"] == 3 and stored["eval"]["episodes"] == 2
    assert stored["total_env_steps"] == 2400


def test_a_run_still_training_is_not_resumed_twice(tmp_path):
    """A resume typed while the run still trains is refused before it writes anything (the lock is the
    training process's); once that process lets go, the same resume goes ahead."""
    from conftest import run_cli
    from runtime.trainer import lock_run_dir

    run = tmp_path / "run"
    Trainer(compose(*SETTINGS), run_dir=run).run()
    files = [run / "metrics.jsonl", run / "config.yaml", run / "summary.json", run / "checkpoints" / "latest.pt"]
    before = [f.read_bytes() for f in files]
    held = lock_run_dir(run)   # stands for a training process still running in the folder
    refused = run_cli("train.py", f"resume={run}", "total_env_steps=2400")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"is in use by another training process (pid {os.getpid()})" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert [f.read_bytes() for f in files] == before
    held.close()
    given = [f"resume={run}", "total_env_steps=2400"]
    assert Trainer(compose(*given), run_dir=tmp_path / "unused", overrides=given).run()["status"] == "finished"
    assert max(r["env_steps"] for r in read_jsonl(run / "metrics.jsonl")) >= 2400
