"""Shared network pieces: torsos that turn any suite observation into features, and heads."""
from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.ReLU, last_activation: bool = False,
        norm: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with activations in between (``norm``: a LayerNorm
    before each activation, as MuZero's latent functions use)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            if norm:
                layers.append(nn.LayerNorm(sizes[i + 1]))
            layers.append(activation())
    return nn.Sequential(*layers)


class ConvTorso(nn.Module):
    """Convolutions, flattened, then one dense layer; inputs are scaled by ``1 / scale`` first."""

    def __init__(self, conv: nn.Sequential, input_shape: tuple[int, int, int], features: int, scale: float):
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *input_shape)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, features), nn.ReLU())
        self.out_features = features
        self.scale = scale
        self.channels_last = False

    def use_channels_last(self) -> ConvTorso:
        """Keep the convolution weights channels-last (faster oneDNN convolutions on CPU).

        Inputs are then laid out channels-last while still uint8: the convolution
        would make that copy anyway, and a quarter of the bytes move
        (about 12% off a Nature CNN forward and backward at batch 32 here).
        """
        self.conv.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # A dtype conversion already makes a new tensor: scale that one in place.
        x = x / self.scale if x.dtype == torch.float32 else x.float().div_(self.scale)
        return self.fc(self.conv(x))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's / flax's ``SAME`` padding of one axis: (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class NatureCNN(ConvTorso):
    """The DQN Nature torso (Mnih et al. 2015) for 84 x 84 stacks; uint8 in, features out.

    ``padding='same'`` pads every convolution as flax's default does, the torso of
    Dopamine's JAX agents (DrQ(epsilon) among them): 11 x 11 x 64 features instead of 7 x 7 x 64.
    """

    def __init__(self, in_channels: int, image_size: int = 84, features: int = 512, padding: str = "valid"):
        layers: list[nn.Module] = []
        size, channels = image_size, in_channels
        for out, kernel, stride in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            before = after = 0
            if padding == "same":
                before, after = same_padding(size, kernel, stride)
                if before != after:   # the convolution pads evenly itself (about 10% faster than a pad layer)
                    layers.append(nn.ZeroPad2d((before, after, before, after)))
            even = before if before == after else 0
            layers += [nn.Conv2d(channels, out, kernel, stride=stride, padding=even), nn.ReLU()]
            size, channels = (size + before + after - kernel) // stride + 1, out
        super().__init__(nn.Sequential(*layers, nn.Flatten()), (in_channels, image_size, image_size), features,
                         scale=255.0)


def xavier_uniform_(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases in every linear and convolution layer (flax's
    ``xavier_uniform`` kernels with its zero bias default, as Dopamine's networks use)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class GridCNN(ConvTorso):
    """A small torso for MiniGrid-sized images (a few cells a side), values are object codes."""

    def __init__(self, in_channels: int, height: int, width: int, features: int = 128):
        conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 2), nn.ReLU(),
            nn.Conv2d(32, 64, 2), nn.ReLU(), nn.Flatten())
        super().__init__(conv, (in_channels, height, width), features, scale=10.0)


class MinAtarCNN(ConvTorso):
    """The MinAtar paper's torso (Young and Tian 2019): one 3 x 3 convolution with 16
    filters over the 0/1 channels, then 128 units."""

    def __init__(self, in_channels: int, height: int, width: int, features: int = 128):
        conv = nn.Sequential(nn.Conv2d(in_channels, 16, 3, stride=1), nn.ReLU(), nn.Flatten())
        super().__init__(conv, (in_channels, height, width), features, scale=1.0)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip connection (AlphaZero's block,
    and MuZero's, appendix F)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class VectorTorso(nn.Module):
    """An MLP for flat vector observations."""

    def __init__(self, in_features: int, hidden: Sequence[int]):
        super().__init__()
        self.net = mlp([in_features, *hidden], last_activation=True)
        self.out_features = hidden[-1] if hidden else in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float().flatten(1))


class DictTorso(nn.Module):
    """Encodes each entry of a dict observation with its own torso and concatenates."""

    def __init__(self, space: gym.spaces.Dict, hidden: Sequence[int]):
        super().__init__()
        self.parts = nn.ModuleDict({key: make_torso(sub, hidden) for key, sub in space.spaces.items()})
        self.out_features = sum(p.out_features for p in self.parts.values())

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.parts[key](x[key]) for key in self.parts], dim=-1)


def make_torso(space: gym.Space, hidden: Sequence[int] = (256, 256), conv_padding: str = "valid") -> nn.Module:
    """The torso that fits ``space``: Nature CNN for Atari-sized images (``conv_padding``:
    ``valid`` or ``same``), MinAtar's CNN for binary channel grids, a small CNN for other
    grid images, an MLP for vectors, one of each per entry for dicts."""
    if isinstance(space, gym.spaces.Dict):
        return DictTorso(space, hidden)
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 3:
        c, h, w = space.shape
        if min(h, w) >= 36:
            return NatureCNN(c, h, padding=conv_padding)
        if np.all(space.high == 1) and np.all(space.low == 0):
            return MinAtarCNN(c, h, w)
        return GridCNN(c, h, w)
    if isinstance(space, gym.spaces.Discrete):
        raise TypeError("discrete observations: one-hot them in the env (no torso for Discrete spaces)")
    return VectorTorso(int(np.prod(space.shape)), hidden)


class QHead(nn.Module):
    """Action values from features; ``dueling`` splits value and advantage (Wang et al. 2016)."""

    def __init__(self, in_features: int, num_actions: int, dueling: bool = False, hidden: int = 0):
        super().__init__()
        self.dueling = dueling

        def stream(out: int) -> nn.Module:
            return mlp([in_features, hidden, out]) if hidden else nn.Linear(in_features, out)

        self.advantage = stream(num_actions)
        self.value = stream(1) if dueling else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        adv = self.advantage(features)
        if self.value is None:
            return adv
        return self.value(features) + adv - adv.mean(dim=-1, keepdim=True)


def to_tensor(obs: Any, device: torch.device) -> Any:
    """A batch of observations (array or dict of arrays) as tensors on ``device``, dtype kept."""
    if isinstance(obs, dict):
        return {key: to_tensor(value, device) for key, value in obs.items()}
    if isinstance(obs, torch.Tensor):
        return obs.to(device)
    return torch.as_tensor(np.asarray(obs), device=device)
