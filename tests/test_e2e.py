"""The user's flow, as a user runs it: mlx-dm packed (`npm pack`) and added to a game repository
of its own, `npx mlx-dm init` twice, then `npm run train:dev` there, killed by a SIGILL inside
llama.cpp's first model load (as a build for another CPU dies), run again, the app's files checked,
a short scripted game played on the GGUF and `npm run train:validate`; two runs at once in one
project."""

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

from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT
from .test_bootstrap import stamp_for
from .test_init import EXPO, GAME_SCRIPTS, snapshot
from .test_train import STARTER

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")]
NPM = ["npm", "--no-audit", "--no-fund", "--loglevel=error"]


def add_scenarios(game: Path) -> None:
    for source in STARTER[::len(STARTER) // 10][:10]:  # 10 of the game's own, fewer than data.starter_below
        target = game / "ai-training" / source.relative_to(STARTER_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


def game_with_mlx_dm(tmp_path: Path) -> Path:
    """A game repository of its own (an Expo package.json with its scripts and a real dependency,
    a few scenarios) with this checkout's `npm pack` tarball installed as a dev dependency."""
    packed = subprocess.run([*NPM, "pack", "--pack-destination", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert packed.returncode == 0, packed.stderr
    tarball = tmp_path / packed.stdout.strip().splitlines()[-1]
    game = tmp_path / "game"
    game.mkdir()
    # react: a real dependency, small enough to install here (Expo's own would download hundreds of MB).
    package = {**EXPO, "dependencies": {"react": "18.3.1"}}
    (game / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    add_scenarios(game)
    installed = subprocess.run([*NPM, "install", "--save-dev", str(tarball)], cwd=game, capture_output=True, text=True,
                               timeout=600)
    assert installed.returncode == 0, installed.stderr
    return game


def plain_project(tmp_path: Path) -> tuple[Path, dict]:
    """A folder with scenarios, run through this checkout's bootstrap on the test environment."""
    project = tmp_path / "game"
    add_scenarios(project)
    venv = tmp_path / "venv"  # the installed environment, so the bootstrap finds nothing to install
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "mlx-dm").symlink_to(Path(sys.executable).parent / "mlx-dm")
    (venv / ".mlx-dm-install-stamp").write_text(stamp_for() + "\n")
    return project, {**os.environ, "MLX_DM_VENV": str(venv)}


def trained_steps(project: Path) -> list[int]:
    """The steps every training run of the project logged, in order."""
    return [json.loads(line)["step"] for run in sorted((project / "runs").glob("*-train"))
            for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def check_the_app_model(project: Path, env: dict, said: str) -> None:
    """What the game gets: one GGUF beside its config, validated and promoted, that loads and plays."""
    models = project / "assets" / "models"
    run = sorted((project / "runs").glob("*-train"))[-1]
    config = json.loads((models / "cactus-config.json").read_text())
    gguf = project / config["modelAsset"]
    assert gguf.is_file() and config["loader"] == "CactusLM" and "<end_of_turn>" in config["stop"]
    assert [p.name for p in models.glob("*.gguf")] == [gguf.name]
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["current"]["sha256"] == config["sha256"]
    assert manifest["versions"][-1]["status"] == "promoted"
    assert json.loads((run / "validation" / "validation.json").read_text())["passed"]
    played = json.loads((run / "playtest" / "playtest.json").read_text())  # games before promotion
    assert played["summary"]["games"] == 3 and not played["thresholds"] and not played["summary"]["errors"]
    assert "export const modelPath" in said

    from mlx_dm.inference import GgufBackend

    backend = GgufBackend(gguf, 512)
    assert "".join(backend.stream("<bos><start_of_turn>user\nI open the door.<end_of_turn>\n<start_of_turn>model\n", 8))
    backend.llm.close()

    # A short scripted game through the same GGUF, dice rolled and fed back by the chat loop.
    script = "I kick the tavern door open.\n/roll 1d20+3\nI attack the nearest goblin.\n/save game.md\n/quit\n"
    game = subprocess.run(["npx", "mlx-dm", "chat", "--world", "Forgotten Realms", "--location", "Tavern",
                           "--party", "Brenna (Dwarf Fighter, Level 3)", "--max-tokens", "12", "--seed", "3"],
                          cwd=project, env=env, input=script, capture_output=True, text=True, timeout=300)
    assert game.returncode == 0, game.stderr
    assert game.stdout.count("DM: ") == 2 and "1d20+3 = " in game.stdout and "saved game.md" in game.stdout
    saved = (project / "game.md").read_text()
    assert saved.count("# USER") == 2 and "World: Forgotten Realms" in saved


def test_a_game_repository_adds_mlx_dm_inits_and_trains_through_a_sigill_and_a_resume(tmp_path):
    game = game_with_mlx_dm(tmp_path)
    package = game / "node_modules" / "mlx-dm"
    assert not package.is_symlink() and (package / "mlx_dm" / "cli" / "__init__.py").is_file()
    first_init = subprocess.run(["npx", "mlx-dm", "init"], cwd=game, capture_output=True, text=True, timeout=120)
    assert first_init.returncode == 0 and "added package.json script" in first_init.stdout, first_init.stderr
    own = {path: data for path, data in snapshot(game).items() if not path.startswith("node_modules")}
    again = subprocess.run(["npx", "mlx-dm", "init"], cwd=game, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stdout + again.stderr
    assert {path: data for path, data in snapshot(game).items() if not path.startswith("node_modules")} == own
    shipped = snapshot(package)

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLX_DM_VENV")}
    command = [*NPM, "run", "--silent", "train:dev", "--", "--max-steps", "6"]
    inject = ROOT / "tests" / "fixtures" / "inject_sigill"  # SIGILL from llama.cpp's first model load
    first = subprocess.run(command, cwd=game, env={**env, "PYTHONPATH": str(inject)}, capture_output=True, text=True,
                           timeout=1800)  # the first run also creates the game's .venv and installs mlx-dm there
    said = first.stdout + first.stderr
    assert first.returncode != 0, said[-3000:]
    assert f"installing mlx-dm into {game / '.venv'}" in first.stderr, said[-3000:]
    # llama.cpp's first load in a run is the f16 file replying to held-out cases, for the quantisation's choice.
    crash = " ".join(first.stderr.split())
    assert "native crash: SIGILL (illegal instruction) in llama.cpp during export (choosing the quantisation: " \
           "candidates Q4_K_M, Q8_0 under the 2.00 GB budget, scored on 8 held-out cases against f16); " \
           "exit code 132" in crash, said[-3000:]
    assert "GGML_NATIVE=OFF" in first.stderr and "resumes" in first.stderr
    (run,) = sorted((game / "runs").glob("*-train"))
    assert f"log: {run / 'run.log'}" in first.stderr and list(run.glob("crash-*.txt"))
    models = game / "assets" / "models"
    assert not list(models.glob("*.gguf")), list(models.iterdir())
    steps = trained_steps(game)
    assert steps == list(range(1, 7))

    second = subprocess.run(command, cwd=game, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "installing mlx-dm" not in second.stderr
    assert f"training already finished in {run}; resuming at export" in " ".join(second.stdout.split())
    assert trained_steps(game) == steps and len(list((game / "runs").glob("*-train"))) == 1
    assert second.stdout.count("reusing") >= 3  # fused checkpoint, f16 GGUF, importance matrix
    manifest = json.loads((models / "manifest.json").read_text())
    assert [(v["version"], v["status"]) for v in manifest["versions"]] == [("v1", "promoted")]
    assert "mlx-dm's starter corpus joined: 64 scenarios" in " ".join(second.stdout.split())  # 10 of the game's own
    check_the_app_model(game, env, second.stdout)

    validate = subprocess.run([*NPM, "run", "--silent", "train:validate"], cwd=game, env=env, capture_output=True, text=True,
                              timeout=900)
    assert validate.returncode == 0, validate.stdout[-3000:] + validate.stderr[-3000:]
    app_gguf = json.loads((models / "cactus-config.json").read_text())["modelAsset"]
    assert f"validation of {Path(app_gguf).name}" in validate.stdout and "FAIL" not in validate.stdout, validate.stdout[-3000:]
    assert snapshot(package) == shipped  # nothing written into the installed package
    scripts = json.loads((game / "package.json").read_text())
    assert scripts["scripts"] == {**EXPO["scripts"], **GAME_SCRIPTS} and scripts["dependencies"] == {"react": "18.3.1"}


def test_two_runs_at_once_in_one_project_the_second_stops(tmp_path):
    project, env = plain_project(tmp_path)
    command = ["node", str(ROOT / "scripts" / "train-model.js"), "run", "--dev", "--force"]
    first = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    lock = project / ".mlx-dm" / "lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    holder = json.loads(lock.read_text())
    second = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 10, second.stdout + second.stderr
    assert f"another mlx-dm is writing {project.resolve()}: `mlx-dm run` (pid {holder['pid']}" in second.stderr
    assert first.poll() is None  # the first goes on
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    third = subprocess.run(["node", str(ROOT / "scripts" / "train-model.js"), "models", "rollback"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=120)
    assert third.returncode == 4 and "no earlier promoted version" in third.stderr  # the lock died with the first
