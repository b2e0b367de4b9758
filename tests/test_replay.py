"""Unit tests of the replay API: contract, persistence, dict observations, errors, PER, sequences."""

from __future__ import annotations

import io
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from replay import SequenceReplay, SumTree, TransitionReplay, nstep_value_targets

ATARI_OBS = gym.spaces.Box(0, 255, (4, 8, 8), np.uint8)  # Atari-shaped but small frames


def fill_atari(buf: TransitionReplay, steps: int, seed: int = 0, p_done: float = 0.05) -> None:
    """Feed frame-stacked uint8 observations with random terminations/truncations."""
    rng = np.random.default_rng(seed)
    n = buf.num_envs
    obs = rng.integers(0, 256, (n, 4, 8, 8), dtype=np.uint8)
    for _ in range(steps):
        next_obs = np.concatenate([obs[:, 1:], rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)], axis=1)
        terminated = rng.random(n) < p_done
        truncated = (rng.random(n) < p_done) & ~terminated
        buf.add(obs, rng.integers(0, 18, n), rng.normal(size=n).astype(np.float32), next_obs, terminated, truncated)
        obs = next_obs.copy()
        done = terminated | truncated
        obs[done] = rng.integers(0, 256, (int(done.sum()), 4, 8, 8), dtype=np.uint8)


