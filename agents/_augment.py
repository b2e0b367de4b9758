"""Image augmentations for value learning from pixels (DrQ; Kostrikov, Yarats and Fergus 2020).

Random shift: pad the image by ``p`` pixels on every side by replicating its edge
pixels, then crop back to the original ``H x W`` at a random offset
``(dy, dx)`` with ``dy, dx ~ U{0, ..., 2p}``. Equivalently, every output pixel reads

    out[b, c, i, j] = x[b, c, clamp(i + dy_b - p, 0, H - 1), clamp(j + dx_b - p, 0, W - 1)]

so the image moves by at most ``p`` pixels in each direction and the border
repeats. Each sample ``b`` of the batch draws its own ``(dy_b, dx_b)``; all the
channels of a sample (the frames of a stack) move together. The shift works on
uint8 as well as float tensors and keeps the dtype, with no per-sample Python
loop: uint8 batches on the CPU (replayed Atari stacks) go through the compiled
kernels of csrc/augment.cpp (a memcpy per image row), everything else through
one ``torch.gather`` over the whole batch; both give the same values. With
``channels_last`` the kernel writes the batch channels-last, the layout the
suite's CPU convolutions take, instead of leaving that transposing copy to
them. ``python benchmarks/drq.py --sections augment`` times each path (docs/drq.md
quotes the figures).

Intensity jitter (as in Dopamine's Atari 100k agents): multiply each sample by
``1 + s * clip(N(0, 1), -2, 2)``; the result is float.

Every random draw comes from the ``torch.Generator`` passed in, so the
augmentation of a run is reproducible and its state goes into checkpoints.
"""
from __future__ import annotations

import torch

try:  # the compiled uint8 shift (csrc/augment.cpp); the torch gather below gives the same values
    from planners._core import shift_images as _shift_kernel  # type: ignore[attr-defined]
    from planners._core import shift_images_nhwc as _shift_kernel_nhwc  # type: ignore[attr-defined]
except (ImportError, AttributeError):  # pragma: no cover - the package build always compiles it
    _shift_kernel = _shift_kernel_nhwc = None


def random_shift_offsets(batch: int, pad: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """``(batch, 2)`` integer shifts ``(dy, dx)`` in ``[-pad, pad]``, one per sample."""
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    return (offsets - pad).to(device)


def shift(images: torch.Tensor, offsets: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Move every image of ``images`` (``B x C x H x W``) by its own ``offsets[b] = (dy, dx)``.

    Pixels that come from outside the image repeat the nearest edge pixel, which
    is exactly a crop of the edge-replicated padded image. ``channels_last``: the
    result is laid out channels-last (the same values), as channels-last
    convolutions take it.
    """
    if images.dim() != 4:
        raise ValueError(f"shift expects a B x C x H x W batch, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    device = images.device
    if (_shift_kernel is not None and images.dtype == torch.uint8 and device.type == "cpu"
            and b > 0 and images[0].is_contiguous() and images.stride(0) >= c * h * w and not images.requires_grad):
        offsets = offsets.to(dtype=torch.long).contiguous().numpy()
        if channels_last:
            out = torch.empty_like(images, memory_format=torch.channels_last)
            _shift_kernel_nhwc(images.numpy(), offsets, out.permute(0, 2, 3, 1).numpy())
        else:
            out = torch.empty_like(images, memory_format=torch.contiguous_format)
            _shift_kernel(images.numpy(), offsets, out.numpy())
        return out
    offsets = offsets.to(device=device, dtype=torch.long)
    rows = (torch.arange(h, device=device).view(1, h) + offsets[:, :1]).clamp_(0, h - 1)   # B x H
    cols = (torch.arange(w, device=device).view(1, w) + offsets[:, 1:]).clamp_(0, w - 1)   # B x W
    # One gather over the flattened image with a per-sample pixel map shared by the channels
    # (a stride-0 expand): about 4x faster than a row gather followed by a column gather.
    source = (rows.view(b, h, 1) * w + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, source).view(b, c, h, w)


def random_shift(images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None,
                 channels_last: bool = False) -> torch.Tensor:
    """DrQ's random shift: each sample moved by its own uniform shift in ``[-pad, pad]^2``."""
    if pad <= 0:
        return images
    return shift(images, random_shift_offsets(images.shape[0], pad, generator, images.device), channels_last)


def intensity(images: torch.Tensor, scale: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multiply each sample by ``1 + scale * clip(N(0, 1), -2, 2)`` (float result)."""
    noise = torch.randn(images.shape[0], generator=generator).clamp_(-2.0, 2.0).to(images.device)
    factor = (1.0 + scale * noise).view(-1, *([1] * (images.dim() - 1)))
    if images.dtype == torch.float32:
        return images * factor
    return images.float().mul_(factor)   # the conversion already made a new tensor: scale it in place


class Augmentation:
    """The augmentation an agent applies to every sampled batch of image observations.

    ``kind``: ``none`` (identity), ``shift`` (random shift by up to ``pad`` pixels)
    or ``shift_intensity`` (shift, then intensity jitter of scale ``intensity_scale``).
    Dict observations are augmented entry by entry for their image entries (3-D
    per sample); vectors pass through unchanged.
    """

    KINDS = ("none", "shift", "shift_intensity")

    def __init__(self, kind: str = "shift", pad: int = 4, intensity_scale: float = 0.05, seed: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown augmentation {kind!r}; choose from {self.KINDS}")
        self.kind = kind
        self.pad = int(pad)
        self.intensity_scale = float(intensity_scale)
        self.generator = torch.Generator()
        self.generator.manual_seed(int(seed))
        self.channels_last = False   # lay shifted batches out channels-last (set by agents whose convolutions are)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def __call__(self, obs):
        if not self.active:
            return obs
        if isinstance(obs, dict):
            return {key: self(value) for key, value in obs.items()}
        if not isinstance(obs, torch.Tensor) or obs.dim() != 4:
            return obs
        out = random_shift(obs, self.pad, self.generator, self.channels_last)
        if self.kind == "shift_intensity":
            out = intensity(out, self.intensity_scale, self.generator)
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
