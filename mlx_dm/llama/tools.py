"""llama.cpp's own `llama-imatrix` and `llama-quantize`, built once per machine from the pinned sdist.

The Python library cannot do what these two do: `llama_model_quantize` takes the importance matrix
as a pointer to a C++ map, which ctypes cannot make, and the matrix itself is collected by a
scheduler callback inside llama-imatrix. So the programs are built from the same sources and with
the same CMake flags as the library (llama/build.json: portable, never AVX-512 or AMX), statically
linked, into the user's cache: `<cache>/tools/llama.cpp-<version>-<build key>/`. A build that fails
or is cut short leaves nothing behind; one build runs at a time (a file lock), so two projects
starting together build once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import EnvironmentProblem
from .build import cmake_args, stamp_key, table
from .source import SAFE_EXTRACT, cache_dir, sdist_path

TOOLS = ("llama-imatrix", "llama-quantize")
# What the two programs need of llama.cpp, nothing else: no server, no network, no tests.
STATIC_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF")


def tools_dir() -> Path:
    return cache_dir() / "tools" / f"llama.cpp-{table()['version']}-{stamp_key()[:16]}"


def llama_tool(name: str, say: Callable[[str], None] = print) -> Path:
    """The path of one of TOOLS, building them first when this machine has none yet."""
    if name not in TOOLS:
        raise ValueError(f"{name} is not one of {TOOLS}")
    target = tools_dir()
    if not (target / name).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / ".build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
            if not (target / name).is_file():
                build_tools(target, say)
    return target / name


def build_programs() -> tuple[str, str | None]:
    """cmake and ninja: from PATH, else from the `cmake` and `ninja` wheels mlx-dm depends on."""
    bin_dir = Path(sys.executable).parent
    cmake = shutil.which("cmake") or shutil.which("cmake", path=str(bin_dir))
    ninja = shutil.which("ninja") or shutil.which("ninja", path=str(bin_dir))
    if cmake is None:
        raise EnvironmentProblem("cmake is needed to build llama.cpp's quantisation tools and was not found",
                                 f"{Path(sys.executable)} -m pip install cmake ninja")
    return cmake, ninja


def build_tools(target: Path, say: Callable[[str], None]) -> None:
    """Configure and build TOOLS into `target`, atomically: built in a temporary folder beside it,
    which is renamed into place once both programs are there."""
    cmake, ninja = build_programs()
    spec = table()
    prefix = f"{spec['sdist']['file'].removesuffix('.tar.gz')}/vendor/llama.cpp/"
    log_file = target.with_name(f"{target.name}.build.log")
    say(f"building llama.cpp's {' and '.join(TOOLS)} for this machine (once; a few minutes; log {log_file})")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llama-tools-", dir=target.parent) as tmp:
        source, build = Path(tmp) / "src", Path(tmp) / "build"
        with tarfile.open(sdist_path()) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
            for member in members:
                member.name = member.name.removeprefix(prefix) or "."
            archive.extractall(source, members=members, **SAFE_EXTRACT)
        configure = [cmake, "-S", str(source), "-B", str(build), *STATIC_ARGS, *cmake_args()]
        if ninja:
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        compile_ = [cmake, "--build", str(build), "--config", "Release", "-j", str(os.cpu_count() or 2),
                    "--target", *TOOLS]
        with open(log_file, "w") as log:
            for command in (configure, compile_):
                log.write("$ " + " ".join(command) + "\n")
                log.flush()
                if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                    tail = "\n".join(log_file.read_text().strip().splitlines()[-6:])
                    raise EnvironmentProblem(f"building llama.cpp's {' and '.join(TOOLS)} failed:\n{tail}",
                                             f"the whole log is {log_file}; a C++ compiler is needed "
                                             "(macOS: xcode-select --install; Linux: apt install g++)")
        partial = Path(tmp) / "bin"
        partial.mkdir()
        for name in TOOLS:
            built = next((p for p in build.rglob(name) if p.is_file() and os.access(p, os.X_OK)), None)
            if built is None:
                raise EnvironmentProblem(f"the llama.cpp build finished without {name}", f"see {log_file}")
            shutil.copy2(built, partial / name)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    say(f"built {' and '.join(TOOLS)} in {time.perf_counter() - start:.0f}s")


def run_tool(name: str, args: list[str], log_file: Path, say: Callable[[str], None] = print) -> tuple[int, str]:
    """Run one of TOOLS with its output kept in `log_file`: the exit code and the output's last lines."""
    program = llama_tool(name, say)
    with open(log_file, "w") as log:
        log.write("$ " + " ".join([str(program), *args]) + "\n")
        log.flush()
        code = subprocess.run([str(program), *args], stdout=log, stderr=subprocess.STDOUT).returncode
    return code, "\n".join(Path(log_file).read_text(errors="replace").strip().splitlines()[-6:])
