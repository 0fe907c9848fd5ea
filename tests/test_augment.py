"""Renamed training copies (mlx_dm/data/augment.py): the same turns, calls and results, other names."""

from __future__ import annotations

import json
import re

from mlx_dm.data.augment import NAMES
from mlx_dm.data.dataset import build_dataset, write_dataset
from mlx_dm.data.discover import scan
from mlx_dm.data.render import render_scenario
from mlx_dm.evaluate.cases import INDEPENDENT_DIR
from mlx_dm.pipeline.plan import incremental_dataset
from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT

HEALING = """# SYSTEM

Role: Dungeon Master
World: Forgotten Realms
Location: Roadside camp
Party:

- Lady Imogen (Human Cleric, Level 2, HP: 17/17, AC: 16)
- Brakka (Dwarf Fighter, Level 2, HP: 4/20, AC: 18)

# USER

Imogen kneels beside Brakka and casts Cure Wounds.

# DM

Warm light spills from Lady Imogen's hands into the dwarf's wounds. [heal: Brakka, 1d8+3]

# TOOLCALL

heal: Brakka regains 1d8+3 = 5+3 = 8 hit points

# DM

Brakka is back to 12 hit points and grins at Imogen.
"""


def test_a_copy_renames_the_party_everywhere_and_keeps_every_turn_and_call(tmp_path):
    (tmp_path / "camp.md").write_text(HEALING)
    dataset = build_dataset(tmp_path, validation_fraction=0.0, augment_copies=2)
    (original,) = dataset.train
    assert [c.path for c in dataset.augmented] == ["camp.md#renamed-1", "camp.md#renamed-2"]
    for copy in dataset.augmented:
        text = render_scenario(copy).text
        assert not re.search(r"\b(Imogen|Brakka)\b", text), text
        new = [member.name for member in copy.party]
        assert len(new) == 2 and set(new) <= set(NAMES)
        assert f"[heal: {new[1]}, 1d8+3]" in text and f"{new[1]} regains 1d8+3 = 5+3 = 8 hit points" in text
        assert f"light spills from {new[0]}'s hands" in text  # "Lady Imogen" as one name
        assert [(t.kind, [c.name for c in t.calls]) for t in copy.turns] == \
            [(t.kind, [c.name for c in t.calls]) for t in original.turns]
        assert copy.category == original.category
    assert dataset.augmented[0].party[0].name != dataset.augmented[1].party[0].name or \
        dataset.augmented[0].party[1].name != dataset.augmented[1].party[1].name
    assert build_dataset(tmp_path, validation_fraction=0.0, augment_copies=2).augmented[0].party == dataset.augmented[0].party
    assert dataset.summary.fingerprint != build_dataset(tmp_path, validation_fraction=0.0).summary.fingerprint

    out = write_dataset(dataset, tmp_path / "dataset")
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["camp.md", "camp.md#renamed-1", "camp.md#renamed-2"]
    assert json.loads((out / "files.json").read_text()) == {"camp.md": original.content_sha256}
    # An incremental run on camp.md as a new file takes its copies with it.
    again = incremental_dataset(out, tmp_path / "incremental", ["camp.md"])
    assert len((again / "train.jsonl").read_text().splitlines()) == 3


def test_only_the_training_split_is_copied_and_the_names_are_fresh():
    dataset = build_dataset(STARTER_DIR, augment_copies=1)
    valid = {s.path for s in dataset.valid}
    assert dataset.augmented and not {c.path.split("#")[0] for c in dataset.augmented} & valid
    written = "\n".join(p.read_text() for folder in (STARTER_DIR, INDEPENDENT_DIR) for p in folder.rglob("*.md"))
    assert not [name for name in NAMES if re.search(rf"\b{name}\b", written)]
    assert scan(INDEPENDENT_DIR).accepted