def assert_batches_equal(a, b) -> None:
    for name in ("obs", "action", "reward", "next_obs", "discount", "weights"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    np.testing.assert_array_equal(a.indices, b.indices)


def make_atari(**kw) -> TransitionReplay:
    args = {"capacity": 400, "observation_space": ATARI_OBS, "action_space": gym.spaces.Discrete(18), "num_envs": 4,
                "n_step": 3, "frame_stack": 4, "seed": 3}
    args.update(kw)
    return TransitionReplay(**args)


def test_contract_shapes_and_dtypes():
    buf = make_atari()
    fill_atari(buf, 60)
    assert len(buf) > 0
    batch = buf.sample(32)
    assert batch.obs.shape == (32, 4, 8, 8) and batch.obs.dtype == torch.uint8
    assert batch.next_obs.shape == (32, 4, 8, 8)
    assert batch.action.shape == (32,) and batch.action.dtype == torch.int64
    for name in ("reward", "discount", "weights"):
        assert getattr(batch, name).shape == (32,) and getattr(batch, name).dtype == torch.float32
    assert isinstance(batch.indices, np.ndarray) and batch.indices.shape == (32,)
    allowed = np.array([0.0, 0.99, 0.99**2, 0.99**3], np.float32)
    assert np.isin(batch.discount.numpy(), allowed).all()


def test_memory_is_one_frame_per_row():
    buf = TransitionReplay(10_000, gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(18), 8,
                           n_step=3, frame_stack=4)
    per_row = buf.nbytes / (buf.rows * buf.num_envs)
    assert 84 * 84 <= per_row < 84 * 84 + 16  # one frame + action/reward/flags
    prioritized = TransitionReplay(10_000, gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(18), 8,
                                   n_step=3, frame_stack=4, prioritized=True)
    assert 8 * 10_000 <= prioritized.nbytes - buf.nbytes < 9 * 10_000  # the sum tree's float64 leaves and levels


def test_state_dict_round_trip_through_torch_save_weights_only():
    buf = make_atari(prioritized=True, beta_steps=10)
    fill_atari(buf, 80)
    first = buf.sample(16)
    buf.update_priorities(first.indices, np.linspace(0.1, 3.0, 16))
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    state = torch.load(blob, weights_only=True)
    twin = make_atari(prioritized=True, beta_steps=10, seed=99)
    twin.load_state_dict(state)
    assert len(twin) == len(buf)
    for _ in range(3):
        assert_batches_equal(buf.sample(16), twin.sample(16))
    # and adding afterwards keeps them identical
    fill_atari(buf, 5, seed=7)
    fill_atari(twin, 5, seed=7)
    assert_batches_equal(buf.sample(16), twin.sample(16))


def test_a_young_buffer_saves_only_the_rows_it_wrote(tmp_path):
    plain = make_atari(capacity=4000)                   # 1000 rows per env
    fill_atari(plain, 40)
    blob = io.BytesIO()
    torch.save(plain.state_dict(), blob)
    assert len(blob.getvalue()) < 0.1 * plain.nbytes
    assert plain.save(tmp_path / "plain.arbor-replay") < 0.1 * plain.nbytes
    buf = make_atari(capacity=4000, prioritized=True)
    fill_atari(buf, 40)
    rows_written = int(buf.state_dict()["arrays"]["pointer.written"].max())
    state = buf.state_dict()
    assert state["arrays"]["storage.obs"].shape == (4, rows_written, 8, 8)
    buf.save(tmp_path / "young.arbor-replay")
    # into a new buffer, from the file and from the state dict, and into one that held other data
    used = make_atari(capacity=4000, prioritized=True)
    fill_atari(used, 700, seed=9)                       # more rows than the saved state holds
    twins = [TransitionReplay.load(tmp_path / "young.arbor-replay"), make_atari(capacity=4000, prioritized=True), used]
    twins[1].load_state_dict(state)
    used.load_state_dict(state)
    assert np.array_equal(used._arrays["obs"][:, rows_written:], np.zeros_like(used._arrays["obs"][:, rows_written:]))
    for twin in twins:
        assert len(twin) == len(buf)
        assert_batches_equal(buf.sample(64), twin.sample(64))
        buf.load_state_dict(state)                      # rewind the sampler for the next twin
    # past half of each stream every row is saved, without a copy
    fill_atari(buf, 600, seed=1)
    assert buf.state_dict()["arrays"]["storage.obs"].shape == (4, 1000, 8, 8)
    assert np.shares_memory(buf.state_dict()["arrays"]["storage.obs"].numpy(), buf._arrays["obs"])


def test_version_1_states_with_every_row_still_load():
    buf = make_atari(capacity=4000)
    fill_atari(buf, 40)
    state = buf.state_dict()
    state["version"] = 1
    state["arrays"] = {name: (torch.from_numpy(buf._arrays[name[len("storage."):]]) if name.startswith("storage.")
                              else arr) for name, arr in state["arrays"].items()}
    twin = make_atari(capacity=4000)
    twin.load_state_dict(state)
    assert_batches_equal(buf.sample(32), twin.sample(32))


def test_load_state_dict_rejects_mismatch_and_changes_nothing():
    buf = make_atari()
    fill_atari(buf, 30)
    other = make_atari(capacity=800)
    fill_atari(other, 10, seed=5)
    before = other.state_dict()
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in before.items()}
    snapshot = {k: t.clone() for k, t in other.state_dict()["arrays"].items()}
    with pytest.raises(ValueError, match="capacity"):
        other.load_state_dict(buf.state_dict())
    bad = buf.state_dict()
    bad["arrays"] = dict(bad["arrays"])
    bad["arrays"]["storage.reward"] = bad["arrays"]["storage.reward"][:-1]
    same = make_atari()
    fill_atari(same, 10, seed=5)
    snap_same = {k: t.clone() for k, t in same.state_dict()["arrays"].items()}
    with pytest.raises(ValueError, match="storage.reward"):
        same.load_state_dict(bad)
    for k, t in same.state_dict()["arrays"].items():
        assert torch.equal(t, snap_same[k])
    for k, t in other.state_dict()["arrays"].items():
        assert torch.equal(t, snapshot[k])


def test_save_load_round_trip_and_corruption(tmp_path):
    buf = make_atari(prioritized=True)
    fill_atari(buf, 70)
    path = tmp_path / "buf.arbor-replay"
    size = buf.save(path)
    assert os.path.getsize(path) == size
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    loaded = TransitionReplay.load(path)
    assert len(loaded) == len(buf)
    assert_batches_equal(buf.sample(8), loaded.sample(8))

    raw = path.read_bytes()
    truncated = tmp_path / "truncated.arbor-replay"
    truncated.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match="truncated"):
        TransitionReplay.load(truncated)
    corrupt = bytearray(raw)
    corrupt[-size // 3] ^= 0xFF  # inside the frame payload
    bad = tmp_path / "corrupt.arbor-replay"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="checksum"):
        TransitionReplay.load(bad)
    header_hit = bytearray(raw)
    header_hit[40] ^= 0x01
    bad.write_bytes(bytes(header_hit))
    with pytest.raises(ValueError, match="header"):
        TransitionReplay.load(bad)
    bad.write_bytes(b"NOTREPLAY" * 10)
    with pytest.raises(ValueError, match="not an Arbor replay file"):
        TransitionReplay.load(bad)
    with pytest.raises(ValueError, match="not a 'SequenceReplay'"):
        SequenceReplay.load(path)


