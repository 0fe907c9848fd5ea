"""Run folders, their log files and metrics.jsonl."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import atomic_write_text

LOGGER_NAME = "mlx_dm"
log = logging.getLogger(LOGGER_NAME)


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
