"""Human-normalised Atari 100k scores and the aggregate table of finished runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.atari_scores import (
    ATARI_100K_GAMES,
    SCORES,
    canonical,
    human_normalized,
    normalized_matrix,
)
from runtime.compare import (
    atari_aggregate_table,
    atari_final_scores,
    find_runs,
    format_atari_table,
    plot_performance_profile,
)
from runtime.errors import UserError


def test_reference_scores_cover_the_26_games_with_ale_names():
    from envs.atari import game_names

    assert len(ATARI_100K_GAMES) == 26
    assert set(ATARI_100K_GAMES) <= set(game_names())
    assert all(human > random for random, human in SCORES.values())
    assert SCORES["pong"] == (-20.7, 14.6) and SCORES["breakout"] == (1.7, 30.5)


def test_normalisation_maps_random_to_zero_and_human_to_one():
    assert human_normalized("Pong", -20.7) == 0.0
    assert human_normalized("pong", 14.6) == pytest.approx(1.0)
    assert np.allclose(human_normalized("MsPacman", [307.3, 6951.6]), [0.0, 1.0])
    assert canonical("UpNDown") == "up_n_down" and canonical("kungfumaster") == "kung_fu_master"
    with pytest.raises(UserError):
        canonical("montezuma_revenge")
    games, matrix = normalized_matrix({"boxing": [0.1, 12.1], "Breakout": [30.5, 1.7]})
    assert games == ["boxing", "breakout"]
    assert np.allclose(matrix, [[0.0, 1.0], [1.0, 0.0]])


def stored_env(game, protocol="atari100k", **changes):
    """A run's stored ``env`` config as train.py writes it: the protocol named, every setting null (its own)."""
    from dataclasses import fields

    from envs.atari import AtariProtocol

    env = {"name": f"atari-{game}", "kind": "atari", "game": game, "protocol": protocol,
           **{f.name: None for f in fields(AtariProtocol)}}
    env.update(changes)
    return env


def fake_run(root, name, game, score, env=None):
    import yaml

    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"env": env or stored_env(game)}))
    (run / "metrics.jsonl").write_text(json.dumps({"env_steps": 100000, "eval/return_mean": score}) + "\n")
    (run / "summary.json").write_text(json.dumps({"eval/return_mean": score}))
    return run


def test_aggregate_table_and_profile_from_run_directories(tmp_path):
    group = tmp_path / "drq"
    scores = {"pong": [-20.7, -3.0, 14.6], "boxing": [0.1, 6.1, 12.1]}
    for game, values in scores.items():
        for seed, score in enumerate(values):
            fake_run(group, f"{game}_s{seed}", game, 99.0 if (game, seed) == ("pong", 0) else score)
    # eval.py's 100-episode evaluation wins over the in-training one (99 in summary.json)
    (group / "pong_s0" / "checkpoints" / "eval.json").write_text(json.dumps({"mean": -20.7}))
    in_training: list = []
    found = atari_final_scores([str(group)], in_training=in_training)
    assert sorted(found["drq"]["pong"]) == sorted(scores["pong"])
    # every run but pong_s0 was scored from its in-training evaluation
    assert sorted(Path(r).name for r in in_training) == ["boxing_s0", "boxing_s1", "boxing_s2", "pong_s1", "pong_s2"]
    table = atari_aggregate_table(found, reps=200)
    entry = table["drq"]
    assert entry["runs_per_game"] == 3
    assert entry["games"]["boxing"]["hns_mean"] == pytest.approx(0.5)
    # a game with more runs than the others: its mean uses them all, the aggregate the first three
    uneven = {"drq": {"pong": scores["pong"], "boxing": scores["boxing"] + [24.1]}}
    entry = atari_aggregate_table(uneven, reps=50)["drq"]
    assert entry["runs_per_game"] == 3 and entry["matrix"].shape == (3, 2)
    assert entry["games"]["boxing"]["runs"] == 4
    assert entry["games"]["boxing"]["score_mean"] == pytest.approx(10.6)
    all_four = human_normalized("boxing", np.array([0.1, 6.1, 12.1, 24.1]))
    assert entry["games"]["boxing"]["hns_mean"] == pytest.approx(float(np.mean(all_four)))
    assert "the aggregate uses the first 3 run(s)" in format_atari_table({"drq": entry})
    agg = entry["aggregate"]
    assert agg["mean"]["value"] == pytest.approx(np.mean(entry["matrix"]))
    assert agg["iqm"]["ci_low"] <= agg["iqm"]["value"] <= agg["iqm"]["ci_high"]
    assert "IQM" in format_atari_table(table)
    out = plot_performance_profile(table, tmp_path / "profile.png", reps=50)
    assert out.is_file() and out.stat().st_size > 1000