def test_mmap_storage_matches_memory(tmp_path):
    mem = make_atari()
    disk = make_atari(storage="mmap", path=tmp_path / "arrays")
    fill_atari(mem, 50)
    fill_atari(disk, 50)
    assert_batches_equal(mem.sample(32), disk.sample(32))
    assert (tmp_path / "arrays" / "obs.npy").exists()
    assert isinstance(disk._arrays["obs"], np.memmap)
    disk.save(tmp_path / "d.arbor-replay")
    again = TransitionReplay.load(tmp_path / "d.arbor-replay", storage="mmap", storage_path=tmp_path / "again")
    assert_batches_equal(mem.sample(32), again.sample(32))


def test_dict_observations_minigrid_like():
    space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8),
                             "direction": gym.spaces.Discrete(4)})
    buf = TransitionReplay(200, space, gym.spaces.Discrete(7), 2, n_step=2, gamma=0.5)
    rng = np.random.default_rng(0)
    # step t of env e has image filled with 10*t + e and direction t % 4.
    def obs_at(t):
        return {"image": np.stack([np.full((7, 7, 3), 10 * t + e, np.uint8) for e in range(2)]),
                "direction": np.array([t % 4, t % 4])}
    for t in range(10):
        buf.add(obs_at(t), rng.integers(0, 7, 2), np.ones(2), obs_at(t + 1), np.array([t == 9, False]),
                np.zeros(2, bool))
    batch = buf.sample(64)
    t = batch.obs["image"][:, 0, 0, 0].long() // 10
    env = batch.obs["image"][:, 0, 0, 0].long() % 10
    assert torch.equal(batch.obs["direction"].long(), t % 4)
    ended = (env == 0) & (t == 9)
    steps = torch.where(ended, 1, 2)
    assert torch.equal(batch.next_obs["image"][:, 0, 0, 0].long(), 10 * (t + steps) + env)
    expected_reward = torch.where(ended, 1.0, 1.5)
    assert torch.allclose(batch.reward, expected_reward)
    terminated_within = (env == 0) & (t >= 8)  # step 9 of env 0 terminates
    assert torch.equal(batch.discount, torch.where(terminated_within, 0.0, 0.25))


