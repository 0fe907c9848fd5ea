"""Run folders, logging, metrics.jsonl and atomic file writes."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

LOGGER_NAME = "mlx_dm"
log = logging.getLogger(LOGGER_NAME)


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
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what any new file would
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: Path, data: Any) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@dataclass
class Run:
    path: Path
    name: str

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log_metrics(self, **values: Any) -> None:
        values.setdefault("time", time.time())
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(values, default=float) + "\n")

    def save_config(self, config_json: str) -> None:
        atomic_write_text(self.path / "config.json", config_json + "\n")


def new_run(runs_dir: Path, name: str) -> Run:
    """Create `runs/<timestamp>-<name>/` with a debug-level log file."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(runs_dir) / f"{stamp}-{name}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(runs_dir) / f"{stamp}-{name}-{suffix}"
    path.mkdir(parents=True)
    attach_log_file(path / "run.log")
    log.debug("run folder %s", path)
    return Run(path=path, name=name)


def attach_log_file(log_file: Path) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