def test_runs_off_the_atari100k_protocol_are_grouped_apart(tmp_path):
    """Runs from before no-op starts, or under another protocol, never mix with atari100k runs,
    and the benchmark does not count them toward its target."""
    from envs.atari import protocol_departures

    group = tmp_path / "drq"
    for seed, score in enumerate([7.1, 22.7, 9.0]):
        fake_run(group, f"boxing_s{seed}", "boxing", score)
    old = stored_env("breakout", noop_max=0)          # before FIRE and the stack restart were settings
    del old["fire_reset"], old["life_loss_stack_restart"]
    for seed, score in enumerate([19.9, 19.1, 21.8]):
        fake_run(group, f"old_breakout_s{seed}", "breakout", score, env=old)
    # Boxing has no lives: a run from before the stack restart was recorded played atari100k there
    before_restart = stored_env("boxing", noop_max=30, fire_reset=False)
    del before_restart["life_loss_stack_restart"]
    fake_run(group, "boxing_s3", "boxing", 18.0, env=before_restart)
    fake_run(group, "breakout_machado", "breakout", 9.0, env=stored_env("breakout", protocol="machado2018"))
    departures: dict = {}
    found = atari_final_scores([str(group)], departures=departures)
    old_name = "drq (not atari100k: noop_max=0, fire_reset not recorded, life_loss_stack_restart not recorded)"
    machado_name = ("drq (not atari100k: sticky_actions=0.25, noop_max=0, life_loss_terminal=False, "
                    "life_loss_stack_restart=False)")
    assert found == {"drq": {"boxing": [7.1, 22.7, 9.0, 18.0]}, old_name: {"breakout": [19.9, 19.1, 21.8]},
                     machado_name: {"breakout": [9.0]}}
    assert set(departures) == {old_name, machado_name}
    assert protocol_departures(stored_env("boxing", noop_max=30, fire_reset=False)) == []
    assert protocol_departures(stored_env("boxing", fire_reset=True)) == ["fire_reset=True"]

    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "drq.py"), "--sections", "games", "--runs",
                          str(group), "--json"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ratios = json.loads(out.stdout.strip().splitlines()[-1])["ratios"]
    # only the atari100k group counts: boxing, mean 14.2 of 4 runs (published 3.3-18.4)
    assert ratios == {"drq/games_within_spread_3_runs": 1}
    assert f"{old_name}: not counted toward the target" in out.stdout
    assert "8 run(s) scored from their in-training evaluation" in out.stdout


def test_the_drq_preset_plays_atari100k_exactly():
    from conftest import compose
    from omegaconf import OmegaConf

    from envs.atari import protocol_departures

    env = OmegaConf.to_container(compose("agent=drq", "env=atari", "env.game=breakout", "logger=none").env,
                                 resolve=True)
    assert protocol_departures(env) == []
    assert protocol_departures(env, "machado2018") == ["sticky_actions=0.0", "noop_max=30", "life_loss_terminal=True",
                                                       "life_loss_stack_restart=True"]


def test_life_loss_settings_are_moot_in_games_without_lives():
    """Pong has no lives, so the life-loss settings are not departures there; in Breakout
    (lives at reset) and Demon Attack (lives shown only once play starts) they are."""
    from envs.atari import game_has_lives, protocol_departures

    assert [game_has_lives(g) for g in ("pong", "boxing", "breakout", "demon_attack")] == [False, False, True, True]
    assert game_has_lives("no_such_game")          # unknown: strict
    for game, expected in (("pong", ["sticky_actions=0.25", "noop_max=0"]),
                           ("demon_attack", ["sticky_actions=0.25", "noop_max=0", "life_loss_terminal=False",
                                             "life_loss_stack_restart=False"])):
        assert protocol_departures(stored_env(game, protocol="machado2018")) == expected
    unrecorded = stored_env("pong")
    del unrecorded["life_loss_stack_restart"]
    assert protocol_departures(unrecorded) == []
    unrecorded["game"] = "breakout"
    assert protocol_departures(unrecorded) == ["life_loss_stack_restart not recorded"]


