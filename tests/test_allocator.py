"""runtime/allocator.py: freed blocks stay in the process, so reusing them costs no page faults."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A fresh interpreter mallocs a 16 MiB block, writes it, frees it, and mallocs and writes one
# again: the page faults of the second write say whether the freed pages were kept.
PROBE = """
import ctypes, ctypes.util, json, resource, sys
from runtime.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 16 << 20
block = libc.malloc(size); ctypes.memset(block, 1, size); libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc(size); ctypes.memset(block, 2, size)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(block)
print(json.dumps({"applied": applied, "faults": faults, "pages": size // resource.getpagesize()}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_keep_freed_memory_reuses_freed_pages_without_faults():
    default, kept = probe("default"), probe("keep")
    if not kept["applied"]:
        pytest.skip("not glibc: the setting is left alone")
    # glibc's default maps a 16 MiB block afresh and unmaps it when freed: every page faults again.
    assert default["faults"] > 0.9 * default["pages"], default
    # Kept: the second block reuses the first one's pages.
    assert kept["faults"] < 0.05 * kept["pages"], kept


def test_keep_freed_memory_is_a_no_op_off_linux(monkeypatch):
    from runtime import allocator

    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize("setting, calls", [("true", 1), ("false", 0)])
def test_trainer_applies_the_setting_from_the_config(monkeypatch, tmp_path, setting, calls):
    from conftest import TINY, compose

    from runtime import allocator, trainer

    seen = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append(True) or True)
    trainer.Trainer(compose(*TINY, f"keep_freed_memory={setting}", f"runs_root={tmp_path}"),
                    run_dir=tmp_path / "run").build()
    assert len(seen) == calls
