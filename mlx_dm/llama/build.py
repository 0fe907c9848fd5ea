"""How llama-cpp-python is built on this machine, for hints and `mlx-dm doctor`.

The table is `build.json` beside this file; scripts/train-model.js installs from the same table
and records what it built in the environment (`mlx-dm-llama-build.json`), which `installed_build`
reads back.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import sys
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("build.json")
INSTALLED_RECORD = "mlx-dm-llama-build.json"  # written into the environment by the bootstrap
ALWAYS_OFF_X86 = ("GGML_AVX512", "GGML_AVX_VNNI", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


@lru_cache(maxsize=1)
def table() -> dict:
    return json.loads(TABLE.read_text())


def platform_key() -> str:
    """The bootstrap's key: node's process.platform-process.arch."""
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    return f"{sys.platform}-{arch}"


def cpu_flags(cpuinfo: str) -> set[str]:
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cmake_args(key: str | None = None, cpuinfo: str | None = None) -> list[str]:
    """The CMake flags the bootstrap uses here: portable within a kind of machine, never AMX or AVX-512."""
    key = key or platform_key()
    spec = table()
    args = list(spec["cmake_args"].get(key, spec["cmake_args"]["default"]))
    if key == "linux-x64":
        if cpuinfo is None:
            proc = Path("/proc/cpuinfo")
            cpuinfo = proc.read_text() if proc.exists() else ""
        present = cpu_flags(cpuinfo)
        for option, feature in spec["x86_features"].items():
            if option != "comment":
                args.append(f"-D{option}={'ON' if feature in present else 'OFF'}")
        args += [f"-D{option}=OFF" for option in ALWAYS_OFF_X86]
    return args


def stamp_key(args: list[str] | None = None) -> str:
    """The bootstrap's digest of the llama.cpp build (part of its install stamp and wheel cache key)."""
    spec = table()
    blob = json.dumps([spec["version"], spec["sdist"]["sha256"], cmake_args() if args is None else args],
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def installed_build() -> dict | None:
    """What the bootstrap built into this environment, or None (installed some other way)."""
    record = Path(sys.prefix) / INSTALLED_RECORD
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def rebuild_command() -> str:
    """The one command that rebuilds llama-cpp-python for this machine, in this environment."""
    spec = table()
    pip = shlex.quote(str(Path(sys.executable)))
    return (f"CMAKE_ARGS={shlex.quote(' '.join(cmake_args()))} {pip} -m pip install --no-deps --force-reinstall "
            f"--no-cache-dir --no-binary {spec['package']} {spec['package']}=={spec['version']}")
