"""What the pipeline tells whoever runs it. The base class says nothing; the CLI's reporter draws
progress bars and tables, and marks the stage for the crash report (supervise.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Reporter:
    def stage(self, name: str, text: str = "", run_dir: Path | None = None) -> None:
        """A stage starts (data, train, export, validation, promotion), or moves to its next step."""

    def note(self, text: str) -> None:
        """A line worth reading: a decision taken, a file written."""

    def warn(self, text: str) -> None:
        """Something the user should know but that does not stop the run."""

    def progress(self, stage: str, label: str, done: int, total: int | None, status: str = "") -> None:
        """`done` of `total` in a long step (training steps, validation cases)."""

    def result(self, kind: str, value: Any) -> None:
        """A stage's outcome to show: dataset, new_tool, data_changes, training, export, validation, promotion."""

    def finished(self, stage: str) -> None:
        """A long step ended (its progress display can close)."""
