"""DrQ: data-regularised Q-learning from pixels (Kostrikov, Yarats and Fergus 2020), and DrQ(epsilon).

Image augmentation regularises the value function: a state seen through a small
random shift must keep its value. With ``aug`` the random shift of
``agents/_augment.py`` (pad by ``image_pad`` pixels with edge replication, random
crop back to the original size; optionally intensity jitter), each update draws
``K`` augmentations of every next observation and ``M`` of every current one,
independently of each other and per sample:

    y = R_t^(n) + gamma^n * (1/K) sum_{k=1..K} Q_target(aug_k(s'), argmax_a Q(aug_k(s'), a))
    L = (1/M) sum_{m=1..M} huber(Q(aug_m(s), a) - y)                 (q_average: loss)
    L = huber((1/M) sum_m Q(aug_m(s), a) - y)                         (q_average: q)

``K = M = 1`` with augmentation is "augmentation only"; augmentation ``none``
with ``K = M = 1`` is exactly the DQN update of ``agents/dqn.py``, whose code
this agent reuses (double Q, dueling head, n-step returns, prioritized replay).

DrQ(epsilon) (Agarwal et al. 2021) is DrQ on Atari 100k with the standard
epsilon-greedy settings: epsilon 1 during the first ``learning_starts`` steps, then
linearly down to ``eps_end`` = 0.01 over ``eps_decay_steps`` = 5000 steps,
evaluation epsilon 0.001; ``conf/tuned/drq_atari.yaml`` holds every value of
Dopamine's ``DrQ_eps.gin`` with its source.
"""
from __future__ import annotations

import dataclasses

from agents._augment import Augmentation
from agents.base import register
from agents.dqn import (
    DQN,
    DQNConfig,
    augmented_copies,
    bootstrap_values,
    chosen_q_values,
    q_learning_loss,
)
from runtime.errors import UserError

__all__ = ["DrQ", "DrQConfig", "augmented_copies", "bootstrap_values", "chosen_q_values", "q_learning_loss"]


@dataclasses.dataclass
class DrQConfig(DQNConfig):
    """DQN's hyperparameters plus the augmentation and its K / M averaging."""

    augmentation: str = "shift_intensity"   # none | shift | shift_intensity
    image_pad: int = 4                      # shift range in pixels (DrQ: 4 for 84 x 84)
    intensity_scale: float = 0.05           # Dopamine's Atari 100k intensity jitter
    target_augmentations: int = 1           # K: augmentations of s' averaged in the target
    q_augmentations: int = 1                # M: augmentations of s in the loss
    q_average: str = "loss"                 # loss (DrQ's Algorithm 1) | q (average the M estimates)

    def validate(self) -> None:
        super().validate()
        self.check_choices({"augmentation": Augmentation.KINDS, "q_average": ("loss", "q")})
        self.check_ranges({"image_pad": self.image_pad >= 0, "intensity_scale": self.intensity_scale >= 0,
                  "target_augmentations": self.target_augmentations >= 1,
                  "q_augmentations": self.q_augmentations >= 1})


@register("drq")
class DrQ(DQN):
    """DQN whose sampled observations are augmented, with K / M averaging (see the module docstring)."""

    Config = DrQConfig

    def __init__(self, cfg: DrQConfig, spec, device, env=None, total_steps: int = 0, seed: int = 0):
        if cfg.augmentation != "none" and not spec.is_image:
            raise UserError(f"augmentation {cfg.augmentation!r} needs image observations; {spec.name} has "
                            f"{spec.observation_space}", key="agent.augmentation")
        super().__init__(cfg, spec, device, env, total_steps, seed)

    def make_augmentation(self) -> Augmentation:
        # A stream of its own (not the global torch RNG), saved in checkpoints.
        return Augmentation(self.cfg.augmentation, self.cfg.image_pad, self.cfg.intensity_scale,
                            seed=self.seed * 1_000_003 + 17)

