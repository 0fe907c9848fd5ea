"""Native crashes named: every `mlx-dm` command runs in a worker process that its parent watches.

llama.cpp and MLX are native code; a signal there (SIGILL from an instruction this CPU refuses,
SIGSEGV, an abort) kills the process before Python can say anything. So the `mlx-dm` process
starts itself again as a worker and waits. The worker records the stage it is in
(`mark_stage`) and lets `faulthandler` write the Python stack of a fatal signal to a file; when
the worker dies of a signal, the parent turns both into a `NativeCrash`: the stage, the signal by
name, the library it died in, the log and the crash file, and what to do.

MLX_DM_NO_SUPERVISE=1 runs the command in this process (a debugger, a profiler).
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import NativeCrash

WORKER_ENV = "MLX_DM_WORKER"
STAGE_ENV = "MLX_DM_STAGE_FILE"
CRASH_ENV = "MLX_DM_CRASH_FILE"
NO_SUPERVISE_ENV = "MLX_DM_NO_SUPERVISE"
SIGNAL_WORDS = {
    "SIGILL": "illegal instruction", "SIGSEGV": "segmentation fault", "SIGBUS": "bus error",
    "SIGFPE": "arithmetic error", "SIGABRT": "aborted", "SIGKILL": "killed from outside, often for lack of memory",
}
# The worker imports the very package its parent runs: `python -m` would put the current folder
# first on sys.path, where a folder named mlx_dm (a game repository's copy of a file) would win.
PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
WORKER_CODE = f"import sys; sys.path[0] = {PACKAGE_PARENT!r}; from mlx_dm.cli import main; main()"
_crash_file = None  # kept open for faulthandler, which writes to its descriptor
_stage_file: str | None = None


def wanted() -> bool:
    return os.environ.get(WORKER_ENV) != "1" and os.environ.get(NO_SUPERVISE_ENV) != "1"


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def start_worker_side() -> None:
    """In the worker: dump the stack of a fatal signal to the crash file, and end with the parent.

    The variables are taken out of the environment: an `mlx-dm` this worker starts (bench's
    trainings) is supervised on its own and must not write over this one's files."""
    global _crash_file, _stage_file
    os.environ.pop(WORKER_ENV, None)
    _stage_file = os.environ.pop(STAGE_ENV, None)
    crash = os.environ.pop(CRASH_ENV, None)
    if crash:
        _crash_file = open(crash, "w", encoding="utf-8")  # noqa: SIM115 - must outlive this function
        faulthandler.enable(_crash_file, all_threads=True)
    parent = os.getppid()

    def watch_parent() -> None:
        # A parent killed with SIGKILL cannot stop its worker; the worker notices it is orphaned.
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch_parent, name="mlx-dm-parent-watch", daemon=True).start()


def mark_stage(stage: str, step: str = "", **where: str) -> None:
    """Record where the worker is (the stage, the step, the run folder or the log file) for a crash report."""
    path = _stage_file
    if not path:
        return
    try:
        current = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        current = {}
    current.update({"stage": stage, "step": step, **{k: str(v) for k, v in where.items()}})
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(current))
    os.replace(tmp, path)


def supervise(argv: list[str]) -> tuple[int, NativeCrash | None]:
    """Run `mlx-dm argv` as a worker; its exit status, and the crash when it died of a signal."""
    with tempfile.TemporaryDirectory(prefix="mlx-dm-") as tmp:
        stage_file, crash_file = Path(tmp) / "stage.json", Path(tmp) / "crash.txt"
        env = {**os.environ, WORKER_ENV: "1", STAGE_ENV: str(stage_file), CRASH_ENV: str(crash_file)}
        child = subprocess.Popen([sys.executable, "-c", WORKER_CODE, *argv], env=env)
        previous = {sig: signal.signal(sig, _forwarder(child)) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                try:
                    code = child.wait()
                    break
                except KeyboardInterrupt:  # pragma: no cover - the handler above replaces the default
                    continue
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if code >= 0:
            return code, None
        signum = -code
        if signum in (signal.SIGINT, signal.SIGTERM):
            return 128 + signum, None
        return 128 + signum, describe_crash(signum, _read_json(stage_file), _read_text(crash_file))


def _forwarder(child: subprocess.Popen):
    def forward(signum, frame) -> None:
        # Ctrl-C in a terminal reaches the whole foreground group, the worker included: pass on
        # only what was sent to this process alone (by the bootstrap, by `kill`).
        if signum == signal.SIGINT and _terminal_group():
            return
        if child.poll() is None:
            child.send_signal(signum)

    return forward


def _terminal_group() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def native_library(stack: str) -> str:
    """Which native library the innermost Python frame of the dump was calling into."""
    lines = stack.splitlines()
    current = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), None)
    if current is not None:  # the thread the signal hit; the other threads follow after a blank line
        block = lines[current + 1:]
        lines = block[: block.index("")] if "" in block else block
    frames = [line for line in lines if line.strip().startswith("File ")]
    for line in frames:  # faulthandler lists the innermost frame first
        if "llama_cpp" in line:
            return "llama.cpp"
        if "/mlx/" in line or "mlx_lm" in line:
            return "MLX"
    return "native code"


def describe_crash(signum: int, where: dict, stack: str) -> NativeCrash:
    """The message, hint and exit code of a worker killed by `signum`; the stack is kept beside the run's log."""
    from .llama.build import rebuild_command

    name = signal.Signals(signum).name
    library = native_library(stack)
    stage = where.get("stage", "startup")
    step = f" ({where['step']})" if where.get("step") else ""
    kept = _keep_stack(stack, where)
    lines = [f"{name} ({SIGNAL_WORDS.get(name, 'a fatal signal')}) in {library} during {stage}{step}; exit code {128 + signum}"]
    if where.get("log"):
        lines.append(f"log: {where['log']}")
    if kept:
        lines.append(f"native stack: {kept}")
    resume = "then run the same command again: it resumes after the last finished stage"
    if name == "SIGILL" and library == "llama.cpp":
        hint = f"this llama.cpp build uses an instruction this CPU refuses; rebuild it for this machine:\n  {rebuild_command()}\n{resume}"
    elif name == "SIGILL" and library == "MLX":
        hint = f"MLX uses an instruction this CPU refuses; reinstall it: {sys.executable} -m pip install --force-reinstall --no-cache-dir mlx; {resume}"
    elif name == "SIGKILL":
        hint = f"the system stopped it, usually for lack of memory: close other programs or lower train.batch_size / train.max_seq_length; {resume}"
    else:
        hint = f"run `mlx-dm doctor` to check this machine's llama.cpp and MLX; if llama.cpp fails there, rebuild it:\n  {rebuild_command()}\n{resume}"
    return NativeCrash("\n".join(lines), hint, signum)


def _keep_stack(stack: str, where: dict) -> str:
    """Save the faulthandler dump in the run folder (or the project's .mlx-dm/); its path, or ''."""
    if not stack.strip():
        return ""
    folder = Path(where["run_dir"]) if where.get("run_dir") else Path(where.get("project", ".")) / ".mlx-dm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        path.write_text(stack, encoding="utf-8")
        return str(path)
    except OSError:
        return ""
