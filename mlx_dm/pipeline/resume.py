"""Where a rerun of `mlx-dm run` picks up after a failure or a kill past training.

A finished training run of the same configuration, base and data (the trainer's run key) is not
trained again while the version it exported has not reached the app: the run goes on at the
first stage it has not finished. The model registry says how far it got.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import version_of_run
from ..train.checkpoint import read_run_state

# The next stage for each registry status of the run's version (None: nothing stored yet).
# "scored": validation passed, the playtest is left; "validated": both passed, the promotion is left.
NEXT_STAGE = {None: "export", "candidate": "validation", "rejected": "validation", "scored": "playtest",
              "validated": "promotion"}
DONE = ("promoted", "rolled back")  # the run's model reached the app: a rerun trains anew


@dataclass(frozen=True)
class Resume:
    run_dir: Path
    stage: str  # "export", "validation", "playtest" or "promotion"
    version: dict | None  # the registry entry of the run's version, once stored

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapters"


def finished_training(runs_dir: Path, key: str, project_dir: Path) -> Resume | None:
    """The newest finished run with this key whose model has not reached the app, and its next stage."""
    if not Path(runs_dir).is_dir():
        return None
    for run_dir in sorted(Path(runs_dir).iterdir(), reverse=True):
        state = read_run_state(run_dir)
        if not state or state.get("key") != key:
            continue
        if state.get("status") != "finished" or not (run_dir / "adapters" / "adapters.safetensors").exists():
            return None  # the newest run of this key is unfinished: the trainer resumes that one
        entry = version_of_run(project_dir, run_dir.name)
        status = entry.get("status") if entry else None
        if status in DONE or status not in NEXT_STAGE:
            return None
        return Resume(run_dir, NEXT_STAGE[status], entry)
    return None
