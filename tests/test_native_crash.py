"""Native crashes named, reruns resuming at the stage that failed, one writer per project, a
llama.cpp built to run on every machine of this kind."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_dm import supervise
from mlx_dm.errors import ProjectBusy
from mlx_dm.llama.build import cmake_args, installed_build, rebuild_command
from mlx_dm.lock import project_lock

from .conftest import ROOT

AMX_XEON = "flags\t\t: fpu sse4_2 avx avx2 bmi2 fma f16c avx512f avx512bw amx_tile amx_int8 amx_bf16\n"
INJECT_SIGILL = ROOT / "tests" / "fixtures" / "inject_sigill"


def test_build_flags_leave_out_what_machines_of_a_kind_differ_in():
    args = cmake_args("linux-x64", AMX_XEON)
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AVX2=ON" in args and "-DGGML_FMA=ON" in args
    for off in ("GGML_AVX512", "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16"):
        assert f"-D{off}=OFF" in args and f"-D{off}=ON" not in args
    assert "-DGGML_AVX2=OFF" in cmake_args("linux-x64", "flags\t\t: fpu sse4_2 avx\n")  # an older CPU: no AVX2
    assert cmake_args("darwin-arm64") == ["-DGGML_METAL=ON"]
    assert "GGML_NATIVE=OFF" in rebuild_command() and "--no-cache-dir" in rebuild_command()


@pytest.mark.skipif(installed_build() is None, reason="llama-cpp-python was not installed by the bootstrap")
def test_the_installed_llama_cpp_was_built_without_amx_or_avx512():
    import llama_cpp

    assert installed_build()["cmake_args"] == cmake_args()
    info = llama_cpp.llama_print_system_info().decode()
    for feature in ("AMX_INT8", "AVX512"):
        assert f"{feature} = 1" not in info, info


def test_doctor_runs_llama_cpp_in_a_child_and_reports_it():
    done = subprocess.run([sys.executable, "-m", "mlx_dm", "doctor"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "llama.cpp check" in done.stdout and "pass" in done.stdout and "generated" in done.stdout


def test_a_signal_in_llama_cpp_is_named_with_its_stage_and_a_rebuild_hint(tmp_path):
    stack = ('Fatal Python error: Illegal instruction\n\nCurrent thread 0x1 (most recent call first):\n'
             '  File "/venv/lib/python3.11/site-packages/llama_cpp/_internals.py", line 57 in __init__\n'
             '  File "/src/mlx_dm/llama/runtime.py", line 16 in open_gguf\n')
    crash = supervise.describe_crash(signal.SIGILL, {"stage": "export", "step": "checking the GGUF files with llama.cpp",
                                                     "log": "runs/x/run.log", "project": str(tmp_path)}, stack)
    assert crash.exit_code == 132
    assert "SIGILL (illegal instruction) in llama.cpp during export (checking the GGUF files" in crash.message
    assert "runs/x/run.log" in crash.message
    assert rebuild_command() in crash.hint and "resumes" in crash.hint
    assert len(list((tmp_path / ".mlx-dm").glob("crash-*.txt"))) == 1  # the stack is kept in the project, not the cwd


def test_the_parent_reports_a_worker_killed_by_a_real_signal(tmp_path):
    # A real SIGSEGV raised in the worker once it has recorded the doctor stage (not after a fixed
    # time: on a loaded machine the worker may still be starting up a second in).
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal, threading, time\n"
        "def crash_in_doctor():\n"
        "    path = os.environ.get('MLX_DM_STAGE_FILE', '')\n"
        "    for _ in range(1200):\n"
        "        if os.path.exists(path) and 'doctor' in open(path).read():\n"
        "            break\n"
        "        time.sleep(0.05)\n"
        "    signal.raise_signal(signal.SIGSEGV)\n"
        "if os.environ.get('MLX_DM_WORKER') == '1':\n"
        "    threading.Thread(target=crash_in_doctor, daemon=True).start()\n")
    done = subprocess.run([sys.executable, "-m", "mlx_dm", "-C", str(tmp_path), "doctor"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 128 + signal.SIGSEGV, done.stdout + done.stderr
    assert "native crash:" in done.stderr and "SIGSEGV (segmentation fault)" in done.stderr
    assert "during doctor" in done.stderr and "mlx-dm doctor" in done.stderr
    kept = list((tmp_path / ".mlx-dm").glob("crash-*.txt"))
    assert kept and "Fatal Python error" in kept[0].read_text()


def test_a_second_writer_stops_at_once_naming_the_first(tmp_path):
    with project_lock(tmp_path, "mlx-dm run"):
        with pytest.raises(ProjectBusy, match=r"`mlx-dm run` \(pid %d" % os.getpid()) as busy:
            with project_lock(tmp_path, "mlx-dm export"):
                pass
        assert busy.value.exit_code == 10
    with project_lock(tmp_path, "mlx-dm export"):  # released with the first
        pass


def _stage_run(project: Path, name: str, key: str, status: str = "finished") -> Path:
    run = project / "runs" / name
    (run / "adapters").mkdir(parents=True)
    (run / "adapters" / "adapters.safetensors").write_bytes(b"x")
    (run / "train_state.json").write_text(json.dumps({"key": key, "status": status}))
    return run


def _register(project: Path, run: str, version: str, status: str) -> None:
    from mlx_dm.registry import load_manifest, models_dir_of
    from mlx_dm.files import atomic_write_json

    models = models_dir_of(project)
    gguf = models / "versions" / f"dm-{version}" / f"dm-{version}.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"gguf")
    manifest = load_manifest(models)
    manifest["versions"].append({"version": version, "run": run, "status": status, "name": "dm",
                                 "gguf_path": str(gguf.relative_to(project)), "sha256": "s"})
    atomic_write_json(models / "manifest.json", manifest)


def test_a_rerun_resumes_at_the_first_stage_its_finished_run_has_not_done(tmp_path):
    from mlx_dm.pipeline.resume import finished_training

    runs = tmp_path / "runs"
    assert finished_training(runs, "k", tmp_path) is None  # nothing trained yet
    _stage_run(tmp_path, "20260101-000000-train", "k")
    assert finished_training(runs, "k", tmp_path).stage == "export"  # killed in export
    assert finished_training(runs, "other", tmp_path) is None  # another config or data: train
    _register(tmp_path, "20260101-000000-train", "v1", "candidate")
    assert finished_training(runs, "k", tmp_path).stage == "validation"
    _register(tmp_path, "20260101-000000-train", "v2", "scored")  # killed in the playtest
    assert finished_training(runs, "k", tmp_path).stage == "playtest"
    _register(tmp_path, "20260101-000000-train", "v3", "validated")
    resumed = finished_training(runs, "k", tmp_path)
    assert resumed.stage == "promotion" and resumed.version["version"] == "v3"
    _register(tmp_path, "20260101-000000-train", "v4", "promoted")
    assert finished_training(runs, "k", tmp_path) is None  # its model reached the app: --force trains anew
    _stage_run(tmp_path, "20260102-000000-train", "k", status="interrupted")
    assert finished_training(runs, "k", tmp_path) is None  # the trainer resumes the newer, unfinished one


def test_files_placed_for_the_app_get_ordinary_permissions(tmp_path):
    from mlx_dm.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "cactus-config.ts", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "cactus-config.ts").stat().st_mode) == 0o644
