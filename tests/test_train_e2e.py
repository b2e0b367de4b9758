"""End to end through the command line: train, log, checkpoint, evaluate, compare, multirun."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, only_run_dir, read_jsonl, run_cli
from runtime import checkpoint as ckpt


def test_train_writes_the_run_directory(tiny_run):
    result, run_dir = tiny_run
    assert run_dir.parent.name == "dqn-cartpole" and run_dir.name.endswith("_s0")
    config = (run_dir / "config.yaml").read_text()
    assert "total_env_steps: 1200" in config and "learning_starts: 200" in config
    records = read_jsonl(run_dir / "metrics.jsonl")
    steps = [r["env_steps"] for r in records]
    assert steps == sorted(steps) and steps[-1] >= 1200
    assert any("train/loss" in r for r in records)
    assert any("eval/return_mean" in r for r in records)
    assert records[-1].get("final") is True
    data = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    assert data["progress"]["steps"] == steps[-1]
    assert "replay" in data["agent"]
    assert "evaluation return" in result.stdout


def test_eval_reports_and_writes_eval_json_and_video(tiny_run):
    _, run_dir = tiny_run
    result = run_cli("eval.py", f"checkpoint={run_dir}", "episodes=4", "num_envs=2", "video=true")
    assert result.returncode == 0, result.stderr[-2000:]
    for word in ("mean", "median", "iqm", "95% CI"):
        assert word in result.stdout
    report = json.loads((run_dir / "checkpoints" / "eval.json").read_text())
    assert report["episodes"] == 4 and len(report["returns"]) == 4
    assert report["mean_ci"][0] <= report["mean"] <= report["mean_ci"][1]
    video = Path(report["video"])
    assert video.is_file() and video.stat().st_size > 1000


def test_eval_is_reproducible_and_overrides_win(tiny_run):
    _, run_dir = tiny_run
    first = run_cli("eval.py", f"checkpoint={run_dir}", "episodes=3", "seed=5")
    a = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["returns"]
    first_threads = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["torch_threads"]
    second = run_cli("eval.py", f"checkpoint={run_dir}", "episodes=3", "seed=5", "agent.eval_eps=1.0",
                     "torch_threads=2")
    report = json.loads((run_dir / "checkpoints" / "eval.json").read_text())
    b = report["returns"]
    third = run_cli("eval.py", f"checkpoint={run_dir}", "episodes=3", "seed=5", "torch_threads=2")
    c = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["returns"]
    assert first.returncode == second.returncode == third.returncode == 0
    assert a == c   # the thread count changes no action
    assert a != b   # a fully random evaluation policy plays differently
    assert first_threads == 1   # the run's own torch_threads=1
    assert report["torch_threads"] == 2   # eval.py's torch_threads wins


def test_multirun_and_compare(tmp_path):
    result = run_cli("train.py", "-m", "seed=0,1", *TINY, f"runs_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "dqn-cartpole").rglob("metrics.jsonl"))
    assert len(runs) == 2 and {r.name.split("_")[1] for r in runs} == {"s0", "s1"}
    out = tmp_path / "curves.png"
    result = run_cli("eval.py", f"compare=[{tmp_path / 'dqn-cartpole'}]", f"output={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "runs=2" in result.stdout


def test_tensorboard_logger_writes_events(tmp_path):
    args = [a if a != "logger=none" else "logger=tensorboard" for a in TINY]
    result = run_cli("train.py", *args, f"runs_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = only_run_dir(tmp_path)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "metrics.jsonl").stat().st_size > 0


@pytest.mark.parametrize("env_mode", [None, ""], ids=["unset", "empty"])
def test_wandb_runs_offline_without_a_key(tmp_path, env_mode):
    args = [a if a != "logger=none" else "logger=wandb" for a in TINY]
    env = {"WANDB_MODE": env_mode, "WANDB_API_KEY": None, "NETRC": str(tmp_path / "no-netrc"), "HOME": str(tmp_path)}
    result = run_cli("train.py", *args, f"runs_root={tmp_path / 'runs'}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "runs")
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, list(run_dir.iterdir())
    assert (run_dir / "metrics.jsonl").stat().st_size > 0


def test_a_misspelt_wandb_mode_in_the_environment_is_a_clear_error(tmp_path):
    args = [a if a != "logger=none" else "logger=wandb" for a in TINY]
    result = run_cli("train.py", *args, f"runs_root={tmp_path}", env={"WANDB_MODE": "offlin"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "WANDB_MODE='offlin'" in result.stderr and "offline" in result.stderr
    assert "Traceback" not in result.stderr


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    args = [a for a in TINY if not a.startswith(("agent.learning_starts", "checkpoint.interval"))]
    result = run_cli("train.py", *args, "agent.learning_starts=400", "checkpoint.interval=100",
                     "agent.learning_rate=1e12", "agent.loss=mse", f"runs_root={tmp_path}")
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    assert "diverged" in result.stderr and "last good checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    data = ckpt.load(only_run_dir(tmp_path))
    assert all(torch.isfinite(v).all() for v in data["agent"]["q"].values())


def test_short_atari_run_logs_checkpoints_and_resumes(tmp_path):
    args = ["agent=dqn", "env=atari", "env.game=pong", "env.num_envs=2", "logger=none", "total_env_steps=600",
            "agent.learning_starts=300", "agent.buffer_size=5000", "agent.batch_size=8", "eval.interval=100000",
            "eval.episodes=1", "eval.num_envs=1", "env.max_episode_frames=1200", "checkpoint.interval=300",
            "logger.interval=100", "torch_threads=1", f"runs_root={tmp_path}"]
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert run_dir.parent.name == "dqn-atari-pong"
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert any("train/loss" in r for r in records)
    data = ckpt.load(run_dir)
    assert data["env"] is None          # ALE state is not snapshotted: resume restarts episodes
    result = run_cli("train.py", f"resume={run_dir}", "total_env_steps=800", "logger=none", f"runs_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "episodes restart on resume" in result.stderr
    assert ckpt.load(run_dir)["progress"]["steps"] >= 800


def test_minigrid_dict_observations_train_and_evaluate(tmp_path):
    args = ["agent=dqn", "env=minigrid", "env.id=MiniGrid-Empty-5x5-v0", "env.obs=dict", "env.num_envs=2",
            "logger=none", "total_env_steps=600", "agent.learning_starts=200", "agent.batch_size=16",
            "agent.hidden=[32]", "eval.interval=100000", "eval.episodes=2", "eval.num_envs=2",
            "checkpoint.interval=100000", "logger.interval=100", "torch_threads=1", f"runs_root={tmp_path}"]
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    assert run_dir.parent.name == "dqn-minigrid-MiniGrid-Empty-5x5-v0"
    assert any("train/loss" in r for r in read_jsonl(run_dir / "metrics.jsonl"))
    result = run_cli("eval.py", f"checkpoint={run_dir}", "episodes=2", "num_envs=1")
    assert result.returncode == 0, result.stderr[-3000:]


def test_board_game_training_and_match_evaluation(tmp_path):
    args = ["agent=alphazero", "env=tictactoe", "env.num_envs=16", "logger=none", "total_env_steps=400",
            "agent.num_simulations=8", "agent.eval_simulations=8", "agent.learning_starts=100",
            "agent.batch_size=32", "eval.interval=100000", "eval.episodes=4", "checkpoint.interval=200",
            "logger.interval=100", "torch_threads=1", f"runs_root={tmp_path}"]
    result = run_cli("train.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final evaluation against perfect play" in result.stdout
    run_dir = only_run_dir(tmp_path)
    result = run_cli("eval.py", f"checkpoint={run_dir}", "opponent=[random,perfect]", "episodes=4")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "checkpoints" / "eval.json").read_text())
    assert set(report["matches"]) == {"random", "perfect"}
    perfect = report["matches"]["perfect"]
    assert perfect["games"] == 4 and perfect["wins"] == 0   # nobody beats perfect play
    assert perfect["wins"] + perfect["draws"] + perfect["losses"] == 4
    result = run_cli("eval.py", f"checkpoint={run_dir}", "opponent=perfekt")
    assert result.returncode == 2 and "perfect" in result.stderr and "Traceback" not in result.stderr


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    """Hydra names a run's folder by the second it started and its seed; a second run
    started in that second must not write into the first one's folder."""
    from runtime.trainer import claim_run_dir

    folder = tmp_path / "20261129-191922_s0"
    first, second, third = (claim_run_dir(folder) for _ in range(3))
    assert first == folder
    assert second.name == "20261129-191922_s0-2" and third.name == "20261129-191922_s0-3"
    assert all(p.is_dir() for p in (first, second, third))
