"""mlx-dm chat on the tiny model's GGUF: one-shot, scripted stdin, /save, dice feedback, bad input."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_dm.chat import resolve_calls
from mlx_dm.data.parse import parse_text
from mlx_dm.dice import DiceRoller
from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    from mlx_dm.export.gguf import convert_to_gguf
    from mlx_dm.model.tiny import build_tiny_model

    work = tmp_path_factory.mktemp("chat")
    return convert_to_gguf(build_tiny_model(work / "tiny", STARTER_DIR), work / "tiny-f16.gguf")


def chat(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlx_dm", "chat", *args], input=stdin, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_resolve_calls_rolls_dice_tools_only():
    reply = "Make a check. [roll: perception] [inventory: Wren, +rope] [damage: 1d8+3] [roll: 1dX]"
    results = resolve_calls(reply, DiceRoller(seed=0, modifiers={"perception": 4}, actor="Wren"))
    assert len(results) == 3
    assert results[0].startswith("perception: Wren rolls 1d20+4 = ")
    assert results[1].startswith("damage: 1d8+3 = ")
    assert "could not roll" in results[2]


def test_one_shot_prompt(tiny_gguf):
    result = chat("--model", str(tiny_gguf), "--world", "Greyhawk", "--prompt", "I open the door.", "--max-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DM: ") and len(result.stdout.strip()) > len("DM:")


def test_scripted_session_save_makes_a_valid_scenario(tiny_gguf, tmp_path):
    script = "/roll 2d6+1\n/tools\nI look around.\n/save saved.md\n/save saved.md\n/bogus\n/quit\n"
    result = chat("--model", str(tiny_gguf), "--world", "Greyhawk", "--location", "Hommlet", "--party",
                  "Wren (Gnome Artificer, Level 2)", "--max-tokens", "8", stdin=script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"2d6\+1 = \d\+\d\+1 = \d+", result.stdout)
    assert "the app's agent acts on: roll" in result.stdout
    assert "exists; choose another name" in result.stdout and "unknown command /bogus" in result.stdout
    parsed = parse_text((tmp_path / "saved.md").read_text(), "saved.md")
    assert parsed.scenario is not None and parsed.scenario.world == "Greyhawk"
    assert [m.name for m in parsed.scenario.party] == ["Wren"]
    assert [t.kind for t in parsed.scenario.turns][:1] == ["user"]


def test_scenario_file_sets_the_scene(tiny_gguf):
    scenario = STARTER_DIR / "variants/speaker-sections-player-sheet.md"
    result = chat("--model", str(tiny_gguf), "--scenario", str(scenario), "--prompt", "Hello", "--max-tokens", "4")
    assert result.returncode == 0, result.stderr


def test_bad_model_paths(tmp_path):
    missing = chat("--model", str(tmp_path / "nope.gguf"), "--prompt", "hi")
    assert missing.returncode == 4 and "no GGUF file" in missing.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really")
    bad = chat("--model", str(broken), "--prompt", "hi")
    assert bad.returncode == 4 and "could not load" in bad.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_chat_in_a_real_terminal(tiny_gguf, tmp_path):
    session = f"mlxdm{int(time.time() * 1000) % 100000}"
    command = f"{sys.executable} -m mlx_dm chat --model {tiny_gguf} --world Greyhawk --max-tokens 6"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40", "-c", str(tmp_path), command],
                   check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        deadline = time.time() + 120
        while "you>" not in screen() and time.time() < deadline:
            time.sleep(0.2)
        subprocess.run(["tmux", "send-keys", "-t", session, "/roll 1d20+3", "Enter"], check=True)
        while not re.search(r"1d20\+3 = \d+\+3 = \d+", screen()) and time.time() < deadline:
            time.sleep(0.2)
        assert re.search(r"1d20\+3 = \d+\+3 = \d+", screen())
        subprocess.run(["tmux", "send-keys", "-t", session, "I light a torch", "Enter"], check=True)
        while screen().count("you>") < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert "DM: " in screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "/quit", "Enter"], check=True)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_mlx_backend_streams_until_end_of_turn(tmp_path):
    from mlx_dm.chat import ChatSession
    from mlx_dm.inference import MlxBackend
    from mlx_dm.model.tiny import build_tiny_model

    backend = MlxBackend(build_tiny_model(tmp_path / "tiny", STARTER_DIR))
    session = ChatSession(backend, "World: Greyhawk", DiceRoller(seed=0), max_tokens=6)
    pieces: list[str] = []
    replies = session.turn("I look around.", pieces.append)
    assert replies[0] == "".join(pieces).strip() and "<end_of_turn>" not in replies[0]
    assert session.messages[0]["content"].startswith("World: Greyhawk\n\nI look around.")
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


def test_gguf_replies_stop_at_max_tokens_even_mid_utf8(tmp_path):
    """A model that only writes UTF-8 lead bytes (0xE2, 0xE3: never a whole character), like an
    undertrained one writing stray byte tokens. llama-cpp-python 0.3.36's create_completion then
    ignores max_tokens and runs until the context is full; GgufBackend.stream stops at max_tokens."""
    import numpy as np

    from mlx_dm.inference import GgufBackend
    from mlx_dm.llama.smoke import TOKENS, WIDTH, write_smoke_gguf

    head = np.zeros((len(TOKENS), WIDTH), np.float32)
    direction = np.random.default_rng(0).standard_normal(WIDTH).astype(np.float32)
    head[TOKENS.index("<0xE2>")], head[TOKENS.index("<0xE3>")] = direction, -direction  # one of them wins
    gguf = write_smoke_gguf(tmp_path / "lead-bytes.gguf", output=head)

    backend = GgufBackend(gguf, n_ctx=128)
    llm = backend.llm
    prompt = llm.tokenize(b"The dungeon", add_bos=True)
    with pytest.raises(RuntimeError, match="llama_decode returned 1"):  # the upstream bug: max_tokens=4 ignored
        for _ in llm.create_completion(prompt, max_tokens=4, temperature=0.0, top_k=1, stream=True):
            pass
    assert llm.n_tokens == llm.n_ctx()  # it filled the whole context
    pieces = list(backend.stream("The dungeon", max_tokens=4))
    assert llm.n_tokens - len(llm.tokenize(b"The dungeon", add_bos=False, special=True)) <= 4
    assert "".join(pieces).count("\ufffd") >= 1  # the stray bytes come out as replacement characters, once whole
