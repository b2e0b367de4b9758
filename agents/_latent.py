"""Pieces of learned latent models (MuZero, Value Prediction Network): value transforms,
categorical supports, latent scaling, representation torsos.

Value transform (Pohlen et al. 2018, used by MuZero appendix F)::

    h(x)      = sign(x) (sqrt(|x| + 1) - 1) + eps x
    h^-1(y)   = sign(y) (((sqrt(1 + 4 eps (|y| + 1 + eps)) - 1) / (2 eps))^2 - 1)

Scalars ``x`` (rewards, values) are squashed by ``h`` and represented on the integer
support ``{-S, ..., S}`` by the two neighbouring atoms ("two-hot"): with
``y = clip(h(x), -S, S)``, ``lo = floor(y)``, the atom ``lo`` gets ``1 - (y - lo)`` and
``lo + 1`` gets ``y - lo``, so the expectation over the support returns ``y`` exactly.
Networks predict logits over the ``2S + 1`` atoms; the scalar is ``h^-1(E[atom])``.

Latent states are min-max scaled to ``[0, 1]`` per sample (MuZero appendix G)::

    s_scaled = (s - min(s)) / (max(s) - min(s))

which keeps the dynamics' input on the scale of the representation's output.

Torsos: :class:`MLPRepresentation` for vectors (and small boards flattened),
:class:`ResidualTorso` for images, with MuZero's Atari down-sampling
(:class:`AtariDownsample`: stride-2 convolution, residual blocks, stride-2 convolution,
residual blocks, two stride-2 average poolings: 96x96 -> 6x6, 84x84 -> 6x6).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from agents.networks import ResidualBlock, mlp

EPSILON = 1e-3   # MuZero appendix F: eps = 0.001


# ============================================================== value transform
def h(x: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """``sign(x) (sqrt(|x| + 1) - 1) + eps x``: squashes large returns (invertible)."""
    return torch.sign(x) * (torch.sqrt(torch.abs(x) + 1.0) - 1.0) + eps * x


def h_inverse(y: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """The exact inverse of :func:`h`."""
    root = (torch.sqrt(1.0 + 4.0 * eps * (torch.abs(y) + 1.0 + eps)) - 1.0) / (2.0 * eps)
    return torch.sign(y) * (root * root - 1.0)


def scalar_to_support(x: torch.Tensor, support_size: int, transform: bool = True, step: float = 1.0) -> torch.Tensor:
    """Two-hot probabilities ``[..., 2S + 1]`` of ``h(x)`` (or ``x`` when not ``transform``) on the atoms
    ``step * {-S..S}``; values past the ends are clamped to them."""
    y = (h(x) if transform else x) / step
    y = y.clamp(-support_size, support_size)
    low = torch.floor(y)
    upper_weight = y - low
    low_index = (low + support_size).long()
    high_index = (low_index + 1).clamp(max=2 * support_size)
    probs = torch.zeros(*x.shape, 2 * support_size + 1, dtype=x.dtype, device=x.device)
    probs.scatter_add_(-1, low_index.unsqueeze(-1), (1.0 - upper_weight).unsqueeze(-1))
    probs.scatter_add_(-1, high_index.unsqueeze(-1), upper_weight.unsqueeze(-1))
    return probs


def support_to_scalar(logits: torch.Tensor, support_size: int, transform: bool = True,
                      step: float = 1.0) -> torch.Tensor:
    """``h^-1(sum_i softmax(logits)_i * a_i)`` over the atoms ``a = step * {-S..S}`` (last axis)."""
    atoms = step * torch.arange(-support_size, support_size + 1, dtype=logits.dtype, device=logits.device)
    y = (torch.softmax(logits, dim=-1) * atoms).sum(-1)
    return h_inverse(y) if transform else y


# ================================================================ latent scaling
def scale_latent(s: torch.Tensor) -> torch.Tensor:
    """Min-max scale each sample's latent state (all axes but the first) to ``[0, 1]``."""
    flat = s.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-5)).view_as(s)


# ======================================================================= torsos
class MLPRepresentation(nn.Module):
    """Flat observations -> latent vector ``[N, latent_dim]`` (min-max scaled)."""

    def __init__(self, in_features: int, hidden: Sequence[int], latent_dim: int):
        super().__init__()
        self.net = mlp([in_features, *hidden, latent_dim], norm=True)
        self.latent_shape = (latent_dim,)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return scale_latent(self.net(obs.float().flatten(1)))


class AtariDownsample(nn.Module):
    """MuZero's Atari down-sampling (appendix F), with ``channels`` in place of the paper's 128.

    conv 3x3 stride 2 (``channels // 2``), 2 residual blocks, conv 3x3 stride 2
    (``channels``), 3 residual blocks, average pool stride 2, 3 residual blocks, average
    pool stride 2. ``blocks`` scales the residual counts (paper: 2, 3, 3).
    """

    def __init__(self, in_channels: int, channels: int, blocks: Sequence[int] = (2, 3, 3)):
        super().__init__()
        half = max(1, channels // 2)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            *[ResidualBlock(half) for _ in range(blocks[0])],
            nn.Conv2d(half, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            *[ResidualBlock(channels) for _ in range(blocks[1])],
            nn.AvgPool2d(3, stride=2, padding=1),
            *[ResidualBlock(channels) for _ in range(blocks[2])],
            nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualTorso(nn.Module):
    """Images ``[N, C, H, W]`` -> latent planes ``[N, channels, h, w]`` (min-max scaled).

    Inputs are divided by ``scale`` (255 for Atari frames). ``downsample`` applies
    :class:`AtariDownsample` first (for frames of 36 pixels a side or more); otherwise a
    3x3 convolution keeps the board size (MinAtar, board games). Then ``blocks``
    residual blocks.
    """

    def __init__(self, input_shape: Sequence[int], channels: int, blocks: int, downsample: bool,
                 scale: float = 1.0):
        super().__init__()
        c = int(input_shape[0])
        if downsample:
            stem: nn.Module = AtariDownsample(c, channels)
        else:
            stem = nn.Sequential(nn.Conv2d(c, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                 nn.ReLU())
        self.stem = stem
        self.tower = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.scale = float(scale)
        # Full-size frames go through channels-last convolutions (oneDNN's fast layout on CPU):
        # a Pong gradient step ran 1.23x faster here, and Pong trained 1.17-1.19x faster
        # (docs/muzero.md). The latent leaves in the default layout (scale_latent copies it).
        self.channels_last = bool(downsample)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        with torch.no_grad():
            self.latent_shape = tuple(self.forward(torch.zeros(2, *input_shape)).shape[1:])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            obs = obs.contiguous(memory_format=torch.channels_last)   # while still uint8: fewer bytes move
        x = obs.float()
        if self.scale != 1.0:
            x = x / self.scale
        return scale_latent(self.tower(self.stem(x)))
