"""scripts/train-model.js: finds Python, installs on pyproject change, forwards args, signals, exit codes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "scripts" / "train-model.js"
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def node(args, env_extra, timeout=120):
    env = {**os.environ, **env_extra}
    return subprocess.run(["node", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# MLX's backend extra the bootstrap adds on Linux: "cpu" on these machines (no NVIDIA driver).
BACKEND = "cpu" if sys.platform.startswith("linux") else ""


def with_backend(extras: str = "") -> str:
    return ",".join(e for e in (extras, BACKEND) if e)


def stamp_for(extras: str = "") -> str:
    """The install stamp the bootstrap writes: pyproject.toml, the extras and the llama.cpp build flags."""
    from mlx_dm.llama.build import stamp_key

    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + f"extras={with_backend(extras)}".encode()
                          + stamp_key().encode()).hexdigest()


def fake_venv(tmp_path: Path, mlx_dm_body: str, stamp: str | None) -> Path:
    """A venv folder whose python logs pip calls and whose mlx-dm is a small shell script."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "python $*" >> {log}\ncase "$1" in -c) echo 3.11;; esac\n')
    mlx = venv / "bin" / "mlx-dm"
    mlx.write_text("#!/bin/sh\n" + mlx_dm_body)
    python.chmod(0o755)
    mlx.chmod(0o755)
    if stamp is not None:
        (venv / ".mlx-dm-install-stamp").write_text(stamp + "\n")
    return venv


def test_real_cli_through_bootstrap_forwards_args_and_exit_code(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "mlx-dm").symlink_to(Path(sys.executable).parent / "mlx-dm")
    (venv / ".mlx-dm-install-stamp").write_text(stamp_for() + "\n")
    result = node(["data", "validate", "--scenarios", str(tmp_path / "missing")], {"MLX_DM_VENV": str(venv)})
    assert result.returncode == 3, result.stderr
    assert "does not exist" in result.stderr and "hint:" in result.stderr
    bad = node(["data", "build", "--epochz", "2"], {"MLX_DM_VENV": str(venv)})
    assert bad.returncode == 2 and "No such option: --epochz" in bad.stderr
    doctor = node(["doctor"], {"MLX_DM_VENV": str(venv)})
    assert doctor.returncode == 0 and "cpu" in doctor.stdout


def test_missing_python_gives_install_hint(tmp_path):
    result = node(["doctor"], {"MLX_DM_VENV": str(tmp_path / "new-venv"), "MLX_DM_PYTHON": str(tmp_path / "no-python")})
    assert result.returncode == 9
    assert "no Python >= 3.10 found" in result.stderr and "MLX_DM_PYTHON" in result.stderr


def test_installs_only_when_pyproject_changed(tmp_path):
    from mlx_dm.llama.build import stamp_key

    venv = fake_venv(tmp_path, 'echo "mlx-dm $*"\nexit 4\n', stamp="old")
    # A llama-cpp-python wheel already built with this machine's flags, in the bootstrap's cache.
    wheel = tmp_path / "cache" / "wheels" / f"llama-cpp-python-0.3.36-py3.11-{stamp_key()[:16]}" / "llama.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_text("")
    env = {"MLX_DM_VENV": str(venv), "MLX_DM_CACHE": str(tmp_path / "cache"),
           "PATH": "/usr/bin:/bin"}  # no uv on this PATH: pip is the fallback
    first = node(["train", "--epochs", "2"], env)
    assert first.returncode == 4 and "mlx-dm train --epochs 2" in first.stdout
    calls = (tmp_path / "calls.log").read_text()
    assert f"python -m pip install --no-deps --force-reinstall {wheel}" in calls
    installed = f"{ROOT}[{with_backend()}]" if with_backend() else str(ROOT)
    assert calls.index("--force-reinstall") < calls.index(f"python -m pip install -e {installed}\n")
    assert (venv / ".mlx-dm-install-stamp").read_text().strip() == stamp_for()
    (tmp_path / "calls.log").unlink()
    second = node(["train"], env)
    assert second.returncode == 4 and not (tmp_path / "calls.log").exists()
    node(["pytest", "-k", "x"], env)
    assert f"python -m pip install -e {ROOT}[{with_backend('test')}]" in (tmp_path / "calls.log").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="MLX's CUDA build is for Linux x86_64")
