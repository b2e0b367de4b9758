"""Checkpoints: safe round trip, atomic writes, refusal of files that would run code."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from runtime import checkpoint as ckpt
from runtime.errors import UserError


def payload():
    return {"config": {"a": 1}, "agent": {"w": torch.ones(3), "arr": np.arange(5, dtype=np.int16),
                                          "rng": np.random.default_rng(1).bit_generator.state},
            "progress": {"steps": 7}}


def test_round_trip_keeps_numpy_arrays(tmp_path):
    path = ckpt.save(tmp_path / "c.pt", payload())
    data = ckpt.load(path)
    assert isinstance(data["agent"]["arr"], np.ndarray) and data["agent"]["arr"].dtype == np.int16
    np.testing.assert_array_equal(data["agent"]["arr"], np.arange(5))
    gen = np.random.default_rng(0)
    gen.bit_generator.state = data["agent"]["rng"]
    assert gen.integers(1 << 30) == np.random.default_rng(1).integers(1 << 30)


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt.save(tmp_path / "c.pt", payload())
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save(path, payload())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]   # no temporary left behind


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "version": 1, "config": {}, "agent": Exploit(), "progress": {}}, path)
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        ckpt.load(path)


def test_plain_pickle_and_foreign_files_are_refused(tmp_path):
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError):
        ckpt.load(tmp_path / "p.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a checkpoint of this suite"):
        ckpt.load(tmp_path / "other.pt")


@pytest.mark.parametrize("seed", [0, 17, 54, 62, 941])
def test_random_garbage_is_refused_as_corrupt(tmp_path, seed):
    """4 KB of random bytes: the unpickler fails in many ways (seed 0: UnpicklingError,
    17: IndexError, 54: UnicodeDecodeError, 62: KeyError, 941: RuntimeError); every one
    must come out as the clear corrupt-checkpoint error."""
    path = tmp_path / "garbage.pt"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match="corrupt"):
        ckpt.load(path)


def test_run_directory_resolves_to_latest(tmp_path):
    ckpt.save(tmp_path / "checkpoints" / "latest.pt", payload())
    assert ckpt.load(tmp_path)["progress"]["steps"] == 7
    with pytest.raises(UserError, match="no checkpoint"):
        ckpt.load(tmp_path / "checkpoints" / "..")if False else ckpt.load(tmp_path.parent)