def test_find_runs_follows_links_once(tmp_path):
    """A folder of symbolic links to runs kept elsewhere is a group; a link cycle ends the walk."""
    for name in ("a", "b"):
        (tmp_path / "store" / name).mkdir(parents=True)
        (tmp_path / "store" / name / "metrics.jsonl").write_text("{}\n")
    group = tmp_path / "group"
    group.mkdir()
    (group / "first").symlink_to(tmp_path / "store" / "a", target_is_directory=True)
    (group / "second").symlink_to(tmp_path / "store" / "b", target_is_directory=True)
    (group / "loop").symlink_to(group, target_is_directory=True)
    assert [p.name for p in find_runs(group)] == ["first", "second"]


def test_published_drq_eps_runs_are_the_released_file_and_set_the_spread(tmp_path, monkeypatch):
    import runtime.atari_scores as scores_module
    from runtime.atari_scores import published_runs, spread_check

    runs = published_runs("drq_eps")
    assert sorted(runs) == sorted(ATARI_100K_GAMES)
    assert all(v.shape == (100,) and np.isfinite(v).all() for v in runs.values())
    # their mean human-normalised score is the published 26-game mean (0.465, BBF Table A.1)
    assert np.mean([human_normalized(g, v).mean() for g, v in runs.items()]) == pytest.approx(0.465, abs=0.001)

    boxing = runs["boxing"]
    inside, above = float(np.median(boxing)), float(boxing.max()) + 1.0
    check = spread_check({"Boxing": [inside - 1, inside + 1], "krull": [above]})  # a game absent from "ours" is not listed
    assert set(check) == {"boxing", "krull"}
    assert check["boxing"]["within"] and check["boxing"]["runs"] == 2 and check["boxing"]["mean"] == inside
    assert check["boxing"]["rank"] == pytest.approx((boxing < inside).mean())
    assert check["boxing"]["published_min"] == boxing.min() and check["boxing"]["published_max"] == boxing.max()
    assert check["krull"]["within"] == bool(runs["krull"].min() <= above <= runs["krull"].max())
    assert not spread_check({"boxing": [above]})["boxing"]["within"]
    assert spread_check({"boxing": [above]})["boxing"]["rank"] == 1.0

    # an altered copy of the file is refused rather than compared against
    data = tmp_path / "data"
    data.mkdir()
    name, _ = scores_module.PUBLISHED_RUNS["drq_eps"]
    original = (Path(scores_module.__file__).parent / "data" / name).read_text()
    (data / name).write_text(original.replace("765.0", "766.0", 1))
    monkeypatch.setattr(scores_module, "__file__", str(tmp_path / "atari_scores.py"))
    with pytest.raises(UserError, match="SHA-256"):
        published_runs("drq_eps")
    with pytest.raises(UserError):
        published_runs("no_such_agent")


