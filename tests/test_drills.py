"""Drill scenes (mlx_dm/data/drills.py): valid scenarios, every skill asked for by the action that
needs it, training only, and no text shared with what mlx-dm's quality is measured on."""

from __future__ import annotations

from pathlib import Path

from mlx_dm.data.dataset import build_dataset, write_dataset
from mlx_dm.data.discover import scan
from mlx_dm.data.drills import DRILL_PREFIX, SKILLS, drill_scenes
from mlx_dm.data.overlap import dm_sentences
from mlx_dm.data.scenario import DM, TOOLCALL, USER
from mlx_dm.data.starter import STARTER_DIR
from mlx_dm.data.toolcalls import find_calls, find_look_alikes

from .conftest import ROOT

REAL_APP = ROOT.parent / "shared" / "real-app" / "ai-training"


def test_drills_are_seeded_scenarios_whose_calls_the_app_reads():
    scenes = drill_scenes(60, seed=3)
    assert len(scenes) == 60 and [s.path for s in scenes] == [s.path for s in drill_scenes(60, seed=3)]
    assert [s.turns for s in scenes] == [s.turns for s in drill_scenes(60, seed=3)]
    assert scenes[0].turns != drill_scenes(1, seed=4)[0].turns
    skills_called = set()
    for scene in scenes:
        assert scene.path.startswith(DRILL_PREFIX) and len(scene.party) >= 2
        kinds = [turn.kind for turn in scene.turns]
        assert kinds[0] == USER and kinds[-1] == DM
        for before, turn in zip(scene.turns, scene.turns[1:]):
            if turn.kind == TOOLCALL:  # a result answers a call, and the DM then narrates
                assert before.kind == DM and find_calls(before.text, 1)
            assert not (turn.kind == DM and before.kind == DM)
        for turn in scene.turns:
            assert not find_look_alikes(turn.text, 1)
            skills_called |= {c.arguments for c in find_calls(turn.text, 1) if c.name in ("roll", "skill_check")}
    assert set(SKILLS) <= skills_called  # every skill drilled
    no_call = [t for s in scenes for t in s.turns if t.kind == DM and not find_calls(t.text, 1)]
    assert len(no_call) >= 60 * 2  # narration after results, talk and travel


def test_drills_train_only_and_change_the_fingerprint(tmp_path):
    plain = build_dataset(STARTER_DIR)
    drilled = build_dataset(STARTER_DIR, drills=12)
    assert drilled.summary.drills == 12 and len(drilled.drills) == 12 and plain.summary.drills == 0
    assert drilled.summary.fingerprint != plain.summary.fingerprint
    assert [s.path for s in drilled.valid] == [s.path for s in plain.valid]
    out = write_dataset(drilled, tmp_path / "dataset")
    train = (out / "train.jsonl").read_text()
    assert train.count(f'"path": "{DRILL_PREFIX}') == 12 and DRILL_PREFIX not in (out / "valid.jsonl").read_text()
    assert "12 generated drill scenes" in (out / "report.md").read_text()


def test_drills_share_no_dm_sentence_with_the_held_out_sources():
    """The independent set and the game's real files measure text the model never saw."""
    from mlx_dm.evaluate.cases import INDEPENDENT_DIR

    drills = set().union(*(dm_sentences(s) for s in drill_scenes(200, seed=0)))
    held_out = [INDEPENDENT_DIR, STARTER_DIR] + ([REAL_APP] if REAL_APP.is_dir() else [])
    for folder in held_out:
        sentences = set().union(*(dm_sentences(s.scenario) for s in scan(Path(folder)).accepted))
        assert not drills & sentences, (folder, sorted(drills & sentences)[:3])
