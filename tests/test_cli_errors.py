"""Bad input ends with one clear paragraph, exit status 2, no stack trace, and nothing damaged."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli


def assert_usage_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_unknown_agent_lists_choices(tmp_path):
    result = run_cli("train.py", "agent=dqnn", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "unknown agent 'dqnn'", "dqn")


def test_unknown_env_lists_choices(tmp_path):
    result = run_cli("train.py", "env=cartpol", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "unknown env 'cartpol'", "cartpole", "atari", "minigrid")


def test_misspelt_key_names_key_and_suggestion(tmp_path):
    result = run_cli("train.py", "total_env_stepz=100", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "total_env_stepz", "did you mean total_env_steps")


def test_misspelt_nested_key(tmp_path):
    result = run_cli("train.py", "agent=dqn", "env=cartpole", "agent.learning_rat=0.1", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "agent.learning_rat", "agent.learning_rate")


def test_misspelt_key_hints_from_the_chosen_agent(tmp_path):
    """The hint lists the chosen agent's keys (unroll_steps is MuZero's only), not the default agent's."""
    result = run_cli("train.py", "agent=muzero", "env=cartpole", "agent.unroll_step=3", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "agent.unroll_step", "did you mean agent.unroll_steps")
    assert "agent.belief_target" not in result.stderr


def test_value_out_of_range_names_key(tmp_path):
    result = run_cli("train.py", "agent=dqn", "env=cartpole", "agent.gamma=1.5", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "agent.gamma", "out of range")


def test_negative_thread_count_names_key(tmp_path):
    result = run_cli("train.py", "agent=dqn", "env=cartpole", "torch_threads=-1", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "torch_threads", "must be >= 0")


def test_wrong_type_names_key(tmp_path):
    result = run_cli("train.py", "agent=dqn", "env=cartpole", "agent.batch_size=many", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "agent.batch_size")


def test_unknown_atari_game_suggests(tmp_path):
    result = run_cli("train.py", "agent=dqn", "env=atari", "env.game=breakoutt", "logger=none", f"runs_root={tmp_path}")
    assert_usage_error(result, "no Atari game named 'breakoutt'", "breakout")


def test_missing_checkpoint(tmp_path):
    result = run_cli("eval.py", f"checkpoint={tmp_path / 'nope.pt'}")
    assert_usage_error(result, "does not exist")


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_checkpoint_is_refused_and_left_alone(tiny_run, damage):
    _, run_dir = tiny_run
    path = run_dir / "checkpoints" / "latest.pt"
    if damage == "garbage":
        # seeded garbage whose unpickling fails with an IndexError (see test_checkpoint.py)
        path.write_bytes(np.random.default_rng(17).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        path.write_bytes(path.read_bytes()[:5000])
    before = path.read_bytes()
    result = run_cli("eval.py", f"checkpoint={path}")
    assert_usage_error(result, "corrupt")
    result = run_cli("train.py", f"resume={run_dir}", "logger=none", f"runs_root={run_dir.parent.parent}")
    assert_usage_error(result, "corrupt")
    assert path.read_bytes() == before


def test_resume_with_mismatched_config_is_refused(tiny_run):
    _, run_dir = tiny_run
    before = (run_dir / "checkpoints" / "latest.pt").read_bytes()
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    result = run_cli("train.py", f"resume={run_dir}", "agent.learning_rate=0.5", "logger=none",
                     f"runs_root={run_dir.parent.parent}")
    assert_usage_error(result, "does not match", "agent.learning_rate")
    assert (run_dir / "checkpoints" / "latest.pt").read_bytes() == before
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before


def test_debug_shows_trace(tmp_path):
    result = run_cli("train.py", "agent=dqn", "env=cartpole", "agent.gamma=1.5", "logger=none", f"runs_root={tmp_path}", "debug=true")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


@pytest.mark.parametrize("agent, key, valid", [
    ("dqn", "loss", "huber"), ("dqn", "conv_padding", "same"), ("vpn", "loss", "mse"), ("drq", "q_average", "q"),
    ("drq", "augmentation", "none"), ("sac", "augmentation", "none"), ("muzero", "value_bootstrap", "search"),
    ("alphazero", "belief_target", "optimal"), ("crr", "filter", "exp"), ("bc", "dataset_storage", "mmap"),
])
def test_every_choice_field_names_key_and_choices(agent, key, valid):
    """Each agent's choice fields go through AgentConfig.check_choices: a wrong value names the key and lists
    what would have worked; a listed value passes."""
    from agents.base import get
    from runtime.errors import UserError

    config_cls = get(agent).Config
    extra = {"dataset": "data.npz"} if agent in ("crr", "bc") else {}
    with pytest.raises(UserError) as caught:
        config_cls(**extra, **{key: "bogus"}).validate()
    assert caught.value.key == f"agent.{key}"
    assert "'bogus'" in str(caught.value) and valid in caught.value.choices
    config_cls(**extra, **{key: valid}).validate()


def test_check_ranges_reports_the_first_failed_field():
    import dataclasses

    from agents.base import AgentConfig
    from runtime.errors import UserError

    @dataclasses.dataclass
    class MyConfig(AgentConfig):
        rate: float = 0.1
        steps: int = 3

        def validate(self) -> None:
            self.check_ranges({"rate": self.rate > 0, "steps": self.steps >= 1})

    MyConfig().validate()
    with pytest.raises(UserError, match=r"agent\.steps: value -2 is out of range") as caught:
        MyConfig(steps=-2).validate()
    assert caught.value.key == "agent.steps"
