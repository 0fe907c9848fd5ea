"""`npx mlx-dm init` (scripts/init-game.js) in a game repository: what it adds, what it keeps, and
that a second run changes nothing. No Python is installed for it; these tests run node alone."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
GAME_SCRIPTS = json.loads((ROOT / "package.json").read_text())["mlx-dm"]["gameScripts"]


def init(game: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(ROOT / "scripts" / "train-model.js"), "init", *args], cwd=game,
                          capture_output=True, text=True, timeout=60)


def expo_game(tmp_path: Path, package: dict, indent="  ") -> Path:
    game = tmp_path / "game"
    game.mkdir()
    (game / "package.json").write_text(json.dumps(package, indent=indent) + "\n")
    return game


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


EXPO = {"name": "quest-app", "main": "expo-router/entry", "version": "1.0.0",
        "scripts": {"start": "expo start", "android": "expo run:android", "lint": "eslint ."},
        "dependencies": {"expo": "~52.0.0", "react": "18.3.1", "react-native": "0.76.3"}}


def test_init_adds_scripts_settings_ignores_and_folders_then_changes_nothing(tmp_path):
    game = expo_game(tmp_path, EXPO, indent="\t")
    (game / ".gitignore").write_text("node_modules/\n/.venv\n")  # .venv already ignored, spelled differently
    first = init(game)
    assert first.returncode == 0, first.stderr
    package = json.loads((game / "package.json").read_text())
    assert package["scripts"] == {**EXPO["scripts"], **GAME_SCRIPTS}
    assert {k: v for k, v in package.items() if k != "scripts"} == {k: v for k, v in EXPO.items() if k != "scripts"}
    assert list(package) == list(EXPO)  # key order kept
    assert (game / "package.json").read_text().startswith('{\n\t"name"')  # the file's own indentation
    assert (game / ".gitignore").read_text() == \
        "node_modules/\n/.venv\n\n# mlx-dm (npx mlx-dm init)\nruns/\n.mlx-dm/\nassets/models/versions/\n"
    assert (game / "mlx-dm.toml").read_text() == (ROOT / "scripts" / "mlx-dm.toml").read_text()
    assert (game / "ai-training").is_dir() and (game / "assets" / "models").is_dir()
    for line in ('added package.json script "train": "mlx-dm run"', "wrote mlx-dm.toml",
                 "added to .gitignore: runs/ .mlx-dm/ assets/models/versions/", "created ai-training/", "created assets/models/"):
        assert line in first.stdout, first.stdout

    before = snapshot(game)
    second = init(game)
    assert second.returncode == 0, second.stderr
    assert snapshot(game) == before  # not one byte nor one modification time
    assert f"nothing to change in {game}" in second.stdout and "found ai-training/ with 0 scenario files" in second.stdout


def test_init_keeps_the_users_own_scripts_and_settings_unless_forced(tmp_path):
    own = {**EXPO, "scripts": {**EXPO["scripts"], "train": "python train.py", "train:dev": GAME_SCRIPTS["train:dev"]}}
    game = expo_game(tmp_path, own)
    (game / "mlx-dm.toml").write_text("[train]\nepochs = 2\n")
    (game / "ai-training" / "act-1").mkdir(parents=True)
    (game / "ai-training" / "act-1" / "tavern.md").write_text("# a scenario\n")
    result = init(game)  # not a terminal: nothing to ask, so the user's script stays
    assert result.returncode == 0, result.stderr
    scripts = json.loads((game / "package.json").read_text())["scripts"]
    assert scripts["train"] == "python train.py" and scripts["train:validate"] == GAME_SCRIPTS["train:validate"]
    assert 'kept your package.json script "train" ("python train.py")' in result.stdout
    assert (game / "mlx-dm.toml").read_text() == "[train]\nepochs = 2\n"
    assert "found ai-training/ with 1 scenario file\n" in result.stdout

    forced = init(game, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((game / "package.json").read_text())["scripts"]["train"] == GAME_SCRIPTS["train"]
    assert 'replaced package.json script "train" ("python train.py") with "mlx-dm run"' in forced.stdout


def test_init_outside_a_package_or_with_a_bad_one_says_where_and_what_to_do(tmp_path):
    empty = tmp_path / "not-a-game"
    empty.mkdir()
    result = init(empty)
    assert result.returncode == 2 and f"no package.json in {empty}" in result.stderr and "hint: run `npx mlx-dm init`" in result.stderr
    assert list(empty.iterdir()) == []
    broken = expo_game(tmp_path, {})
    (broken / "package.json").write_text('{"name": "x",\n')
    result = init(broken)
    assert result.returncode == 2 and "package.json is not valid JSON" in result.stderr
    assert (broken / "package.json").read_text() == '{"name": "x",\n' and sorted(p.name for p in broken.iterdir()) == ["package.json"]
    assert init(broken, "--yes").returncode == 2
