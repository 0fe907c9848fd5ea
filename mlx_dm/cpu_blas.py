"""Give MLX's CPU backend an optimised BLAS on Linux, and say so loudly when it cannot.

The `mlx[cpu]` wheels for Linux link the reference (netlib) BLAS: about 3 GFLOP/s for a float32
matrix product on this project's CI machine, against about 150 GFLOP/s with OpenBLAS. Loading
OpenBLAS's `libblas.so.3` with RTLD_GLOBAL *before* `mlx.core` is imported makes the dynamic
linker resolve MLX's `cblas_*` calls to it. Nothing changes on macOS (Metal / Accelerate).

Which libraries, and which system package gives them, is the table `cpu_blas.json`, shared with
the bootstrap (scripts/train-model.js), which installs the package on a fresh Linux machine.

Set MLX_DM_CPU_BLAS=0 to keep the reference BLAS; MLX_DM_CPU_BLAS=/path/libblas.so.3 to choose one.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import sys
from pathlib import Path

TABLE = json.loads((Path(__file__).with_name("cpu_blas.json")).read_text(encoding="utf-8"))
CANDIDATES: tuple[str, ...] = tuple(TABLE["libraries"])

loaded: str | None = None
status: str = "not tried"


def install_command(which=None) -> str:
    """The one command that installs OpenBLAS here: the first package manager of the table on PATH."""
    which = which or shutil.which
    for installer in TABLE["installers"]:
        if which(installer["manager"]):
            return f"sudo {installer['manager']} install {installer['package']}"
    names = " or ".join(f"{i['package']} ({i['manager']})" for i in TABLE["installers"])
    return f"install OpenBLAS with your package manager: {names}"


def use_fast_cpu_blas() -> str | None:
    """Load OpenBLAS globally if possible; returns its path. Must run before `import mlx.core`."""
    global loaded, status
    if loaded or platform.system() != "Linux":
        status = "not needed (not Linux)" if platform.system() != "Linux" else status
        return loaded
    choice = os.environ.get("MLX_DM_CPU_BLAS", "")
    if choice == "0":
        status = "disabled by MLX_DM_CPU_BLAS=0"
        return None
    if "mlx.core" in sys.modules:
        status = "too late: mlx.core was imported first"
        return None
    for candidate in ([choice] if choice else list(CANDIDATES)):
        if Path(candidate).exists():
            try:
                ctypes.CDLL(candidate, mode=os.RTLD_GLOBAL)
            except OSError as exc:
                status = f"could not load {candidate}: {exc}"
                continue
            loaded, status = candidate, f"OpenBLAS ({candidate})"
            return loaded
    status = f"reference BLAS (slow); for ~40x faster CPU matrix products: {install_command()}"
    return None


def slow_blas_warning(device: str) -> str | None:
    """The line a training, scoring or benchmark command prints first when MLX computes on a CPU
    with the reference BLAS (None when it does not): what it costs and the command that fixes it.

    `device` is MLX's default device type ("cpu" or "gpu"): on a GPU the BLAS is not used."""
    if platform.system() != "Linux" or loaded or device != "cpu" or os.environ.get("MLX_DM_CPU_BLAS") == "0":
        return None
    return (f"MLX is computing with the reference BLAS (no OpenBLAS found), {TABLE['slowdown']}; "
            f"fix: {install_command()}")


def warn_if_slow(write=None) -> str | None:
    """Print slow_blas_warning for MLX's default device to stderr (or through `write`); returns it.

    Called at the start of every command that trains, scores or benchmarks (cli/common.py, the
    scripts of benchmarks/), so a fresh machine without OpenBLAS is told before a slow run, not after."""
    import mlx.core as mx

    warning = slow_blas_warning("cpu" if mx.default_device() == mx.cpu else "gpu")
    if warning:
        (write or (lambda text: print(text, file=sys.stderr, flush=True)))(f"note: {warning}")
    return warning