def test_clear_errors_on_bad_input():
    buf = make_atari()
    obs = np.zeros((4, 4, 8, 8), np.uint8)
    ok = {"obs": obs, "action": np.zeros(4, int), "reward": np.zeros(4), "next_obs": obs,
              "terminated": np.zeros(4, bool), "truncated": np.zeros(4, bool)}
    with pytest.raises(ValueError, match=r"obs: expected shape \(4, 4, 8, 8\)"):
        buf.add(**{**ok, "obs": np.zeros((3, 4, 8, 8), np.uint8)})
    with pytest.raises(TypeError, match="next_obs: dtype float32"):
        buf.add(**{**ok, "next_obs": obs.astype(np.float32)})
    with pytest.raises(TypeError, match="action"):
        buf.add(**{**ok, "action": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="action: values must lie"):
        buf.add(**{**ok, "action": np.full(4, 18)})
    with pytest.raises(ValueError, match="reward: expected shape"):
        buf.add(**{**ok, "reward": np.zeros(5)})
    assert len(buf) == 0  # nothing half-written
    with pytest.raises(ValueError, match="empty"):
        buf.sample(2)
    with pytest.raises(ValueError, match="frame_stack"):
        TransitionReplay(100, gym.spaces.Box(0, 1, (3, 8), np.float32), gym.spaces.Discrete(2), 1, frame_stack=4)
    with pytest.raises(ValueError, match="path"):
        TransitionReplay(100, ATARI_OBS, gym.spaces.Discrete(2), 1, storage="mmap")
    with pytest.raises(RuntimeError, match="prioritized"):
        buf.update_priorities(np.zeros(1, int), np.ones(1))
    # torch tensors are accepted as input
    buf.add(torch.from_numpy(obs), torch.zeros(4, dtype=torch.long), torch.zeros(4), torch.from_numpy(obs),
            torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    assert len(buf) == 4


def test_open_window_not_sampled_until_complete():
    buf = TransitionReplay(100, gym.spaces.Box(-10, 10, (1,), np.float32), gym.spaces.Discrete(2), 1, n_step=3)
    o = lambda t: np.array([[t]], np.float32)
    for t in range(3):
        buf.add(o(t), [0], [1.0], o(t + 1), [False], [False])
    assert buf.sampleable_indices().size == 1  # only step 0 has its 3-step window
    batch = buf.sample(5)
    assert torch.all(batch.obs == 0) and torch.all(batch.next_obs == 3)
    buf.add(o(3), [0], [1.0], o(4), [False], [True])  # truncation closes every open window
    assert buf.sampleable_indices().size == 4
    batch = buf.sample(200)
    start = batch.obs[:, 0]
    assert set(start.tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert torch.all(batch.next_obs[:, 0] == torch.clamp(start + 3, max=4))
    assert torch.allclose(batch.discount, 0.99 ** (batch.next_obs[:, 0] - start))  # truncation bootstraps


def test_uniform_sampling_is_uniform_and_prioritized_is_proportional():
    space = gym.spaces.Box(-1e6, 1e6, (1,), np.float32)
    uni = TransitionReplay(64, space, gym.spaces.Discrete(2), 1, seed=1)
    per = TransitionReplay(64, space, gym.spaces.Discrete(2), 1, seed=1, prioritized=True, alpha=1.0)
    for t in range(30):
        for b in (uni, per):
            b.add(np.array([[t]], np.float32), [0], [0.0], np.array([[t + 1]], np.float32), [t == 29], [False])
    ids = uni.sampleable_indices()
    assert ids.size == 30
    counts = np.bincount(np.searchsorted(ids, uni.sample(30_000).indices), minlength=30)
    assert counts.min() > 800 and counts.max() < 1200
    per.update_priorities(ids, np.arange(1, 31, dtype=np.float64))
    sampled = per.sample(60_000)
    freq = np.bincount(np.searchsorted(ids, sampled.indices), minlength=30) / 60_000
    np.testing.assert_allclose(freq, np.arange(1, 31) / np.arange(1, 31).sum(), atol=0.004)
    # weights: (N P)^-beta normalised by the batch max
    prio = np.arange(1, 31)[np.searchsorted(ids, sampled.indices)] + 1e-6
    w = (30 * prio / (np.arange(1, 31).sum() + 30e-6)) ** -0.4
    np.testing.assert_allclose(sampled.weights.numpy(), w / w.max(), rtol=1e-4)


def test_beta_anneals_linearly():
    buf = make_atari(prioritized=True, beta=0.4, beta_final=1.0, beta_steps=4)
    fill_atari(buf, 30)
    betas = []
    for _ in range(6):
        betas.append(buf.current_beta())
        buf.sample(4)
    np.testing.assert_allclose(betas, [0.4, 0.55, 0.7, 0.85, 1.0, 1.0])


def test_stale_priority_updates_are_ignored():
    space = gym.spaces.Box(-1e6, 1e6, (1,), np.float32)
    buf = TransitionReplay(8, space, gym.spaces.Discrete(2), 1, prioritized=True, alpha=1.0)
    ids = [buf.add(np.array([[t]], np.float32), [0], [0.0], np.array([[t + 1]], np.float32), [False], [False])[0]
           for t in range(20)]
    old, fresh = ids[0], ids[-2]
    buf.update_priorities([old, fresh], [50.0, 5.0])
    assert buf.priorities([old])[0] == 0.0
    assert buf.priorities([fresh])[0] == pytest.approx(5.0 + 1e-6)
    assert buf._tree.total == pytest.approx(buf.priorities(np.array(ids[-7:])).sum())


def test_sum_tree_matches_cumsum_search():
    rng = np.random.default_rng(0)
    tree = SumTree(37)
    values = rng.random(37) * (rng.random(37) < 0.7)
    tree.update(np.arange(37), values)
    tree.update(np.array([3, 9]), np.array([2.5, 0.0]))
    values[[3, 9]] = [2.5, 0.0]
    assert tree.total == pytest.approx(values.sum())
    mass = rng.random(1000) * values.sum()
    expected = np.searchsorted(np.cumsum(values), mass, side="right")
    np.testing.assert_array_equal(tree.find(mass), expected)
    rebuilt = SumTree(37)
    rebuilt.set_all(values)
    for a, b in zip(rebuilt.levels, tree.levels):
        np.testing.assert_allclose(a, b)
    small = SumTree(5, fanout=2)  # several levels with a narrow fan-out
    small.update(np.arange(5), np.array([0.0, 1.0, 0.0, 2.0, 3.0]))
    np.testing.assert_array_equal(small.find(np.array([0.0, 0.99, 1.0, 2.5, 3.0, 5.9])), [1, 1, 3, 3, 4, 4])


def test_sequence_write_back_and_value_targets():
    space = gym.spaces.Box(-1e6, 1e6, (1,), np.float32)
    buf = SequenceReplay(200, space, gym.spaces.Discrete(3), 1, unroll_steps=2, n_step=2, gamma=0.5,
                         extras={"root_value": ((), np.float32), "to_play": ((), np.int8)})
    ids = []
    for t in range(6):  # one terminated two-player game of 6 plies
        ids.append(buf.add(np.array([[t]], np.float32), [t % 3], [float(t == 5)], np.array([[t + 1]], np.float32),
                           [t == 5], [False], extras={"root_value": [10.0 + t], "to_play": [t % 2]})[0])
    batch = buf.sample(64)
    start = batch.obs[:, 0].long()
    assert batch.mask.shape == (64, 5)
    assert torch.equal(batch.mask, (start[:, None] + torch.arange(5)) <= 5)
    # reanalyse: write new root values for the sampled positions
    new_values = np.where(batch.positions >= 0, -(batch.positions.astype(np.float32)), 0).astype(np.float32)
    written = buf.write_back(batch.positions, {"root_value": new_values})
    assert written == int((batch.positions >= 0).sum())
    again = buf.sample(64)
    expected = torch.from_numpy(np.where(again.positions >= 0, -again.positions.astype(np.float32), 0))
    assert torch.equal(again.extras["root_value"], expected)
    # value targets for a two-player game: z_t = r_t*s(t) + g r_{t+1} s(t+1) + g^2 v_{t+2} s(t+2)
    buf.write_back(np.array(ids), {"root_value": np.arange(6, dtype=np.float32)})
    batch = buf.sample(64)
    z = nstep_value_targets(batch, "root_value", gamma=0.5, n_step=2, unroll_steps=2, to_play_key="to_play")
    s = batch.obs[:, 0].long()
    for b in range(64):
        for t in range(3):
            pos = int(s[b]) + t
            if pos > 5:
                assert z[b, t] == 0
                continue
            want = 0.0
            for i in range(2):
                if pos + i <= 5:
                    want += 0.5**i * float(pos + i == 5) * (1 if i % 2 == 0 else -1)
            if pos + 2 <= 5:
                want += 0.25 * (pos + 2)
            assert z[b, t].item() == pytest.approx(want)


def test_sequence_prioritized_save_load_and_per_position_priorities(tmp_path):
    space = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
    extras = {"policy": ((3,), np.float32), "root_value": ((), np.float32), "to_play": ((), np.int8)}
    buf = SequenceReplay(120, space, gym.spaces.Discrete(3), 2, unroll_steps=3, n_step=2, extras=extras,
                         prioritized=True, alpha=1.0, seed=5)
    rng = np.random.default_rng(0)
    for t in range(40):
        obs = np.full((2, 2), t, np.float32)
        buf.add(obs, rng.integers(0, 3, 2), rng.normal(size=2), obs + 1, np.array([t % 9 == 8, False]),
                np.array([False, t % 11 == 10]),
                extras={"policy": rng.dirichlet(np.ones(3), 2), "root_value": rng.normal(size=2),
                        "to_play": np.array([t % 2, t % 2])})
    batch = buf.sample(8)
    live = batch.positions[batch.positions >= 0]
    buf.update_priorities(live, np.full(live.size, 7.0))  # per-position priorities
    np.testing.assert_allclose(buf.priorities(live), 7.0 + 1e-6)
    path = tmp_path / "seq.arbor-replay"
    buf.save(path)
    loaded = SequenceReplay.load(path)
    a, b = buf.sample(16, window_obs=True), loaded.sample(16, window_obs=True)
    for name in ("obs", "action", "reward", "mask", "weights", "window_obs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in extras:
        assert torch.equal(a.extras[name], b.extras[name])
    np.testing.assert_array_equal(a.positions, b.positions)


def test_mmap_load_reads_into_memory_maps(tmp_path):
    buf = make_atari()
    fill_atari(buf, 40)
    buf.save(tmp_path / "b.arbor-replay")
    loaded = TransitionReplay.load(tmp_path / "b.arbor-replay", storage="mmap", storage_path=tmp_path / "maps")
    assert isinstance(loaded._arrays["obs"], np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "maps" / "obs.npy", mmap_mode="r"), buf._arrays["obs"])
    assert_batches_equal(buf.sample(16), loaded.sample(16))


def test_add_is_atomic_on_bad_input():
    """A rejected add leaves every array and pointer untouched."""
    buf = make_atari()
    fill_atari(buf, 20)
    before = {k: v.clone() for k, v in buf.state_dict()["arrays"].items()}
    obs = np.zeros((4, 4, 8, 8), np.uint8)
    with pytest.raises(ValueError):
        buf.add(obs, np.zeros(4, int), np.zeros(4), obs, np.zeros(4, bool), np.zeros(3, bool))
    for k, v in buf.state_dict()["arrays"].items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_benchmark_script_smoke():
    """benchmarks/replay.py --quick runs and ends with the documented JSON line (figures are not asserted)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "replay.py"), "--quick", "--json"], cwd=root,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last["benchmark"] == "replay"
    for key in ("ours/sb3_memory_per_transition", "ours/sb3_add_throughput", "ours/sb3_sample_speed_b32",
                "ours/sb3_sample_speed_b256", "ours_prioritized/ours_uniform_sample_speed_b256"):
        assert last["ratios"][key] > 0
    assert last["figures"]["save_load_identical"] == 1.0


def test_box_actions_and_discrete_observations():
    """Continuous actions come back as float32 rows; Discrete observations as integer ids."""
    buf = TransitionReplay(64, gym.spaces.Discrete(500), gym.spaces.Box(-1, 1, (2,), np.float32), 2, n_step=2,
                           gamma=0.5)
    for t in range(12):
        act = np.array([[t / 100, -t / 100], [t / 50, 0.5]], np.float32)
        buf.add(np.array([t, 100 + t]), act, np.array([1.0, 2.0]), np.array([t + 1, 101 + t]),
                np.array([False, t == 11]), np.array([False, False]))
    batch = buf.sample(64)
    assert batch.action.dtype == torch.float32 and batch.action.shape == (64, 2)
    env1 = batch.obs >= 100
    t = torch.where(env1, batch.obs - 100, batch.obs).double()
    expected = torch.stack([torch.where(env1, t / 50, t / 100), torch.where(env1, 0.5, -t / 100)], dim=1)
    assert torch.allclose(batch.action.double(), expected, atol=1e-6)
    steps = torch.where(batch.obs == 111, 1, 2)  # env 1 terminates at t = 11
    assert torch.equal(batch.next_obs, batch.obs + steps)
    assert torch.equal(batch.discount, torch.where(batch.obs >= 110, 0.0, 0.25))


def _reference_windows(src: np.ndarray, base: np.ndarray, start: np.ndarray, length: int, rows: int) -> np.ndarray:
    """Plain-Python window gather: row (start + j) % rows of the stream at base, window after window."""
    per_item = start.size // base.size
    out = []
    for i, s in enumerate(start.reshape(-1)):
        b = base[i // per_item]
        out.extend(src[b + (s + j) % rows] for j in range(length))
    return np.stack(out)


@pytest.mark.parametrize("dtype,row_shape", [(np.uint8, (4, 84, 84)), (np.float32, (5,)), (np.int64, ())])
def test_gather_kernel_matches_reference_and_ignores_thread_count(dtype, row_shape):
    from planners._core import gather_windows

    rng = np.random.default_rng(7)
    envs, rows, length = 3, 40, 7
    src = rng.integers(0, 200, (envs * rows,) + row_shape).astype(dtype)
    byte_rows = src.reshape(envs * rows, -1).view(np.uint8)
    base = rng.integers(0, envs, 96) * rows
    start = rng.integers(0, rows, (96, 2))
    start[:4, 0] = rows - np.arange(1, 5)  # windows that wrap around the end of their stream
    start = np.ascontiguousarray(start.reshape(-1), dtype=np.int64)
    expect = _reference_windows(src, base, start, length, rows)
    results = []
    for threads in (1, 2, 3):
        out = np.full(expect.shape, 1, dtype=dtype)
        gather_windows(byte_rows, base.astype(np.int64), start, length, rows,
                       out.reshape(out.shape[0], -1).view(np.uint8), threads)
        results.append(out)
    for out in results:
        np.testing.assert_array_equal(out, expect)
    assert dtype is not np.uint8 or expect.nbytes > (2 << 20)  # large enough for the kernel to use threads


def test_gather_kernel_rejects_bad_windows_with_clear_errors():
    from planners._core import gather_windows

    src = np.zeros((20, 16), np.uint8)  # 2 streams of 10 rows
    out = np.zeros((6, 16), np.uint8)
    base = np.array([0, 10], np.int64)
    ok = np.array([9, 0], np.int64)
    gather_windows(src, base, ok, 3, 10, out)
    with pytest.raises(IndexError, match="outside"):
        gather_windows(src, base, np.array([10, 0], np.int64), 3, 10, out)  # start not below rows
    with pytest.raises(IndexError, match="outside"):
        gather_windows(src, np.array([0, 11], np.int64), ok, 3, 10, out)  # stream runs past the source
    with pytest.raises(ValueError, match="out must have shape"):
        gather_windows(src, base, ok, 2, 10, out)
    with pytest.raises(ValueError, match="length"):
        gather_windows(src, base, ok, 11, 10, np.zeros((22, 16), np.uint8))
    with pytest.raises(ValueError, match="multiple"):
        gather_windows(src, base, np.array([1, 2, 3], np.int64), 2, 10, out)


def test_sample_copies_each_window_once_and_matches_row_gather():
    """Atari sampling goes through the window kernel: the result equals an explicit row-by-row gather."""
    buf = make_atari(capacity=2_000, num_envs=4)
    fill_atari(buf, 700, p_done=0.02)  # wraps the streams
    state = buf._rng.bit_generator.state
    batch = buf.sample(64)
    buf._rng.bit_generator.state = state
    slot, row, base = buf._draw(64)
    flat = buf._np_flat["obs"]
    stack = [flat[(row + d) % buf.rows + base] for d in range(-3, 1)]
    np.testing.assert_array_equal(batch.obs.numpy(), np.stack(stack, axis=1))


@pytest.mark.parametrize("frame_stack", [4, 0])
def test_numpy_gather_without_the_compiled_kernel_gives_the_same_batches(monkeypatch, frame_stack):
    import replay.core

    obs_space = ATARI_OBS if frame_stack else gym.spaces.Box(-1, 1, (6,), np.float32)
    a, b = make_atari(frame_stack=frame_stack, observation_space=obs_space), make_atari(
        frame_stack=frame_stack, observation_space=obs_space)
    rng = np.random.default_rng(1)
    if frame_stack:
        fill_atari(a, 150)
        fill_atari(b, 150)
    else:
        for _ in range(150):
            data = (rng.random((4, 6), dtype=np.float32), rng.integers(0, 18, 4), rng.random(4, dtype=np.float32),
                    rng.random((4, 6), dtype=np.float32), rng.random(4) < 0.05, rng.random(4) < 0.05)
            a.add(*data)
            b.add(*data)
    compiled = a.sample(48)
    monkeypatch.setattr(replay.core, "_gather_windows_kernel", None)
    assert_batches_equal(compiled, b.sample(48))


@pytest.mark.parametrize("kind", ["stacked", "vector", "prioritized", "sequence"])
def test_compiled_add_writes_exactly_what_the_numpy_add_writes(monkeypatch, kind):
    """Every array of the buffer (storage, pointers, priorities) matches after the same adds with and without
    the compiled add, across episode ends and wrap-around."""
    import replay.core

    def build():
        if kind == "sequence":
            return SequenceReplay(120, gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4), 3, unroll_steps=3,
                                  n_step=2, extras={"policy": ((4,), np.float32)}, prioritized=True, seed=0)
        if kind == "vector":
            return make_atari(capacity=120, frame_stack=0, observation_space=gym.spaces.Box(-1, 1, (6,), np.float32))
        return make_atari(capacity=120, prioritized=kind == "prioritized")

    def feed(buf):
        rng = np.random.default_rng(5)
        n = buf.num_envs
        for t in range(200):
            if kind == "stacked" or kind == "prioritized":
                obs = rng.integers(0, 256, (n, 4, 8, 8), dtype=np.uint8)
                nxt = rng.integers(0, 256, (n, 4, 8, 8), dtype=np.uint8)
            else:
                shape = (n,) + buf.observation_space.shape
                obs, nxt = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
            act = rng.integers(0, buf.action_space.n, n)
            rew, term, trunc = rng.normal(size=n).astype(np.float32), rng.random(n) < 0.08, rng.random(n) < 0.04
            if kind == "vector":  # what vector envs hand over: float64 rewards; and int32 actions
                rew, act = rew.astype(np.float64), act.astype(np.int32)
            if kind == "sequence":
                buf.add(obs, act, rew, nxt, term, trunc, extras={"policy": rng.random((n, 4), dtype=np.float32)})
            else:
                ids = buf.add(obs, act, rew, nxt, term, trunc)
                if kind == "prioritized" and t % 7 == 0:
                    buf.update_priorities(ids, rng.random(n) + 0.1)
        return buf

    compiled = feed(build())
    monkeypatch.setattr(replay.core, "_add_step_kernel", None)
    numpy_add = feed(build())
    a, b = compiled.state_dict(), numpy_add.state_dict()
    assert a["arrays"].keys() == b["arrays"].keys()
    for key in a["arrays"]:
        assert torch.equal(a["arrays"][key], b["arrays"][key]), key
    assert len(compiled) == len(numpy_add) and compiled._max_written == numpy_add._max_written


def test_kernels_refuse_arrays_they_would_have_to_copy_to_write():
    """A non-contiguous or wrongly typed output array raises instead of receiving the writes in a hidden copy."""
    from planners._core import add_step, gather_windows

    src = np.zeros((20, 16), np.uint8)
    with pytest.raises(TypeError):
        gather_windows(src, np.array([0], np.int64), np.array([0], np.int64), 2, 10, np.zeros((4, 16), np.uint8)[::2])
    n_env, rows = 2, 10
    arrays = dict(obs_rows=np.zeros((n_env * rows, 4), np.uint8), next_obs=np.ones((n_env, 4), np.uint8),
                  frame_offset=0, action_rows=np.zeros((n_env * rows, 1), np.uint8),
                  action=np.empty((0, 1), np.uint8), action_index=np.array([1, 2]), action_low=0, action_high=17,
                  reward_rows=np.zeros(n_env * rows, np.float32), reward=np.zeros(n_env, np.float32),
                  terminated=np.zeros(n_env, np.uint8), truncated=np.zeros(n_env, np.uint8),
                  flags=np.zeros(n_env * rows, np.uint8), sampleable=np.zeros(n_env * rows, bool),
                  row_id=np.zeros(n_env * rows, np.int64), written=np.array([1, 9, 1, 9], np.int64)[::2],
                  head=np.zeros(n_env, np.int64), ep_start=np.zeros(n_env, np.int64), ids=np.empty(n_env, np.int64),
                  rows=rows, stack=1, lookahead=1, max_written=1)
    with pytest.raises(TypeError):
        add_step(**arrays)
    arrays["written"] = np.array([1, 1], np.int32)
    with pytest.raises(TypeError):
        add_step(**arrays)
    arrays["written"] = np.array([1, 1], np.int64)
    assert add_step(**arrays) == (0, 2)
    np.testing.assert_array_equal(arrays["written"], [2, 2])
    np.testing.assert_array_equal(arrays["ids"], [0, 1])
