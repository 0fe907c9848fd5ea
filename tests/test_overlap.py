"""The honest split: scenarios that share DM text stay on one side (mlx_dm/data/overlap.py)."""

from __future__ import annotations

import random

from mlx_dm.data.dataset import build_dataset, split
from mlx_dm.data.overlap import dm_sentences, split_overlap, text_groups
from mlx_dm.data.parse import parse_text
from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT

BLOCK = "The rope bridge sways as the ghoul slashes at its ropes."  # a block two files reuse


def scenario(path: str, category: str, dm: str):
    text = (f"# SYSTEM\nRole: Dungeon Master\nWorld: W\nLocation: {path}\n\n# USER\nI look around.\n\n# DM\n{dm}\n\n"
            "# USER\nI wait.\n\n# DM\nWhat do you do?\n")
    parsed = parse_text(text, path).scenario
    parsed.category = category
    return parsed


def test_linked_scenarios_share_a_side_and_validation_shares_no_sentence_with_training():
    own = [scenario(f"own-{i}.md", ("combat", "roleplay", "exploration")[i % 3],
                    f"Scene {i} opens with a sight nobody in the party has ever seen before.") for i in range(9)]
    linked = [scenario(f"block-{i}.md", "combat", f"{BLOCK} Then moment number {i} follows with its own detail here.")
              for i in range(4)]
    train, valid = split(own + linked, 0.3, seed=0)
    sides = {s.path: "valid" if s in valid else "train" for s in own + linked}
    assert len({sides[s.path] for s in linked}) == 1  # the four block files together
    assert valid and train
    assert not set().union(*(dm_sentences(s) for s in valid)) & set().union(*(dm_sentences(s) for s in train))
    groups = text_groups(own + linked)
    assert sorted(len(g) for g in groups) == [1] * 9 + [4]
    overlap = split_overlap(groups, train, valid, 4)
    assert overlap.shared_sentences == 0 and overlap.linked_scenarios == 4
    assert overlap.example[2] == "the rope bridge sways as the ghoul slashes at its ropes"
    # "What do you do?" is in every file: too short to link anything.


def test_a_corpus_of_one_recombined_block_falls_back_and_says_how_much_is_shared():
    files = [scenario(f"f{i}.md", "combat", f"{BLOCK} A different ending number {i} with enough words.") for i in range(8)]
    train, valid = split(files, 0.25, seed=0)
    assert len(valid) == 2 and len(train) == 6  # still a split, file by file
    overlap = split_overlap(text_groups(files), train, valid, 2)
    assert overlap.shared_sentences == 0.5  # the block sentence of each validation file is in training
    assert "50% of the validation split's DM sentences also occur in training" in overlap.warning


def test_the_starter_corpus_is_written_apart_so_every_scenario_is_its_own_group():
    dataset = build_dataset(STARTER_DIR)
    overlap = dataset.summary.split_overlap
    assert overlap["largest_group"] == 1 and overlap["linked_scenarios"] == 0  # no DM sentence in two files
    assert overlap["shared_sentences"] == 0 and overlap["warning"] is None
    assert dataset.summary.valid >= 5 and not dataset.problems  # mlx-dm's own files raise no warning either


def test_the_independent_set_covers_every_agent_tool_and_shares_no_text_with_the_starter_corpus():
    from mlx_dm.config import DEFAULT_AGENT_TOOLS
    from mlx_dm.data.discover import scan
    from mlx_dm.data.toolcalls import find_calls
    from mlx_dm.evaluate.cases import INDEPENDENT_DIR, independent_cases

    cases = independent_cases()
    assert len(cases) >= 60 and {case.source for case in cases} == {"independent"}
    called = [call.name for case in cases for call in find_calls(case.reference, 1)]
    assert set(DEFAULT_AGENT_TOOLS) <= set(called), set(DEFAULT_AGENT_TOOLS) - set(called)
    no_call = [case for case in cases if not find_calls(case.reference, 1)]
    assert len(no_call) >= 20  # narration after a result, dialogue, a player's choice left to the player
    assert {case.category for case in cases} == {"combat", "roleplay", "exploration"}
    independent = set().union(*(dm_sentences(s.scenario) for s in scan(INDEPENDENT_DIR).accepted))
    starter = set().union(*(dm_sentences(s.scenario) for s in scan(STARTER_DIR).accepted))
    assert not independent & starter


def test_no_starter_sentence_occurs_in_any_held_out_source():
    """The starter corpus trains; the suite, the playtest scripts, the independent set and the game's
    own files (when beside the checkout) measure. No DM sentence of six words or more crosses over."""
    from mlx_dm.data.discover import scan
    from mlx_dm.evaluate.cases import INDEPENDENT_DIR, SUITE_DIR

    starter = {}
    for s in scan(STARTER_DIR).accepted:
        for sentence in dm_sentences(s.scenario):
            starter.setdefault(sentence, s.path)
    held_out = [INDEPENDENT_DIR, SUITE_DIR, SUITE_DIR.parent / "playtests"]
    held_out += [p for p in (ROOT.parent / "shared" / "real-app" / "ai-training",
                             ROOT.parent / "shared" / "real-app-history") if p.is_dir()]
    for folder in held_out:
        for s in scan(folder).accepted:
            shared = {sentence: starter[sentence] for sentence in dm_sentences(s.scenario) if sentence in starter}
            assert not shared, f"{folder}/{s.path} shares DM text with the starter corpus: {shared}"
