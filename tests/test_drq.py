"""DrQ: batched random shifts, K / M averaged targets, DQN equivalence, state round trip, a train.py run."""
from __future__ import annotations

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import only_run_dir, read_jsonl, run_cli
from torch import nn

from agents._augment import (
    Augmentation,
    intensity,
    random_shift,
    random_shift_offsets,
    shift,
)
from agents.dqn import DQN, DQNConfig
from agents.drq import (
    DrQ,
    DrQConfig,
    augmented_copies,
    bootstrap_values,
    chosen_q_values,
    q_learning_loss,
)
from envs.spec import EnvSpec
from runtime.errors import UserError


def naive_shift(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-sample reference: replicate-pad by ``pad``, crop at ``pad + offset``."""
    h, w = images.shape[-2:]
    out = []
    for image, (dy, dx) in zip(images.float(), offsets.tolist()):
        padded = F.pad(image[None], (pad, pad, pad, pad), mode="replicate")[0]
        out.append(padded[:, pad + dy: pad + dy + h, pad + dx: pad + dx + w])
    return torch.stack(out).to(images.dtype)


def test_shift_equals_pad_and_crop_reference_per_sample():
    images = torch.randint(0, 256, (24, 4, 84, 84), dtype=torch.uint8)
    offsets = random_shift_offsets(24, 4, torch.Generator().manual_seed(3))
    out = shift(images, offsets)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, naive_shift(images, offsets, 4))


def test_compiled_uint8_shift_equals_the_torch_gather(monkeypatch):
    """uint8 CPU batches take csrc/augment.cpp; any shift, even past the whole image, reads like the gather."""
    import agents._augment as augment

    calls = []
    assert augment._shift_kernel is not None and augment._shift_kernel_nhwc is not None

    def counted(kernel):
        def call(*args):
            calls.append(kernel.__name__)
            return kernel(*args)
        return call

    rng = torch.Generator().manual_seed(1)
    for shape, reach in [((16, 4, 84, 84), 4), ((64, 3, 7, 5), 9), ((5, 1, 1, 3), 4)]:
        pairs = torch.randint(0, 256, (shape[0], 2 * shape[1], *shape[2:]), dtype=torch.uint8, generator=rng)
        images = pairs[:, shape[1]:]   # a strided batch of contiguous images, as replay samples are
        offsets = torch.randint(-reach, reach + 1, (shape[0], 2), generator=rng)
        monkeypatch.setattr(augment, "_shift_kernel", counted(augment._shift_kernel))
        monkeypatch.setattr(augment, "_shift_kernel_nhwc", counted(augment._shift_kernel_nhwc))
        compiled = shift(images, offsets)
        compiled_cl = shift(images, offsets, channels_last=True)
        monkeypatch.setattr(augment, "_shift_kernel", None)
        gathered = shift(images, offsets)
        monkeypatch.undo()
        assert compiled.dtype == torch.uint8 and compiled.is_contiguous()
        assert compiled_cl.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(compiled, gathered) and torch.equal(compiled_cl, gathered)
        assert torch.equal(compiled, naive_shift(images, offsets, reach))
    assert calls == ["shift_images", "shift_images_nhwc"] * 3
    # Bad arguments raise errors that name the kernel called.
    src = images.numpy()
    with pytest.raises(ValueError, match="^shift_images: offsets must have shape"):
        augment._shift_kernel(src, np.zeros((1, 2), np.int64), src.copy())
    with pytest.raises(ValueError, match="^shift_images_nhwc: offsets must have shape"):
        augment._shift_kernel_nhwc(src, np.zeros((1, 2), np.int64), src.transpose(0, 2, 3, 1).copy())
    with pytest.raises(ValueError, match=r"^shift_images_nhwc: out must have shape \(B, H, W, C\)"):
        augment._shift_kernel_nhwc(src, np.zeros((len(src), 2), np.int64), src.copy())
    with pytest.raises(ValueError, match="^shift_images: each image of src must be contiguous"):
        augment._shift_kernel(src[..., ::2], np.zeros((len(src), 2), np.int64), src[..., ::2].copy())
    whole = src.copy()
    with pytest.raises(ValueError, match="^shift_images: out must not be src"):
        augment._shift_kernel(whole, np.zeros((len(src), 2), np.int64), whole)


def test_random_shift_draws_its_own_shift_per_sample_within_pad():
    pad, batch = 4, 256
    images = torch.zeros(batch, 2, 31, 31)
    images[:, :, 15, 15] = 1.0     # one bright pixel in the middle: its new place reveals the shift
    generator = torch.Generator().manual_seed(0)
    expected_offsets = random_shift_offsets(batch, pad, torch.Generator().manual_seed(0))
    out = random_shift(images, pad, generator)
    assert torch.equal(out, naive_shift(images, expected_offsets, pad))
    # The bright pixel moved by -offset, in both channels alike, never more than pad pixels.
    moved = []
    for b in range(batch):
        ys, xs = torch.nonzero(out[b, 0], as_tuple=True)
        assert len(ys) == 1 and torch.equal(out[b, 0], out[b, 1])
        moved.append((15 - int(ys[0]), 15 - int(xs[0])))
    moved = np.array(moved)
    assert np.abs(moved).max() == pad     # the whole range is used ...
    assert len({tuple(m) for m in moved}) > 40    # ... with a fresh shift per sample (81 possible)
    assert np.array_equal(moved, expected_offsets.numpy())


def test_shift_replicates_edges():
    image = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    out = shift(image, torch.tensor([[2, -3]]))
    # rows i+2 clamped to 4, columns j-3 clamped to 0
    rows = [min(i + 2, 4) for i in range(5)]
    cols = [max(j - 3, 0) for j in range(5)]
    assert torch.equal(out[0, 0], image[0, 0][rows][:, cols])


def test_intensity_scales_each_sample_by_one_bounded_factor():
    images = torch.full((500, 3, 4, 4), 100, dtype=torch.uint8)
    out = intensity(images, 0.05, torch.Generator().manual_seed(1))
    factors = out[:, 0, 0, 0] / 100.0
    assert out.dtype == torch.float32
    assert torch.allclose(out, factors.view(-1, 1, 1, 1) * 100.0)
    assert factors.min() >= 0.9 - 1e-6 and factors.max() <= 1.1 + 1e-6
    assert factors.std() > 0.02


def test_augmentation_generator_state_round_trips_and_none_is_identity():
    images = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    aug = Augmentation("shift_intensity", seed=5)
    state = aug.state_dict()
    first = aug(images)
    aug.load_state_dict(state)
    assert torch.equal(aug(images), first)
    assert Augmentation("none")(images) is images
    vectors = torch.randn(8, 3)
    assert Augmentation("shift")(vectors) is vectors


# ------------------------------------------------------------ K / M averaging
class RowQ(nn.Module):
    """A hand-made Q net on 1 x 3 x 3 images: Q(s)[a] = scale * s[0, 1, order[a]] (the middle row)."""

    def __init__(self, scale: float, order: list[int]):
        super().__init__()
        self.scale, self.order = scale, order

    def forward(self, obs):
        return self.scale * obs[:, 0, 1, self.order].float()


class FixedShifts:
    """An 'augmentation' returning the listed horizontal shifts in turn (whole batch alike)."""

    def __init__(self, dxs):
        self.dxs, self.calls = list(dxs), 0

    def __call__(self, obs):
        dx = self.dxs[self.calls % len(self.dxs)]
        self.calls += 1
        return shift(obs, torch.tensor([[0, dx]] * obs.shape[0]))


def row_image(row):
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 1] = torch.tensor(row, dtype=torch.float32)
    return image


def test_target_averages_k_augmentations_with_double_q_by_hand():
    online = RowQ(1.0, [0, 1, 2])
    target = RowQ(10.0, [2, 1, 0])
    next_obs = row_image([1, 2, 3])
    # dx=+1 -> row [2, 3, 3]: online argmax a=1, target value 10 * view[1] = 30
    # dx=-1 -> row [1, 1, 2]: online argmax a=2, target value 10 * view[0] = 10
    double = bootstrap_values(online, target, next_obs, FixedShifts([1, -1]), copies=2, double=True)
    assert double.tolist() == [20.0]
    # Without double Q the target's own argmax: max(10*[3,3,2]) = 30 and max(10*[2,1,1]) = 20.
    single = bootstrap_values(online, target, next_obs, FixedShifts([1, -1]), copies=2, double=False)
    assert single.tolist() == [25.0]
    # K = 1 uses only the first view.
    assert bootstrap_values(online, target, next_obs, FixedShifts([1, -1]), copies=1).tolist() == [30.0]
    # A shared target (synced every update) is the online net itself: max of [2,3,3] and [1,1,2].
    shared = bootstrap_values(online, online, next_obs, FixedShifts([1, -1]), copies=2, shared_target=True)
    assert shared.tolist() == [2.5]


def test_q_estimates_average_m_augmentations_by_hand():
    q = RowQ(1.0, [0, 1, 2])
    obs = torch.cat([row_image([1, 2, 3]), row_image([4, 5, 6])])
    action = torch.tensor([0, 2])
    values = chosen_q_values(q, obs, action, FixedShifts([1, -1, 0]), copies=3)
    # dx=+1: rows [2,3,3], [5,6,6]; dx=-1: [1,1,2], [4,4,5]; dx=0: unchanged
    assert values.tolist() == [[2.0, 6.0], [1.0, 5.0], [1.0, 6.0]]
    target = torch.tensor([1.0, 5.0])
    weights = torch.ones(2)
    loss, td = q_learning_loss(values, target, weights, loss="mse", average="loss")
    # per sample: mean over m of squared errors: (1+0+0)/3 and (1+0+1)/3
    assert loss.item() == pytest.approx(((1 / 3) + (2 / 3)) / 2)
    assert td.tolist() == pytest.approx([1 / 3, 2 / 3])
    loss_q, _ = q_learning_loss(values, target, weights, loss="mse", average="q")
    # averaged estimates 4/3 and 17/3 against 1 and 5
    assert loss_q.item() == pytest.approx(((1 / 3) ** 2 + (2 / 3) ** 2) / 2)


def test_m_and_k_copies_are_augmented_independently():
    aug = Augmentation("shift", seed=0)
    images = torch.randint(0, 256, (4, 1, 84, 84), dtype=torch.uint8)
    copies = augmented_copies(images, aug, 3).view(3, 4, 1, 84, 84)
    assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])


# ------------------------------------------------------------ the agent
def atari_like_spec(num_actions=4):
    obs = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    return EnvSpec(name="fake", observation_space=obs, action_space=gym.spaces.Discrete(num_actions), num_envs=2,
                   frame_stack=4, reward_clip=1.0)


def fill_replay(agent, steps=40, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    for t in range(steps):
        nxt = rng.integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
        done = np.array([t % 13 == 12, False])
        agent.replay.add(obs, rng.integers(0, 4, 2), rng.normal(size=2), nxt, done, np.zeros(2, bool))
        obs = nxt


def tiny_drq_config(**changes):
    values = {"name": "drq", "batch_size": 8, "buffer_size": 500, "learning_starts": 0, "n_step": 3,
              "gradient_steps": 2}
    return DrQConfig(**{**values, **changes})


def test_state_round_trip_continues_learning_exactly():
    cfg = tiny_drq_config(target_augmentations=2, q_augmentations=2)
    a = DrQ(cfg, atari_like_spec(), torch.device("cpu"), seed=1)
    fill_replay(a)
    a.learn()
    state = copy.deepcopy(a.state_dict())   # as written to disk: no tensors shared with agent a
    b = DrQ(cfg, atari_like_spec(), torch.device("cpu"), seed=99)
    b.load_state_dict(state)
    ma, mb = a.learn(), b.learn()
    assert ma["loss"] == mb["loss"]
    for pa, pb in zip(a.q.parameters(), b.q.parameters()):
        assert torch.equal(pa, pb)


def test_shared_target_is_copied_when_read_and_a_periodic_target_lags():
    """A target synced after every update is only copied when a checkpoint reads it; it then equals
    the online network. A target synced every 2 updates lags by one update in between; a Polyak
    target (tau < 1) moves a fraction tau of the way after each update."""
    shared = DrQ(tiny_drq_config(gradient_steps=1, target_update_interval=1), atari_like_spec(),
                 torch.device("cpu"), seed=2)
    fill_replay(shared)
    shared.learn()
    shared.learn()
    state = shared.state_dict()
    assert all(torch.equal(state["q_target"][k], v) for k, v in state["q"].items())
    periodic = DrQ(tiny_drq_config(gradient_steps=1, target_update_interval=2), atari_like_spec(),
                   torch.device("cpu"), seed=2)
    fill_replay(periodic)
    periodic.learn()
    lagging = periodic.state_dict()
    assert not all(torch.equal(lagging["q_target"][k], v) for k, v in lagging["q"].items())
    periodic.learn()
    synced = periodic.state_dict()
    assert all(torch.equal(synced["q_target"][k], v) for k, v in synced["q"].items())
    # Polyak averaging (tau < 1) moves the target part of the way after every update.
    polyak = DrQ(tiny_drq_config(gradient_steps=1, tau=0.25), atari_like_spec(), torch.device("cpu"), seed=2)
    fill_replay(polyak)
    before = {k: v.clone() for k, v in polyak.q_target.state_dict().items()}
    polyak.learn()
    online, target = polyak.q.state_dict(), polyak.q_target.state_dict()
    for k, v in before.items():
        if v.is_floating_point():
            assert torch.allclose(target[k], v + 0.25 * (online[k] - v), atol=1e-6)
    assert not all(torch.equal(target[k], online[k]) for k in online)


def test_drq_without_augmentation_is_dqn():
    """Augmentation none and K = M = 1: the same parameters as DQN after the same updates."""
    fields = {f.name for f in dataclasses.fields(DQNConfig)}
    drq_cfg = tiny_drq_config(augmentation="none", eps_decay_steps=0)
    dqn_cfg = DQNConfig(**{k: v for k, v in dataclasses.asdict(drq_cfg).items() if k in fields})
    dqn_cfg.name = "dqn"
    a = DrQ(drq_cfg, atari_like_spec(), torch.device("cpu"), seed=4)
    b = DQN(dqn_cfg, atari_like_spec(), torch.device("cpu"), seed=4)
    for agent in (a, b):
        fill_replay(agent)
        agent.learn()
        agent.learn()
    for pa, pb in zip(a.q.parameters(), b.q.parameters()):
        assert torch.equal(pa, pb)
    # ... and augmentation changes the update.
    c = DrQ(tiny_drq_config(eps_decay_steps=0), atari_like_spec(), torch.device("cpu"), seed=4)
    fill_replay(c)
    c.learn()
    c.learn()
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.q.parameters(), c.q.parameters()))


def test_epsilon_follows_dopamine_schedule():
    agent = DrQ(tiny_drq_config(learning_starts=1600, eps_decay_steps=5000), atari_like_spec(),
                torch.device("cpu"), total_steps=100_000)
    for steps, eps in [(0, 1.0), (1600, 1.0), (4100, 0.505), (6600, 0.01), (50_000, 0.01)]:
        agent.env_steps = steps
        assert agent.epsilon() == pytest.approx(eps)


def test_bad_values_name_the_key():
    with pytest.raises(UserError, match="agent.target_augmentations"):
        DrQConfig(target_augmentations=0).validate()
    with pytest.raises(UserError) as err:
        DrQConfig(augmentation="flip").validate()
    assert err.value.key == "agent.augmentation"
    vector = EnvSpec(name="v", observation_space=gym.spaces.Box(-1, 1, (4,)), action_space=gym.spaces.Discrete(2),
                     num_envs=1)
    with pytest.raises(UserError, match="needs image observations"):
        DrQ(DrQConfig(), vector, torch.device("cpu"))


def test_dopamine_network_pads_same_and_starts_xavier_uniform():
    """conv_padding=same follows TF/flax SAME (odd pixel after): 84 -> 21 -> 11 -> 11; xavier: zero biases."""
    from agents.networks import same_padding

    assert [same_padding(*a) for a in ((84, 8, 4), (21, 4, 2), (11, 3, 1))] == [(2, 2), (1, 2), (1, 1)]
    agent = DrQ(tiny_drq_config(conv_padding="same", weight_init="xavier_uniform"), atari_like_spec(),
                torch.device("cpu"), seed=0)
    torso = agent.q.torso
    assert torso.fc[0].in_features == 11 * 11 * 64
    shapes, x = [], torch.zeros(1, 4, 84, 84)
    for layer in torso.conv:
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            shapes.append(tuple(x.shape[-2:]))
    assert shapes == [(21, 21), (11, 11), (11, 11)]
    # With 2 pixels of padding before, a lone pixel at (0, 0) meets the first output's kernel at (2, 2).
    conv = torso.conv[0]
    pixel = torch.zeros(1, 4, 84, 84)
    pixel[0, :, 0, 0] = 1.0
    out = conv(pixel) - conv(torch.zeros_like(pixel))
    expected = conv.weight[:, :, 2, 2].sum(dim=1)
    torch.testing.assert_close(out[0, :, 0, 0], expected)
    for layer in agent.q.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
            assert (layer.bias == 0).all() and layer.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
    default = DrQ(tiny_drq_config(), atari_like_spec(), torch.device("cpu"), seed=0)
    assert default.q.torso.fc[0].in_features == 7 * 7 * 64 and default.q.head.advantage.bias.abs().sum() > 0
    with pytest.raises(UserError) as err:
        DrQConfig(conv_padding="SAME").validate()
    assert err.value.key == "agent.conv_padding" and "same" in err.value.choices


def test_train_smoke_run_on_atari_is_seeded(tmp_path):
    args = ["agent=drq", "env=atari", "env.game=pong", "logger=none", "total_env_steps=300",
            "agent.learning_starts=200", "agent.batch_size=8", "agent.q_augmentations=2",
            "agent.target_augmentations=2", "eval.episodes=1", "eval.num_envs=1", "logger.interval=100",
            "checkpoint.interval=1000", "torch_threads=1"]
    losses = []
    for name in ("a", "b"):
        result = run_cli("train.py", *args, f"runs_root={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
        records = read_jsonl(only_run_dir(tmp_path / name) / "metrics.jsonl")
        losses.append([r.get("train/loss") for r in records])
        assert (only_run_dir(tmp_path / name) / "checkpoints" / "latest.pt").is_file()
    assert losses[0] == losses[1] and any(v is not None for v in losses[0])
