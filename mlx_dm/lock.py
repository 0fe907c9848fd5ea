"""One writer per project: `run`, `train`, `export`, `validate`, `data build` and `models promote/rollback`
hold an exclusive lock on `.mlx-dm/lock` while they write.

The lock is `flock` on an open file, so the kernel drops it when its process ends, however it
ends (a kill -9 or a native crash leaves nothing stuck). The file itself only says who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ProjectBusy

LOCK_FILE = Path(".mlx-dm") / "lock"


def holder(project_dir: Path) -> dict:
    """Who wrote the lock file last (pid, command, since); {} when nobody did."""
    try:
        return json.loads((Path(project_dir) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def project_lock(project_dir: Path, command: str) -> Iterator[None]:
    """Hold the project's writer lock, or stop at once with who holds it.

    Stopping rather than waiting: the other writer may be hours into a training."""
    path = Path(project_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = holder(project_dir)
            since = time.strftime("%H:%M:%S", time.localtime(other["since"])) if "since" in other else "?"
            raise ProjectBusy(f"another mlx-dm is writing {Path(project_dir).resolve()}: `{other.get('command', '?')}` "
                              f"(pid {other.get('pid', '?')}, since {since})",
                              "wait for it to finish, or stop it (Ctrl-C in its terminal); the lock ends with its process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command, "since": time.time()}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
