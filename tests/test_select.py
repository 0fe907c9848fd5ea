"""Shipping the adapter that calls best (train/select.py): the decision loss, the finalists, the rule,
the report, and a selection that resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_dm.train.select import Finalist, admit, choose

from .test_train import make_project, mlx_dm, run_dirs


def train_dev(project: Path, steps: int) -> tuple[Path, str]:
    """`mlx-dm train --dev` for `steps` steps; the run folder and what it printed."""
    # 512 tokens: the tiny tokenizer's short pieces put some held-out replies past 256.
    proc = mlx_dm(project, "train", "--dev", "--max-steps", str(steps), "--max-seq-length", "512")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    return run_dirs(project)[0], out


def same_adapter(a: Path, b: Path) -> bool:
    left, right = mx.load(str(a / "adapters.safetensors")), mx.load(str(b / "adapters.safetensors"))
    return left.keys() == right.keys() and all(np.array_equal(np.array(left[k]), np.array(right[k])) for k in left)


def scored(step: int, f1: float | None, false_calls: float | None, decision: float = 1.0) -> Finalist:
    return Finalist(step, 3.0, decision, {"tool_f1": f1, "false_call_rate": false_calls})


def test_finalists_are_the_best_by_decision_loss():
    kept: list[Finalist] = []
    for step, decision in ((2, 5.0), (4, 3.0), (6, 4.0), (8, 6.0), (10, 2.5)):
        kept, dropped = admit(kept, Finalist(step, None, decision), 3)
    assert [f.step for f in kept] == [10, 4, 6]
    assert [f.step for f in dropped] == [2]


def test_the_rule_caps_calls_where_none_belong_then_takes_the_best_f1():
    calls_everywhere = scored(2, 0.45, 0.9)
    quiet_and_right = scored(4, 0.30, 0.1)
    quiet_and_wrong = scored(6, 0.10, 0.0)
    chosen, reason = choose([calls_everywhere, quiet_and_right, quiet_and_wrong], 0.3)
    assert chosen is quiet_and_right and "highest tool-call F1 (0.300)" in reason
    # Nobody under the cap: the fewest calls where none belongs.
    chosen, reason = choose([scored(2, 0.4, 0.8), scored(4, 0.2, 0.5)], 0.3)
    assert chosen.step == 4 and "every finalist" in reason
    # A tie in F1 goes to the lower decision loss; an F1 over no calls counts as 0.
    chosen, _ = choose([scored(2, 0.3, 0.1, decision=2.0), scored(4, 0.3, 0.1, decision=1.5), scored(6, None, 0.0)], 0.3)
    assert chosen.step == 4


def test_one_pass_gives_the_dm_loss_and_the_decision_loss(tmp_path):
    """The decision tokens (each call and each reply's end) are a subset of the DM tokens, and the
    first number is the plain DM-token loss of before."""
    from mlx_dm.config import load_config
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model
    from mlx_dm.pipeline.data import build
    from mlx_dm.train import batching
    from mlx_dm.train.step import DECISION_MARK, evaluate_losses

    project = make_project(tmp_path, n_files=4)
    base = build_tiny_model(tmp_path / "tiny", project / "ai-training")
    dataset = build(load_config(project)).path
    loaded = load_model(base)
    marked = batching.pack(batching.load_examples(dataset / "train.jsonl", loaded.tokenizer, 512, DECISION_MARK), 512)
    plain = batching.pack(batching.load_examples(dataset / "train.jsonl", loaded.tokenizer, 512, 1.0), 512)
    dm_tokens = sum(int(np.count_nonzero(r.loss_mask)) for r in marked)
    decision_tokens = sum(int(np.count_nonzero(r.loss_mask >= DECISION_MARK)) for r in marked)
    assert 0 < decision_tokens < dm_tokens / 2
    assert dm_tokens == sum(int(np.count_nonzero(r.loss_mask)) for r in plain)
    dm_loss, decision_loss = evaluate_losses(loaded.model, marked, 512, 2)
    assert dm_loss == pytest.approx(evaluate_losses(loaded.model, plain, 512, 2)[0], rel=1e-4)
    assert decision_loss is not None and decision_loss != pytest.approx(dm_loss, rel=1e-3)


@pytest.mark.slow
def test_training_ships_the_finalist_its_calls_choose_and_a_killed_selection_resumes(tmp_path):
    project = make_project(tmp_path, extra_toml="finalists = 2\nselect_cases = 4\nselect_max_tokens = 8\n")
    run, out = train_dev(project, 8)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [m for m in metrics if m.get("val_loss") is not None]
    assert evaluated and all(m["decision_loss"] > 0 for m in evaluated)
    report = json.loads((run / "selection.json").read_text())
    assert len(report["finalists"]) == 2 and report["cases"] == 4
    assert all(f["scores"]["examples"] == 4 for f in report["finalists"])
    assert sorted(p.name for p in (run / "finalists").iterdir()) == [f"step-{f['step']:07d}" for f in report["finalists"]]
    best_two = sorted((m for m in evaluated), key=lambda m: (m["decision_loss"], m["step"]))[:2]
    assert sorted(f["step"] for f in report["finalists"]) == sorted(m["step"] for m in best_two)
    assert same_adapter(run / "finalists" / f"step-{report['chosen_step']:07d}", run / "adapters")
    assert "shipped by its calls" in out and (run / "selection.md").read_text().count("| yes |") == 1
    state = json.loads((run / "train_state.json").read_text())
    assert state["status"] == "finished" and state["result"]["selection"]["chosen_step"] == report["chosen_step"]

    # A kill during the selection: the run is left "selecting" with one finalist scored. The rerun
    # resumes it (no new run, no step trained again) and scores only the other finalist.
    first, second = (run / "finalists" / f"step-{f['step']:07d}" / "scores.json" for f in report["finalists"])
    second.unlink()
    os.utime(first, (1, 1))
    (run / "train_state.json").write_text(json.dumps({**state, "status": "selecting"}))
    (run / "selection.json").unlink()
    again, out = train_dev(project, 8)
    assert "resuming" in out and again == run and run_dirs(project) == [run]
    assert first.stat().st_mtime == 1 and second.exists()
    assert json.loads((run / "selection.json").read_text())["chosen_step"] == report["chosen_step"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(metrics)


def test_select_by_loss_keeps_todays_behaviour(tmp_path):
    run, _ = train_dev(make_project(tmp_path, extra_toml='select_by = "loss"\n'), 4)
    assert not (run / "finalists").exists() and not (run / "selection.json").exists()
    assert same_adapter(run / "best", run / "adapters")
    bad = make_project(tmp_path / "bad", extra_toml='select_by = "vibes"\n')
    proc = mlx_dm(bad, "train", "--dev", "--max-steps", "2")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "select_by" in out


def test_batched_scoring_replies_to_every_case_in_order(tmp_path):
    """evaluate_backend's batch path (MlxBackend.generate_batch, mlx-lm's batch_generate): one reply
    per case, in the cases' order, cut at the stop words."""
    from mlx_dm.evaluate.cases import independent_cases
    from mlx_dm.evaluate.validate import evaluate_backend
    from mlx_dm.inference import MlxBackend
    from mlx_dm.model.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "tiny", make_project(tmp_path, n_files=4) / "ai-training")
    backend = MlxBackend(base)
    cases = independent_cases()[:3]
    replies = backend.generate_batch([c.prompt for c in cases], [6, 6, 6])
    assert len(replies) == 3 and not any("<end_of_turn>" in r or "<eos>" in r for r in replies)
    batched = evaluate_backend("batched", backend, cases, {"roll"}, 6, batch=2)
    assert [s.case for s in batched.scores] == [c.case for c in cases]
