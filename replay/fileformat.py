"""The one on-disk format for saved buffers and offline datasets (``.arbor-replay``).

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"ARBORRPL"
    8       4     format version (uint32), currently 1
    12      4     CRC-32 of the header bytes (uint32)
    16      8     header length H in bytes (uint64)
    24      H     header: UTF-8 JSON object (see below)
    ...           zero padding to a multiple of 64
    ...           array payloads, each starting at a multiple of 64 bytes

The JSON header holds ``"meta"`` (free-form JSON: buffer kind, config, scalar
state) and ``"arrays"``: a list of ``{"name", "dtype", "shape", "offset",
"nbytes", "crc32"}`` with ``offset`` counted from the start of the file, plus
``"file_size"``, the exact size of a complete file. Arrays are C-ordered raw
bytes in numpy ``dtype.str`` notation, so a payload can be memory-mapped
directly with ``numpy.memmap``.

Reading checks magic, version, header CRC, the file size and every array's
CRC-32 before returning anything, so a truncated or corrupted file raises
:class:`ValueError` and nothing is loaded. Writing goes to a temporary file in
the same directory that is renamed over the target only when complete.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from runtime.atomic import atomic_write

MAGIC = b"ARBORRPL"
VERSION = 1
ALIGN = 64
_PREFIX = struct.Struct("<8sIIQ")
_CRC_CHUNK = 64 << 20


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's raw bytes, streamed in chunks (works on memmaps)."""
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    crc = 0
    for start in range(0, flat.size, _CRC_CHUNK):
        crc = zlib.crc32(flat[start : start + _CRC_CHUNK], crc)
    return crc & 0xFFFFFFFF


def write(path: str | os.PathLike, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> int:
    """Atomically write ``meta`` and ``arrays`` to ``path``; returns the file size in bytes."""
    path = os.fspath(path)
    entries = []
    prepared: list[np.ndarray] = []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.hasobject:
            raise TypeError(f"array {name!r} has object dtype; only plain numeric arrays can be saved")
        entries.append({"name": str(name), "dtype": array.dtype.str, "shape": list(array.shape),
                        "offset": 0, "nbytes": int(array.nbytes), "crc32": _crc32(array)})
        prepared.append(array)
    # Offsets depend on the header length, which depends on the offsets' digits:
    # iterate until stable (two rounds in practice).
    header_len = 0
    for _ in range(8):
        offset = _align(_PREFIX.size + header_len)
        for entry in entries:
            entry["offset"] = offset
            offset = _align(offset + entry["nbytes"])
        header = {"meta": dict(meta), "arrays": entries, "file_size": offset}
        header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
        if len(header_bytes) == header_len:
            break
        header_len = len(header_bytes)
    else:  # pragma: no cover - offsets always converge
        raise RuntimeError("could not lay out replay file header")
    file_size = header["file_size"]

    with atomic_write(path) as f:
        f.write(_PREFIX.pack(MAGIC, VERSION, zlib.crc32(header_bytes) & 0xFFFFFFFF, len(header_bytes)))
        f.write(header_bytes)
        for entry, array in zip(entries, prepared):
            f.write(b"\0" * (entry["offset"] - f.tell()))
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
        f.write(b"\0" * (file_size - f.tell()))
    return file_size


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate the header (magic, version, header CRC, file size)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"replay file {path!r} does not exist")
    actual_size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise ValueError(f"{path!r} is not an Arbor replay file (too short: {actual_size} bytes)")
        magic, version, header_crc, header_len = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise ValueError(f"{path!r} is not an Arbor replay file (bad magic {magic!r})")
        if version != VERSION:
            raise ValueError(f"{path!r} has replay format version {version}; this code reads version {VERSION}")
        if header_len > actual_size:
            raise ValueError(f"{path!r} is truncated (header claims {header_len} bytes, file has {actual_size})")
        header_bytes = f.read(header_len)
    if len(header_bytes) != header_len or (zlib.crc32(header_bytes) & 0xFFFFFFFF) != header_crc:
        raise ValueError(f"{path!r} is corrupt or truncated (header checksum mismatch)")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r} has an unreadable header: {exc}") from None
    if header.get("file_size") != actual_size:
        raise ValueError(f"{path!r} is truncated or padded: expected {header.get('file_size')} bytes, found {actual_size}")
    return header


def read(path: str | os.PathLike, mmap_mode: str | None = None, into: Mapping[str, np.ndarray] | None = None,
         header: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a file; returns ``(meta, arrays)``.

    With ``mmap_mode`` (``"r"`` or ``"c"``) arrays are memory-mapped views of the
    file instead of copies in RAM; the checksums are still verified first.
    Arrays named in ``into`` with the right shape and dtype are read straight
    into those (preallocated) arrays, avoiding a second copy.
    """
    path = os.fspath(path)
    header = read_header(path) if header is None else header
    into = into or {}
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for entry in header["arrays"]:
            dtype = np.dtype(entry["dtype"])
            shape = tuple(entry["shape"])
            if dtype.itemsize * int(np.prod(shape, dtype=np.int64)) != entry["nbytes"]:
                raise ValueError(f"{path!r}: array {entry['name']!r} has inconsistent size in the header")
            if mmap_mode is not None:
                array = np.memmap(path, dtype=dtype, mode=mmap_mode, offset=entry["offset"], shape=shape) \
                    if entry["nbytes"] else np.empty(shape, dtype)
            else:
                target = into.get(entry["name"])
                if target is not None and target.shape == shape and target.dtype == dtype and \
                        target.flags.c_contiguous and target.flags.writeable:
                    array = target
                else:
                    array = np.empty(shape, dtype=dtype)
                f.seek(entry["offset"])
                view = memoryview(array.reshape(-1).view(np.uint8))
                if f.readinto(view) != entry["nbytes"]:
                    raise ValueError(f"{path!r} is truncated in array {entry['name']!r}")
            if _crc32(array) != entry["crc32"]:
                raise ValueError(f"{path!r} is corrupt: checksum mismatch in array {entry['name']!r}")
            arrays[entry["name"]] = array
    return header["meta"], arrays
