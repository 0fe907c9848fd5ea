"""OpenBLAS on Linux: the bootstrap installs it where it may (cpu_blas.json), and every command that
computes says so when MLX is left with the reference BLAS."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

from mlx_dm import cpu_blas

from .conftest import ROOT
from .test_bootstrap import fake_venv, stamp_for


def test_the_warning_names_the_cost_and_the_fix(monkeypatch):
    monkeypatch.setattr(cpu_blas, "loaded", None)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.delenv("MLX_DM_CPU_BLAS", raising=False)
    monkeypatch.setattr(cpu_blas.shutil, "which", lambda name: "/usr/bin/dnf" if name == "dnf" else None)
    warning = cpu_blas.slow_blas_warning("cpu")
    assert "reference BLAS" in warning and "2x slower" in warning and warning.endswith("fix: sudo dnf install openblas")
    assert cpu_blas.slow_blas_warning("gpu") is None  # a GPU does the matrix products
    monkeypatch.setattr(cpu_blas, "loaded", "/usr/lib64/libopenblas.so.0")
    assert cpu_blas.slow_blas_warning("cpu") is None


def test_no_package_manager_names_the_packages():
    assert cpu_blas.install_command(lambda name: None) == \
        "install OpenBLAS with your package manager: libopenblas0-pthread (apt-get) or openblas (dnf)"


@pytest.mark.skipif(platform.system() != "Linux", reason="OpenBLAS is loaded on Linux only")
def test_a_command_that_computes_says_so_first(tmp_path):
    """A training or scoring command on the reference BLAS prints the note before its work (here
    `validate`, which then stops: the project has no model)."""
    env = {**os.environ, "MLX_DM_CPU_BLAS": str(tmp_path / "no-libblas.so.3")}
    result = subprocess.run([sys.executable, "-m", "mlx_dm", "validate", "--project", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "reference BLAS" in result.stderr and "fix:" in result.stderr, result.stderr
    quiet = subprocess.run([sys.executable, "-m", "mlx_dm", "data", "scan", "--project", str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert "reference BLAS" not in quiet.stderr


@pytest.mark.skipif(shutil.which("node") is None or not hasattr(os, "getuid") or os.getuid() != 0
                    or platform.system() != "Linux", reason="the bootstrap installs OpenBLAS as root on Linux")
def test_bootstrap_installs_openblas_as_root_with_one_line(tmp_path):
    """A fresh machine: no library of the table present. As root the bootstrap runs the package
    manager's install (refreshing the index when the first try fails), saying what it installs."""
    package = tmp_path / "pkg"
    for name in ("pyproject.toml", "scripts/train-model.js", "mlx_dm/llama/build.json"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, package / name)
    table = json.loads((ROOT / "mlx_dm" / "cpu_blas.json").read_text())
    table["libraries"] = [str(tmp_path / "not-yet" / "libblas.so.3")]
    (package / "mlx_dm" / "cpu_blas.json").write_text(json.dumps(table))
    bin_dir, log = tmp_path / "bin", tmp_path / "apt.log"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"  # fails the first install (a stale index), as a fresh Debian image does
    apt.write_text(f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = install ] && [ ! -e {tmp_path}/updated ] && exit 100\n'
                   f'[ "$1" = update ] && touch {tmp_path}/updated\nexit 0\n')
    apt.chmod(0o755)
    venv = fake_venv(tmp_path, 'echo "mlx-dm $*"\n', stamp=stamp_for())
    env = {**os.environ, "MLX_DM_VENV": str(venv), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    env.pop("MLX_DM_CPU_BLAS", None)
    result = subprocess.run(["node", str(package / "scripts" / "train-model.js"), "doctor"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "mlx-dm doctor" in result.stdout, result.stderr
    assert "installing OpenBLAS for MLX's CPU backend (apt-get install libopenblas0-pthread" in result.stderr
    assert log.read_text().splitlines() == ["install -y -q libopenblas0-pthread", "update -q",
                                            "install -y -q libopenblas0-pthread"]
