"""Files at the bottom of every stage: atomic writes, digests, safetensors headers and rows.

A write here lands whole or not at all: a kill at any moment leaves the old file (or folder) or
the new one, never half of either, and a new file gets the permissions any file the user makes gets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

# safetensors dtypes numpy can map as they are stored (bfloat16 as its raw 16 bits).
NUMPY_STORAGE = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename.

    On any failure (or Ctrl-C) the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _kill_point(target)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what any new file would
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


KILL_WRITING = "MLX_DM_KILL_WRITING"


def _kill_point(target: Path) -> None:
    """Fault injection for the crash tests: with MLX_DM_KILL_WRITING set to this file's name, the
    process SIGKILLs itself once the new content is written beside the target but not yet in place,
    so no `finally` runs, as with an OOM kill or a power cut (tests/test_pipeline.py)."""
    if os.environ.get(KILL_WRITING) == target.name:
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: Path, data: Any) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# What the writers above leave when a kill skips their `finally`: `.<name>.<8 random>.partial` files
# (atomic_path's mkstemp) and `.<name>.tmp-<pid>` / `.<name>.old-<pid>` folders (write_dir_atomically).
STALE_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.partial$")
STALE_DIR = re.compile(r"^\..+\.(tmp|old)-\d+$")


def sweep_stale(folders: list[Path]) -> list[Path]:
    """Remove, under `folders`, the temporary files and folders an interrupted writer left; returns
    them. Only for folders no other process writes (the caller holds the project's writer lock):
    a kill -9, an OOM kill or a power cut never runs the cleanup of atomic_path and
    write_dir_atomically. Names outside those two patterns, the user's files, are never touched."""
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).rglob(".*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() or not path.exists():
                continue
            if path.is_file() and STALE_FILE.match(path.name):
                path.unlink()
                removed.append(path)
            elif path.is_dir() and STALE_DIR.match(path.name):
                shutil.rmtree(path)
                removed.append(path)
    return removed


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then rename the folder onto ``target`` (replacing an older one)."""
    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_headers(checkpoint: Path) -> dict[str, dict]:
    """Every tensor's dtype, shape and byte range in a checkpoint's safetensors shards, read from the
    file headers (no weights loaded). Each entry also names its shard and where its data starts."""
    tensors = {}
    for shard in sorted(Path(checkpoint).glob("*.safetensors")):
        with open(shard, "rb") as handle:
            header_length = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_length))
        tensors.update((name, {**info, "shard": shard, "data_start": 8 + header_length})
                       for name, info in header.items() if name != "__metadata__")
    return tensors


def read_rows(info: dict, rows) -> np.ndarray:
    """Rows of one stored 2-D tensor (an entry of safetensors_headers), through a memory map: only
    the pages of those rows are read, so a multi-gigabyte table is never loaded whole. bfloat16
    comes back as uint16 holding the raw bits."""
    start = info["data_start"] + info["data_offsets"][0]
    table = np.memmap(info["shard"], dtype=NUMPY_STORAGE[info["dtype"]], mode="r", offset=start,
                      shape=tuple(info["shape"]))
    return np.array(table[np.asarray(rows)])