def test_games_benchmark_sets_given_scores_beside_the_published_runs():
    """``benchmarks/drq.py --sections games --scores ...``: the JSON line counts the games within the spread."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "drq.py"), "--sections", "games", "--scores",
                          "boxing=19.9,19.1,21.8", "breakout=20.1,23.3,18.1", "krull=2607,4915,4503", "--json"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    spread = result["figures"]["games"]["--scores"]["spread"]
    assert {g: row["within"] for g, row in spread.items()} == {"boxing": False, "breakout": True, "krull": True}
    assert spread["boxing"]["published_max"] == pytest.approx(18.37)
    assert result["ratios"]["--scores/games_within_spread_3_runs"] == 2
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "drq.py"), "--sections", "games", "--scores",
                          "boxing=a,b"], cwd=root, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "GAME=SCORE" in bad.stderr


def load_drq_benchmark():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "drq.py"
    spec = importlib.util.spec_from_file_location("drq_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_tabulates_finished_runs_by_variant(tmp_path):
    """``benchmarks/drq.py --sections ablation --ablation-runs``: each run's variant comes from its stored
    agent config, its score from eval.json before summary.json; other agents are left out, a run reached
    twice counts once, and runs off the protocol are named apart."""
    import subprocess
    import sys

    import yaml

    bench = load_drq_benchmark()

    def drq_run(name, score, game="boxing", env=None, **agent):
        run = fake_run(tmp_path / "runs", name, game, score, env=env)
        settings = {"name": "drq", "augmentation": "shift_intensity", "q_augmentations": 1,
                    "target_augmentations": 1, "q_average": "loss", **agent}
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "agent": settings}))
        return run

    drq_run("none_s0", 4.0, augmentation="none")
    drq_run("none_s1", 6.0, augmentation="none")
    for seed, score in enumerate([7.8, 99.0, 22.1]):
        drq_run(f"aug_s{seed}", score)
    (tmp_path / "runs" / "aug_s1" / "checkpoints" / "eval.json").write_text(json.dumps({"mean": 27.5}))
    drq_run("m2k2_s0", 30.0, q_augmentations=2, target_augmentations=2)
    drq_run("m2q_s0", 12.0, q_augmentations=2, q_average="q")
    drq_run("k3_s0", 11.0, target_augmentations=3)
    drq_run("old_s0", 3.0, env=stored_env("boxing", noop_max=0))
    drq_run("breakout_s0", 20.0, game="breakout")
    dqn = fake_run(tmp_path / "runs", "dqn_s0", "boxing", 50.0)
    (dqn / "config.yaml").write_text(yaml.safe_dump({"env": stored_env("boxing"), "agent": {"name": "dqn"}}))
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "again").symlink_to(tmp_path / "runs" / "aug_s0", target_is_directory=True)

    found = bench.ablation_from_runs([str(tmp_path / "runs"), str(tmp_path / "links")])
    boxing = found["boxing"]
    assert list(boxing) == ["no_augmentation", "augmentation_only", "plus_M2_K2",
                            "augmentation=shift_intensity, M=1, K=3", "augmentation_only (not atari100k: noop_max=0)",
                            "plus_M2 (q_average=q)"]
    assert boxing["no_augmentation"]["scores"] == [4.0, 6.0] and boxing["no_augmentation"]["mean"] == 5.0
    aug = boxing["augmentation_only"]
    assert sorted(aug["scores"]) == [7.8, 22.1, 27.5]   # eval.json's 27.5, not summary.json's 99; aug_s0 once
    assert sorted(aug["sources"]) == ["eval.py", "in_training", "in_training"]
    assert aug["hns_mean"] == pytest.approx(float(np.mean(human_normalized("boxing", np.array(aug["scores"])))))
    assert found["breakout"] == {"augmentation_only": {**found["breakout"]["augmentation_only"], "scores": [20.0]}}
    assert bench.ablation_overrides("plus_M2") == ["agent.augmentation=shift_intensity", "agent.q_augmentations=2",
                                                   "agent.target_augmentations=1"]

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "drq.py"), "--sections", "ablation",
                          "--ablation-runs", str(tmp_path / "runs"), "--json"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Ablation on boxing" in out.stdout and "* scored from the run's last in-training evaluation" in out.stdout
    figures = json.loads(out.stdout.strip().splitlines()[-1])["figures"]["ablation"]["ablation_runs"]
    assert figures["boxing"]["plus_M2_K2"]["scores"] == [30.0]
    for folder, message in ((tmp_path / "links" / "nothing", "does not exist"),
                            (tmp_path / "empty", "no finished agent=drq Atari runs")):
        if folder.name == "empty":
            folder.mkdir()
        refused = subprocess.run([sys.executable, str(root / "benchmarks" / "drq.py"), "--sections", "ablation",
                                  "--ablation-runs", str(folder)], cwd=root, capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr[-2000:]


def test_runs_of_other_agents_in_the_same_folder_are_grouped_and_not_counted(tmp_path):
    """A folder holding DrQ and DQN runs of the same game gives one group per agent; only DrQ's counts
    toward the DrQ(epsilon) target, and a folder of one agent keeps its plain name."""
    import subprocess
    import sys

    import yaml

    mixed = tmp_path / "mixed"
    for agent, scores in (("drq", [7.1, 12.0, 9.0]), ("dqn", [8.0, 9.0, 10.0])):
        for seed, score in enumerate(scores):
            run = fake_run(mixed, f"{agent}_s{seed}", "boxing", score)
            config = yaml.safe_load((run / "config.yaml").read_text())
            (run / "config.yaml").write_text(yaml.safe_dump({**config, "agent": {"name": agent}}))
    agents: dict = {}
    found = atari_final_scores([str(mixed)], agents=agents)
    assert found == {"mixed [drq]": {"boxing": [7.1, 12.0, 9.0]}, "mixed [dqn]": {"boxing": [8.0, 9.0, 10.0]}}
    assert agents == {"mixed [drq]": "drq", "mixed [dqn]": "dqn"}
    assert list(atari_final_scores([str(mixed / "drq_s0")])) == ["drq_s0"]

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "drq.py"), "--sections", "games", "--runs",
                          str(mixed), "--json"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # both means (9.4 and 9.0) lie inside the published DrQ(eps) range; only DrQ's group counts
    assert json.loads(out.stdout.strip().splitlines()[-1])["ratios"] == {"mixed [drq]/games_within_spread_3_runs": 1}
    assert "mixed [dqn]: not counted toward the target (agent dqn, not drq)" in out.stdout
