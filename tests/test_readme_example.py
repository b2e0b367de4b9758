"""The README's "add your own agent" example runs as written: train, checkpoint, evaluate."""
from __future__ import annotations

import json
import re

from conftest import ROOT, only_run_dir, read_jsonl, run_cli


def readme_examples() -> dict[str, str]:
    """Code blocks of README.md that follow an ``<!-- example: path -->`` marker."""
    text = (ROOT / "README.md").read_text()
    pattern = re.compile(r"<!-- example: (\S+) -->\s*```\w*\n(.*?)```", re.S)
    return {path: body for path, body in pattern.findall(text)}


def test_readme_quick_start_has_exactly_two_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(commands) == 2
    assert all(len(c.strip().splitlines()) == 1 for c in commands)
    assert "python train.py" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci and "README.md" in ci   # CI runs the README's own test command


def test_add_your_own_agent_example(tmp_path):
    examples = readme_examples()
    assert set(examples) == {"agents/reinforce.py", "conf/agent/reinforce.yaml"}
    (tmp_path / "reinforce.py").write_text(examples["agents/reinforce.py"])
    (tmp_path / "conf" / "agent").mkdir(parents=True)
    (tmp_path / "conf" / "agent" / "reinforce.yaml").write_text(examples["conf/agent/reinforce.yaml"])
    args = ["agent=reinforce", "+agent.module=reinforce", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            "env=cartpole", "logger=none", "total_env_steps=6000", "eval.interval=3000", "eval.episodes=3",
            "logger.interval=1000", "torch_threads=1", f"runs_root={tmp_path / 'runs'}"]
    result = run_cli("train.py", *args, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "runs")
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert any("train/loss" in r for r in records) and records[-1]["env_steps"] >= 6000
    result = run_cli("eval.py", f"checkpoint={run_dir}", "episodes=3", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "checkpoints" / "eval.json").read_text())["agent"] == "reinforce"
    result = run_cli("train.py", *args, "agent.gamma=1.5", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2 and "agent.gamma: value 1.5 is out of range" in result.stderr, result.stderr[-3000:]


def test_readme_search_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "from planners.mcts import" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.selected_action.shape == (4,)
    assert abs(result.improved_policy.sum(axis=1) - 1).max() < 1e-6
    assert result.visit_counts.sum(axis=1).tolist() == [16] * 4
