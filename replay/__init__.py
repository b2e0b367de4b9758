"""Arbor's one replay system: transition and sequence buffers over shared vectorised storage.

See ``docs/replay.md`` for the API, the storage model and the on-disk format.
"""

from .core import ReplayBase
from .minari_io import episodes, from_minari, to_minari
from .sequence import SequenceBatch, SequenceReplay, nstep_value_targets
from .sumtree import SumTree
from .transition import TransitionBatch, TransitionReplay

__all__ = [
    "ReplayBase", "SequenceBatch", "SequenceReplay", "SumTree", "TransitionBatch", "TransitionReplay",
    "episodes", "from_minari", "nstep_value_targets", "to_minari",
]
