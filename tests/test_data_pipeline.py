"""Discovery, bad files, split, balance, vocabulary, rendering and the dataset folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jinja2
import pytest

from mlx_dm.data.dataset import balance, build_dataset, split, write_dataset
from mlx_dm.data.discover import find_scenario_files, scan
from mlx_dm.data.parse import parse_text
from mlx_dm.data.render import GEMMA_CHAT_TEMPLATE, dm_examples, render_messages, render_scenario
from mlx_dm.errors import DataError
from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT


def scenario_text(world: str = "W", dm: str = "The door creaks. [roll: perception]", category: str = "") -> str:
    cat = f"Category: {category}\n" if category else ""
    return (f"# SYSTEM\nRole: Dungeon Master\nWorld: {world}\nLocation: L\n{cat}\n# USER\nI look.\n\n# DM\n{dm}\n\n"
            "# TOOLCALL\nperception: 12\n\n# DM\nNothing there.\n")


def test_mixed_corpus_good_files_survive(write_md, tmp_path):
    good = [write_md(f"data/scenarios/combat/good{i}.md", scenario_text(world=f"W{i}")) for i in range(3)]
    write_md("data/README.md", "# Notes\nnot a scenario")
    write_md("data/scenarios/bad-encoding.md", b"# SYSTEM\nWorld: caf\xe9\n# DM\nhi\n")
    write_md("data/scenarios/binary.md", b"\x00\x01\x02# DM")
    write_md("data/scenarios/no-dm.md", "# SYSTEM\nRole: Dungeon Master\n# USER\nhello\n")
    write_md("data/scenarios/huge.md", "# DM\n" + "x" * 2_000_000)
    write_md("data/scenarios/a/b/c/d/e/f/deep.md", scenario_text(world="Deep"))
    write_md("data/scenarios/.hidden/secret.md", scenario_text(world="Hidden"))
    write_md("data/scenarios/notes.txt", "not markdown")
    dataset = build_dataset(tmp_path / "ai-training")
    s = dataset.summary
    assert s.accepted == len(good) + 1
    assert set(s.rejected) == {"data/scenarios/bad-encoding.md", "data/scenarios/binary.md",
                               "data/scenarios/no-dm.md", "data/scenarios/huge.md"}
    assert s.skipped == {"data/README.md": "documentation file (README and the like)"}
    by_code = {p.code: p for p in dataset.problems}
    assert by_code["not-utf8"].line == 2 and "UTF-8" in by_code["not-utf8"].hint
    assert "oversize" in by_code and "binary" in by_code and "no-dm-turn" in by_code


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "ai-training").mkdir()
    with pytest.raises(DataError) as info:
        build_dataset(tmp_path / "ai-training")
    assert "no usable scenario" in info.value.message and "scenario-format" in info.value.hint


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError) as info:
        scan(tmp_path / "nope")
    assert "--scenarios" in info.value.hint


def test_symlinks_out_of_the_folder_are_not_followed(write_md, tmp_path):
    inside = write_md("in.md", scenario_text())
    outside = tmp_path / "outside.md"
    outside.write_text(scenario_text(world="Out"))
    (tmp_path / "ai-training" / "link-out.md").symlink_to(outside)
    (tmp_path / "ai-training" / "link-in.md").symlink_to(inside)
    (tmp_path / "ai-training" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    names = [p.name for p in find_scenario_files(tmp_path / "ai-training")]
    assert names == ["in.md", "link-in.md"]


def test_order_is_deterministic(write_md, tmp_path):
    for name in ("b.md", "a/z.md", "a.md", "C.md"):
        write_md(name, scenario_text())
    rel = [p.relative_to(tmp_path / "ai-training").as_posix() for p in find_scenario_files(tmp_path / "ai-training")]
    assert rel == sorted(rel)


def test_duplicates_are_left_out(write_md, tmp_path):
    write_md("one.md", scenario_text())
    write_md("two.md", scenario_text())
    dataset = build_dataset(tmp_path / "ai-training")
    assert dataset.summary.duplicates == {"two.md": "one.md"} and dataset.summary.accepted == 1


def test_strict_rejects_files_with_warnings(write_md, tmp_path):
    write_md("ok.md", scenario_text())
    write_md("warn.md", scenario_text(world="X", dm="Go [transition wilderness] [roll: perception]"))
    assert build_dataset(tmp_path / "ai-training").summary.accepted == 2
    strict = build_dataset(tmp_path / "ai-training", strict=True)
    assert strict.summary.accepted == 1 and "warn.md" in strict.summary.rejected


def test_categories_key_then_folder_then_inferred(write_md, tmp_path):
    write_md("roleplay/keyed.md", scenario_text(world="A", category="combat"))
    write_md("roleplay/folder.md", scenario_text(world="B"))
    write_md("misc/inferred.md", scenario_text(world="C", dm="The orc swings his axe! Roll initiative. [roll: initiative] [attack: orc, axe]"))
    dataset = build_dataset(tmp_path / "ai-training", validation_fraction=0.0)
    got = {s.path: (s.category, s.category_source) for s in dataset.train + dataset.valid}
    assert got == {"roleplay/keyed.md": ("combat", "key"), "roleplay/folder.md": ("roleplay", "folder"),
                   "misc/inferred.md": ("combat", "inferred")}


def _scenarios(n: int, category: str):
    out = []
    for i in range(n):
        s = parse_text(scenario_text(world=f"{category}{i}"), f"{category}/{i}.md").scenario
        s.category = category
        out.append(s)
    return out


def test_split_ten_files_leaves_validation_and_is_stratified_and_stable():
    items = _scenarios(4, "combat") + _scenarios(3, "roleplay") + _scenarios(3, "exploration")
    train, valid = split(items, 0.15, seed=0)
    assert len(valid) >= 1 and len(train) + len(valid) == 10
    assert not {s.path for s in train} & {s.path for s in valid}
    assert split(items, 0.15, seed=0) == (train, valid)
    big_train, big_valid = split(items * 1, 0.3, seed=1)
    assert {s.category for s in big_valid} == {"combat", "roleplay", "exploration"}
    # Adding a file does not move the others between splits.
    more = items + _scenarios(1, "combat")[:0] + [_scenarios(5, "combat")[4]]
    _, valid_more = split(more, 0.15, seed=0)
    assert {s.path for s in valid} <= {s.path for s in valid_more} | {s.path for s in valid}


def test_split_tiny_corpora():
    assert split(_scenarios(1, "combat"), 0.15, 0)[1] == []
    train, valid = split(_scenarios(2, "combat"), 0.15, 0)
    assert len(train) == 1 and len(valid) == 1


def test_balance_upsamples_minorities_only():
    train = _scenarios(6, "combat") + _scenarios(2, "roleplay") + _scenarios(3, "exploration")
    mixed = balance(train, {"combat": 1 / 3, "roleplay": 1 / 3, "exploration": 1 / 3}, seed=0)
    counts = {c: sum(s.category == c for s in mixed) for c in ("combat", "roleplay", "exploration")}
    assert counts == {"combat": 6, "roleplay": 6, "exploration": 6}
    assert {s.path for s in train} <= {s.path for s in mixed}


def test_render_equals_gemma_chat_template():
    text = (STARTER_DIR / "variants/speaker-sections-player-sheet.md").read_text()
    scenario = parse_text(text, "x.md").scenario
    rendered = render_scenario(scenario)
    env = jinja2.Environment()
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    template = env.from_string(GEMMA_CHAT_TEMPLATE)
    assert template.render(messages=rendered.messages, bos_token="<bos>") == rendered.text
    # The app sends the context as a system message: same text.
    with_system = [{"role": "system", "content": rendered.messages[0]["content"].split("\n\nZara:")[0]},
                   {"role": "user", "content": "Zara:" + rendered.messages[0]["content"].split("\n\nZara:")[1]}]
    with_system += rendered.messages[1:]
    assert template.render(messages=with_system, bos_token="<bos>") == rendered.text
    # Loss spans cover exactly the model turns' text plus <end_of_turn>.
    model_texts = [rendered.text[a:b] for a, b in rendered.train_spans]
    assert all(t.endswith("<end_of_turn>") for t in model_texts)
    assert model_texts[0].startswith("Gorrik: ") and "<start_of_turn>" not in "".join(model_texts)


def test_dm_examples_end_with_generation_prompt():
    scenario = parse_text(scenario_text(), "x.md").scenario
    examples = dm_examples(scenario)
    assert len(examples) == 2
    assert examples[0].prompt.endswith("<start_of_turn>model\n") and examples[0].reference.endswith("[roll: perception]")
    assert render_messages(examples[1].messages, add_generation_prompt=True).text == examples[1].prompt


def test_dm_opening_scenario_renders_alternating_roles():
    text = "# SYSTEM\nRole: Dungeon Master\nWorld: W\nLocation: L\n# DM\nIt rains.\n# USER\nI wait.\n# DM\nIt stops.\n"
    rendered = render_scenario(parse_text(text, "x.md").scenario)
    assert [m["role"] for m in rendered.messages] == ["user", "assistant", "user", "assistant"]


def test_dataset_folder_contents(write_md, tmp_path):
    for i in range(10):
        write_md(f"combat/c{i}.md", scenario_text(world=f"W{i}"))
    dataset = build_dataset(tmp_path / "ai-training")
    out = write_dataset(dataset, tmp_path / "ds")
    assert {p.name for p in out.iterdir()} == {"train.jsonl", "valid.jsonl", "stats.json", "vocabulary.json",
                                                "problems.json", "fingerprint.txt", "report.md", "files.json"}
    files = json.loads((out / "files.json").read_text())
    assert sorted(files) == [f"combat/c{i}.md" for i in range(10)] and all(len(h) == 64 for h in files.values())
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == dataset.summary.train_balanced and rows[0]["text"].startswith("<bos>")
    vocab = json.loads((out / "vocabulary.json").read_text())
    assert vocab["roll"]["count"] == 10 and vocab["roll"]["agent_acts"] is True
    assert vocab["roll"]["first_file"] == "combat/c0.md"
    before = dataset.summary.fingerprint
    write_md("combat/c0.md", scenario_text(world="changed"))
    assert build_dataset(tmp_path / "ai-training").summary.fingerprint != before


def test_nothing_in_ai_training_is_written(write_md, tmp_path):
    path = write_md("c.md", scenario_text(dm="Quote \u201chere\u201d [roll: \u201cx\u201d]  "))
    before = path.read_bytes(), os.stat(path).st_mtime_ns
    write_dataset(build_dataset(tmp_path / "ai-training"), tmp_path / "ds")
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_starter_corpus():
    dataset = build_dataset(STARTER_DIR)
    s = dataset.summary
    assert s.accepted >= 60 and not s.rejected
    assert all(s.categories_before.get(c, 0) >= 15 for c in ("combat", "roleplay", "exploration"))
    for scenario in dataset.train + dataset.valid:
        assert 3 <= len(scenario.turns) <= 40, scenario.path  # long ones train as windows (batching.py)
    forms = {sc.form for sc in dataset.train + dataset.valid}
    assert forms == {"headings", "tags"}
    from mlx_dm.config import DEFAULT_AGENT_TOOLS

    for tool in ("attack", "save", "spellcast", "transition", "add_to_inventory", *DEFAULT_AGENT_TOOLS):
        assert tool in s.tools, tool
    assert s.warnings == 0, [str(p) for p in dataset.problems]


def test_the_starter_corpus_teaches_every_tool_the_game_uses_and_when_not_to_call():
    """#39: >= 300 scenarios; the game's scene tools as well as rolls of every skill; at least half of
    the DM turns without a call (a check only where the outcome is uncertain)."""
    from collections import Counter

    from mlx_dm.data.discover import scan
    from mlx_dm.data.scenario import DM
    from mlx_dm.data.toolcalls import find_calls

    scenarios = [s.scenario for s in scan(STARTER_DIR).accepted]
    assert len(scenarios) >= 300
    replies = [turn.text for scenario in scenarios for turn in scenario.turns if turn.kind == DM]
    calls = [call for text in replies for call in find_calls(text, 1)]
    tools = Counter(call.name for call in calls)
    scene = ("transition", "add_to_inventory", "add_to_party", "charge", "award_exp", "inventory", "health")
    assert all(tools[name] >= 20 for name in scene), tools
    assert sum(tools[name] for name in scene) >= 0.35 * len(calls)
    assert all(tools[name] >= 20 for name in ("roll", "damage", "heal", "save", "spellcast", "attack")), tools
    skills = {call.arguments.strip() for call in calls if call.name == "roll"}
    assert SKILLS <= skills, SKILLS - skills
    assert sum(not find_calls(text, 1) for text in replies) >= 0.5 * len(replies)


SKILLS = {"acrobatics", "animal_handling", "arcana", "athletics", "deception", "history", "insight", "intimidation",
          "investigation", "medicine", "nature", "perception", "performance", "persuasion", "religion",
          "sleight_of_hand", "stealth", "survival"}


def test_tool_vocabulary_reports_new_tools_and_keeps_user_docs(tmp_path):
    from mlx_dm.data.dataset import ToolInfo
    from mlx_dm.data.vocabulary import extend_vocabulary, write_tools_doc

    roll = ToolInfo("roll", 3, {"perception": 3}, ["[roll: perception]"], "a.md", 4, True)
    new, vocab = extend_vocabulary(tmp_path, {"roll": roll}, ["roll"])
    assert new == [] and vocab["roll"]["count"] == 3  # the first build records, it has nothing to compare with
    summon = ToolInfo("summon", 1, {"<text>": 1}, ["[summon: imp]"], "b.md", 9, False)
    new, vocab = extend_vocabulary(tmp_path, {"roll": roll, "summon": summon}, ["roll"])
    assert new == ["summon"] and vocab["summon"]["first_file"] == "b.md" and not vocab["summon"]["agent_acts"]
    doc = write_tools_doc(tmp_path, vocab, ["roll"])
    assert "`summon` | 1 | drops" in doc.read_text() and "- `[summon: imp]`" in doc.read_text()
    doc.write_text("# My own notes about tools\n")
    assert write_tools_doc(tmp_path, vocab, ["roll"]) is None
    assert doc.read_text() == "# My own notes about tools\n"


def test_troubleshooting_page_is_generated_from_the_code():
    from mlx_dm.docs import raised_errors, troubleshooting_markdown

    assert (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8") == troubleshooting_markdown(), \
        "regenerate it: python -m mlx_dm.docs"
    assert all(hint for _, _, hint, _ in raised_errors()), [e for e in raised_errors() if not e[2]]


def test_usage_page_lists_every_command_flag_and_setting():
    import dataclasses

    import typer

    from mlx_dm.cli import app
    from mlx_dm.config import Config
    from mlx_dm.docs import usage_markdown

    page = usage_markdown()
    assert (ROOT / "docs" / "usage.md").read_text(encoding="utf-8") == page, "regenerate it: python -m mlx_dm.docs"

    def commands(group, prefix):
        for name in group.list_commands(None):
            command = group.get_command(None, name)
            if hasattr(command, "list_commands"):
                yield from commands(command, f"{prefix} {name}")
            else:
                yield f"{prefix} {name}", command

    undocumented = []
    for name, command in commands(typer.main.get_command(app), "mlx-dm"):
        assert f"### `{name}`" in page
        for param in command.params:
            if not param.help:
                undocumented.append(f"{name} {param.name}")
            for option in getattr(param, "opts", []):
                assert f"`{option}`" in page or param.param_type_name == "argument", (name, option)
    assert not undocumented, f"options without help text: {undocumented}"
    for section in ("data", "model", "train", "validate"):
        for item in dataclasses.fields(getattr(Config(), section)):
            assert f"| `{item.name}` |" in page, (section, item.name)


def test_the_settings_template_init_writes_is_current_and_uncommented_gives_the_defaults(tmp_path):
    import dataclasses

    from mlx_dm.config import Config, load_config
    from mlx_dm.docs import settings_template

    text = settings_template()
    assert (ROOT / "scripts" / "mlx-dm.toml").read_text(encoding="utf-8") == text, "regenerate it: python -m mlx_dm.docs"
    assert load_config(_with_settings(tmp_path / "as-written", text)) == load_config(tmp_path / "as-written")
    # Every key uncommented: the file sets each one, to the value the defaults already have.
    keys = [f"# {item.name} = " for section in dataclasses.fields(Config) if section.default_factory is not dataclasses.MISSING
            for item in dataclasses.fields(section.default_factory())]
    lines = [line[2:] if any(line.startswith(key) for key in keys) else line for line in text.splitlines()]
    assert sum(line != original for line, original in zip(lines, text.splitlines())) == len(keys)
    uncommented = load_config(_with_settings(tmp_path / "uncommented", "\n".join(lines)))
    defaults = Config(project_dir=uncommented.project_dir)
    for section in ("data", "model", "train", "validate"):
        for item in dataclasses.fields(getattr(defaults, section)):
            got, want = getattr(getattr(uncommented, section), item.name), getattr(getattr(defaults, section), item.name)
            if isinstance(want, dict):
                assert got == pytest.approx(want, rel=1e-3), (section, item.name)
            else:
                assert got == want, (section, item.name)


def _with_settings(folder, text):
    folder.mkdir(parents=True)
    (folder / "mlx-dm.toml").write_text(text, encoding="utf-8")
    return folder


def test_the_tools_in_the_prompt_are_what_training_validation_and_the_app_see(write_md, tmp_path):
    """data.tools_in_prompt: the system text ends with the tool list in the dataset, in every case
    validation scores, in the playtest and in integration.json; off, nothing changes."""
    from mlx_dm.app_config import integration
    from mlx_dm.config import load_config
    from mlx_dm.data.profiles import TOOLS_HEADER, tools_prompt
    from mlx_dm.evaluate.cases import independent_cases
    from mlx_dm.pipeline.data import build
    from mlx_dm.pipeline.project import Project

    for i in range(4):
        write_md(f"ai-training/s{i}.md", scenario_text(world=f"World {i}"))
    (tmp_path / "mlx-dm.toml").write_text('[data]\ninclude_starter = "never"\n')
    off = build(load_config(tmp_path))
    (tmp_path / "mlx-dm.toml").write_text('[data]\ninclude_starter = "never"\ntools_in_prompt = true\n')
    config = load_config(tmp_path)
    on = build(config)
    tools = Project(config).tools_prompt
    assert tools == tools_prompt(config.data.agent_tools, True) and tools.startswith(TOOLS_HEADER)
    assert "- transition (the party moves to a new scene): [transition: night_camp]" in tools
    assert on.dataset.summary.fingerprint != off.dataset.summary.fingerprint  # a retrain, not "nothing changed"
    record = json.loads((on.path / "train.jsonl").read_text().splitlines()[0])
    assert record["context"].endswith(tools) and record["messages"][0]["content"].startswith(record["context"])
    case = independent_cases(tools)[0]
    assert f"{tools}\n\n" in case.messages[0]["content"] and tools in case.prompt
    assert not any(TOOLS_HEADER in c.prompt for c in independent_cases())

    class Placed:
        name, file_name, version, quant, sha256, n_ctx, mmproj_path = "m", "m.gguf", "v1", "Q4_K_M", "0", 2048, None

    assert integration(Placed(), config.data.agent_tools, tools)["system_prompt"].endswith("\n\n" + tools)
    assert TOOLS_HEADER not in integration(Placed(), config.data.agent_tools)["system_prompt"]
