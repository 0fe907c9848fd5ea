"""The user's flow, as a user runs it: `node scripts/train-model.js run --dev` in a project, killed
during export, run again, then the app's files checked and a short scripted game played on the GGUF."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_bootstrap import stamp_for
from .test_train import STARTER

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")]


def user_project(tmp_path: Path) -> tuple[Path, dict]:
    project = tmp_path / "game"
    project.mkdir()
    for name in ("package.json", "pyproject.toml"):
        shutil.copy(ROOT / name, project / name)
    (project / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "train-model.js", project / "scripts" / "train-model.js")
    for source in STARTER[::7]:
        target = project / "ai-training" / source.relative_to(ROOT / "ai-training")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    venv = tmp_path / "venv"  # the installed environment, so the bootstrap finds nothing to install
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "mlx-dm").symlink_to(Path(sys.executable).parent / "mlx-dm")
    (venv / ".mlx-dm-install-stamp").write_text(stamp_for() + "\n")
    return project, {**os.environ, "MLX_DM_VENV": str(venv)}


def test_train_killed_during_export_then_rerun_gives_a_working_app_model(tmp_path):
    project, env = user_project(tmp_path)
    command = ["node", "scripts/train-model.js", "run", "--dev", "--max-steps", "6"]
    first = subprocess.Popen(command, cwd=project, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    seen = ""
    deadline = time.time() + 600
    while "3/4 export" not in seen and time.time() < deadline:
        line = first.stdout.readline()
        if not line:
            break
        seen += line
    assert "3/4 export" in seen, seen
    time.sleep(3)  # into the fuse / convert work
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    models = project / "assets" / "models"
    app_files = [p.name for p in models.glob("*.gguf")] if models.exists() else []
    leftovers = list((project / "assets").rglob("*partial*")) + list((project / "assets").rglob(".*tmp*"))
    assert app_files == [] and leftovers == [], (app_files, leftovers)  # nothing half-written for the app

    second = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    config = json.loads((models / "cactus-config.json").read_text())
    gguf = project / config["modelAsset"]
    assert gguf.is_file() and config["loader"] == "CactusLM" and "<end_of_turn>" in config["stop"]
    assert [p.name for p in models.glob("*.gguf")] == [gguf.name]
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["current"]["sha256"] == config["sha256"]
    assert manifest["versions"][-1]["status"] == "promoted"
    run = sorted((project / "runs").glob("*-train"))[-1]
    assert json.loads((run / "validation" / "validation.json").read_text())["passed"]
    assert "export const modelPath" in second.stdout

    from mlx_dm.export.check import open_gguf

    llm = open_gguf(gguf, 512)
    reply = llm.create_completion(llm.tokenize(b"<bos><start_of_turn>user\nI open the door.<end_of_turn>\n<start_of_turn>model\n",
                                               add_bos=False, special=True), max_tokens=8, temperature=0.0)
    assert reply["choices"][0]["text"] and reply["usage"]["completion_tokens"] > 0
    llm.close()

    # A short scripted game through the same GGUF, dice rolled and fed back by the chat loop.
    script = "I kick the tavern door open.\n/roll 1d20+3\nI attack the nearest goblin.\n/save game.md\n/quit\n"
    game = subprocess.run(["node", "scripts/train-model.js", "chat", "--world", "Forgotten Realms", "--location", "Tavern",
                           "--party", "Brenna (Dwarf Fighter, Level 3)", "--max-tokens", "12", "--seed", "3"],
                          cwd=project, env=env, input=script, capture_output=True, text=True, timeout=300)
    assert game.returncode == 0, game.stderr
    assert game.stdout.count("DM: ") == 2 and "1d20+3 = " in game.stdout and "saved game.md" in game.stdout
    saved = (project / "game.md").read_text()
    assert saved.count("# USER") == 2 and "World: Forgotten Realms" in saved
