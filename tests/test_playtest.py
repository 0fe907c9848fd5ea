"""mlx-dm playtest: whole games on the tiny model's GGUF with the app's settings, and the rules that
judge each reply (invented results, a player's decisions, repeats, the context filling)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_dm.config import PlaytestConfig
from mlx_dm.data.parse import parse_text
from mlx_dm.data.profiles import builtin_profiles
from mlx_dm.evaluate.playtest import PlaySettings, fit_history, judge, load_scripts, play_game, script_of
from mlx_dm.evaluate.playtest_report import run_playtest, write_playtest
from mlx_dm.inference import GgufBackend

from .test_chat import tiny_gguf  # noqa: F401 - the module's GGUF fixture

PROFILE = builtin_profiles(["roll", "update", "damage", "heal", "status", "inventory", "skill_check"])["cactus-agent"]
SCRIPT = """# SYSTEM

Role: Dungeon Master
World: Forgotten Realms
Location: A crossroads
Party:

- Wren (Gnome Artificer, Level 2, HP: 14/14, AC: 15)

# DM

Rain on the signpost.

# USER

Wren reads the signpost.

# DM

Make an Investigation check. [roll: investigation]

# TOOLCALL

investigation: Wren rolls 1d20+3 = 15+3 = 18

# DM

The road north goes to Triboar.

# USER

Wren walks north.
"""


def reply(text: str, earlier: list[str] | None = None):
    return judge(text, 1, 0.1, 10, earlier or [], {"Wren", "Okoro"}, PROFILE, False)


def test_the_rules_flag_what_an_app_would_run_into():
    assert not reply("The door creaks open. Make a Perception check. [roll: perception]").invented_result
    assert reply("[roll: perception] perception: Wren rolls 1d20+4 = 11+4 = 15").invented_result
    assert reply("Tool results:\nroll: 3 + 5 = *8*").invented_result
    assert reply("You decide to open the chest.").for_player
    assert reply("Okoro: I open it.").for_player  # speaking for a party member
    assert not reply("Captain Harrow: Sit down.").for_player
    assert reply('Wren steps closer. "I have no business with you," Wren says.').for_player
    assert reply('"Run!" shouts Okoro.').for_player
    assert not reply('"Run!" the captain shouts at Okoro.').for_player
    assert not reply("Wren, you hear the captain shout a warning.").for_player
    assert reply("The rain falls.", ["The  rain falls."]).repeated
    assert reply("It is dark here. It is dark here. It is dark here.").repeated
    assert reply("").garbage and reply("<start_of_turn>model").garbage
    judged = reply("Roll! [roll: perception] [attack: goblin, club] [roll perception]")
    assert judged.verdicts == {"acts": 1, "drops": 1, "rejects": 0} and judged.look_alikes == ["[roll perception]"]


def test_a_scenario_file_replays_as_a_script_with_its_results():
    script = script_of(parse_text(SCRIPT, "a.md").scenario, "scripts/a.md")
    assert script.opening == "Rain on the signpost."
    assert [s.player for s in script.steps] == ["Wren reads the signpost.", "Wren walks north."]
    assert script.steps[0].results == ("investigation: Wren rolls 1d20+3 = 15+3 = 18",)
    assert len(load_scripts()) >= 10 and all(len(s.steps) >= 12 for s in load_scripts())


def test_history_is_trimmed_oldest_first_and_keeps_the_scene():
    messages = [{"role": "user", "content": "scene"}] + [
        {"role": r, "content": f"{r} {i} " + "word " * 50} for i in range(6) for r in ("assistant", "user")]
    count = lambda text: len(text.split())  # noqa: E731 - a word count stands in for the tokenizer
    kept, trimmed = fit_history(messages, count, 200)
    assert trimmed > 0 and kept[0]["content"] == "scene" and kept[-1] == messages[-1]
    assert [m["role"] for m in kept] == ["user"] + ["assistant", "user"] * ((len(kept) - 1) // 2)


@pytest.mark.slow
def test_games_on_the_tiny_gguf_repeat_for_a_seed_and_survive_a_full_context(tiny_gguf, tmp_path):  # noqa: F811
    config = PlaytestConfig(sessions=2, turns=5, max_tokens=40, n_ctx=384, thresholds=False)
    backend = GgufBackend(tiny_gguf, config.n_ctx, config.temperature, config.seed, config.top_p)
    first = run_playtest(backend, tiny_gguf.name, config, {"cactus-agent": PROFILE})
    again = run_playtest(backend, tiny_gguf.name, config, {"cactus-agent": PROFILE})
    assert [r.text for g in first.games for r in g.replies] == [r.text for g in again.games for r in g.replies]
    summary = first.summary
    assert summary["games"] == 2 and summary["player_turns"] == 10 and not summary["errors"]
    assert summary["games_trimmed"] >= 1 and summary["replies_after_trim"] > 0  # 384 tokens fill up in 5 turns
    assert summary["tokens_per_second"] > 0 and first.passed  # thresholds off: reported, not judged
    path = write_playtest(first, tmp_path)
    saved = json.loads((tmp_path / "playtest.json").read_text())
    assert saved["summary"]["replies"] == summary["replies"] and (tmp_path / "playtest.png").stat().st_size > 1000
    assert "| check | result |" in path.read_text()

    script = script_of(parse_text(SCRIPT, "a.md").scenario, "scripts/a.md")
    game = play_game(backend, script, PlaySettings(turns=2, n_ctx=2048, max_tokens=24), PROFILE, seed=3)
    assert {r.turn for r in game.replies} == {1, 2} and not game.error


@pytest.mark.slow
def test_the_command_plays_a_folder_of_scripts_and_fails_on_its_thresholds(tiny_gguf, tmp_path):  # noqa: F811
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "crossroads.md").write_text(SCRIPT)
    (tmp_path / "mlx-dm.toml").write_text("[playtest]\nmax_repeated = -1.0\n")  # no game can meet it
    command = [sys.executable, "-m", "mlx_dm", "-C", str(tmp_path), "playtest", "--model", str(tiny_gguf),
               "--scripts", str(scripts), "--sessions", "1", "--turns", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 7, result.stdout + result.stderr  # ValidationFailed
    assert "failed its playtest: replies not repeated" in result.stdout + result.stderr
    report = json.loads(next(Path(tmp_path, "runs").glob("*-playtest/playtest.json")).read_text())
    assert report["games"][0]["script"] == "scripts/crossroads.md" and report["passed"] is False