def test_an_nvidia_driver_gets_mlx_cuda_build(tmp_path):
    """Where an NVIDIA driver answers (`nvidia-smi -L`), the venv gets MLX's CUDA build (the `cuda`
    extra) instead of the CPU one; MLX_DM_MLX_BACKEND overrides, and a wrong value is named."""
    from mlx_dm.llama.build import stamp_key

    venv = fake_venv(tmp_path, 'echo "mlx-dm $*"\n', stamp="old")
    wheel = tmp_path / "cache" / "wheels" / f"llama-cpp-python-0.3.36-py3.11-{stamp_key()[:16]}" / "llama.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"MLX_DM_VENV": str(venv), "MLX_DM_CACHE": str(tmp_path / "cache"), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver: the CPU case below cannot be shown")
    assert node(["doctor"], env).returncode == 0
    assert f"python -m pip install -e {ROOT}[cuda]\n" in (tmp_path / "calls.log").read_text()
    (tmp_path / "calls.log").unlink()
    assert node(["doctor"], {**env, "MLX_DM_MLX_BACKEND": "cpu"}).returncode == 0  # another backend: reinstalls
    assert f"python -m pip install -e {ROOT}[cpu]\n" in (tmp_path / "calls.log").read_text()
    wrong = node(["doctor"], {**env, "MLX_DM_MLX_BACKEND": "rocm"})
    assert wrong.returncode == 2 and "MLX_DM_MLX_BACKEND=rocm is not a backend" in wrong.stderr


def test_from_node_modules_installs_a_copy_of_the_sources_and_writes_nothing_there(tmp_path):
    """As a dependency of a game the package is read-only: pip builds a temporary copy (setuptools
    writes build/ and *.egg-info beside what it builds), and a changed source file reinstalls."""
    from mlx_dm.llama.build import stamp_key

    package = tmp_path / "game" / "node_modules" / "mlx-dm"
    for name in ("package.json", "pyproject.toml", "README.md", "scripts/train-model.js", "scripts/init-game.js"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, package / name)
    shutil.copytree(ROOT / "mlx_dm", package / "mlx_dm", ignore=shutil.ignore_patterns("__pycache__"))
    before = sorted(p.relative_to(package) for p in package.rglob("*"))
    venv = fake_venv(tmp_path, 'echo "mlx-dm $* in $PWD"\n', stamp=None)
    with (venv / "bin" / "python").open("a") as python:  # the fake pip says whether it got the whole package
        python.write('for a in "$@"; do a="${a%%[*}"; [ -f "$a/mlx_dm/cli/__init__.py" ] && echo "staged $a" >> ' + str(tmp_path / "calls.log") + '; done\ntrue\n')
    wheel = tmp_path / "cache" / "wheels" / f"llama-cpp-python-0.3.36-py3.11-{stamp_key()[:16]}" / "llama.whl"
    wheel.parent.mkdir(parents=True)
    wheel.write_text("")
    env = {**os.environ, "MLX_DM_VENV": str(venv), "MLX_DM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    run = lambda: subprocess.run(["node", str(package / "scripts" / "train-model.js"), "doctor"], cwd=tmp_path / "game",  # noqa: E731
                                 env=env, capture_output=True, text=True, timeout=60)
    first = run()
    assert first.returncode == 0 and f"mlx-dm doctor in {tmp_path / 'game'}" in first.stdout, first.stderr
    calls = (tmp_path / "calls.log").read_text()
    (staged,) = [line.split(" ", 1)[1] for line in calls.splitlines() if line.startswith("staged ")]
    extras = f"[{with_backend()}]" if with_backend() else ""
    assert f"python -m pip install {staged}{extras}\n" in calls and " -e " not in calls and not Path(staged).exists()
    assert sorted(p.relative_to(package) for p in package.rglob("*")) == before
    (tmp_path / "calls.log").unlink()
    assert run().returncode == 0 and not (tmp_path / "calls.log").exists()  # installed: nothing to do
    with (package / "mlx_dm" / "dice.py").open("a") as source:
        source.write("# a new version of the npm package\n")
    assert run().returncode == 0 and "staged " in (tmp_path / "calls.log").read_text()


def test_ctrl_c_is_forwarded_to_mlx_dm(tmp_path):
    marker = tmp_path / "got-sigint"
    body = f"trap 'touch {marker}; exit 130' INT\necho started\nwhile true; do sleep 0.1; done\n"
    venv = fake_venv(tmp_path, body, stamp=stamp_for())
    # As from a terminal: SIGINT at its default disposition (a background CI job may inherit it ignored).
    proc = subprocess.Popen(["node", str(SCRIPT), "train"], cwd=ROOT, env={**os.environ, "MLX_DM_VENV": str(venv)},
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    deadline = time.time() + 5
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists()
