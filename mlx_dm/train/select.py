"""Which adapter ships: the one that calls tools best on turns it never saw (train.select_by = "calls").

Why not the lowest validation loss: a DM reply is mostly narration (calls are ~6% of the starter
corpus's DM characters), so that loss says little about what the app acts on. Measured on the real
Gemma 3 270M (GPU notes, 2026-12-04): it was lowest inside the first epoch, and the adapters it
picked called a tool in 6% of the turns where none belongs in one run and 95% in another.

How, in two rounds:
1. At every evaluation the trainer measures the *decision loss* (step.evaluate_losses: the loss at
   each reference call's tokens and at each reply's closing token, where the reply opens a call or
   ends) beside the narration loss, and keeps the `train.finalists` best adapters by it under
   `finalists/step-N/`. Early stopping watches it too. A checkpoint saves the list, so a resumed run
   keeps its finalists.
2. When training ends, each finalist answers `train.select_cases` validation cases greedily through
   MLX (the full model, not the training one: its per-layer table holds only the data's ids) and
   is scored as validation scores it. The rule (`choose`): among the finalists whose calls where
   none belongs stay at or under `train.select_max_false_calls`, the highest tool-call F1; when none
   does, the fewest calls where none belongs; ties by decision loss. A finalist's scores are saved
   beside it, so a selection killed halfway redoes only the rest.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..config import Config
from ..files import atomic_write_json, atomic_write_text, write_dir_atomically
from .checkpoint import copy_adapter

FINALISTS_DIR = "finalists"
SCORES_FILE = "scores.json"
REPORT_NAME = "selection"  # selection.json and selection.md in the run folder


@dataclass
class Finalist:
    step: int
    val_loss: float | None
    decision_loss: float
    scores: dict | None = None  # tool_f1, false_call_rate, tool_argument_accuracy, reference/predicted calls, cases


def finalist_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / FINALISTS_DIR / f"step-{step:07d}"


def admit(finalists: list[Finalist], candidate: Finalist, keep: int) -> tuple[list[Finalist], list[Finalist]]:
    """The `keep` best by decision loss once the candidate is considered (earlier step first on a
    tie), and those that drop out."""
    ranked = sorted([*finalists, candidate], key=lambda f: (f.decision_loss, f.step))
    return ranked[:keep], ranked[keep:]


def _f1_text(finalist: Finalist) -> str:
    from ..evaluate.score import f1_text

    return f1_text(finalist.scores or {})


def _f1(finalist: Finalist) -> float:
    return (finalist.scores or {}).get("tool_f1") or 0.0


def _false_calls(finalist: Finalist) -> float:
    rate = (finalist.scores or {}).get("false_call_rate")
    return 1.0 if rate is None else rate


def choose(finalists: list[Finalist], max_false_calls: float) -> tuple[Finalist, str]:
    """The finalist that ships, and why in one sentence (the rule is the module docstring's)."""
    within = [f for f in finalists if _false_calls(f) <= max_false_calls + 1e-9]
    if within:
        chosen = min(within, key=lambda f: (-_f1(f), f.decision_loss, f.step))
        return chosen, (f"step {chosen.step}: the highest tool-call F1 ({_f1_text(chosen)}) among the {len(within)} of "
                        f"{len(finalists)} finalists whose calls where none belongs stay at or under "
                        f"{max_false_calls:.2f} ({_false_calls(chosen):.2f})")
    chosen = min(finalists, key=lambda f: (_false_calls(f), -_f1(f), f.decision_loss, f.step))
    return chosen, (f"step {chosen.step}: every finalist called where none belongs more than {max_false_calls:.2f} "
                    f"of the time; the fewest ({_false_calls(chosen):.2f}, F1 {_f1_text(chosen)})")


def score_finalists(finalists: list[Finalist], run_dir: Path, base_path: Path, dataset_dir: Path, config: Config,
                    progress: Callable[[str, int, int], None] | None = None) -> int:
    """Each finalist's generated calls on the validation split (scores saved beside its adapter);
    returns the number of cases. Finalists scored before (a resumed selection) are read back."""
    from ..evaluate.cases import call_vocabulary, select_cases, validation_cases
    from ..evaluate.validate import evaluate_backend
    from ..inference import MlxBackend, mlx_batch

    cases = select_cases(validation_cases(dataset_dir), config.train.select_cases)
    vocabulary = call_vocabulary(dataset_dir, config.data.agent_tools)
    backend = None
    for finalist in finalists:
        folder = finalist_dir(run_dir, finalist.step)
        if (folder / SCORES_FILE).exists():
            finalist.scores = json.loads((folder / SCORES_FILE).read_text())
            continue
        if backend is None:
            backend = MlxBackend(base_path, adapter=folder)
        else:  # the same LoRA layers: only the adapter weights change
            backend.loaded.model.load_weights(str(folder / "adapters.safetensors"), strict=False)
        label = f"finalist step {finalist.step}"
        evaluation = evaluate_backend(label, backend, cases, vocabulary, config.train.select_max_tokens,
                                      progress=progress, batch=mlx_batch())
        overall = evaluation.overall
        finalist.scores = {key: overall[key] for key in ("tool_f1", "false_call_rate", "tool_argument_accuracy",
                                                         "reference_calls", "predicted_calls", "examples")}
        finalist.scores["seconds"] = evaluation.seconds
        atomic_write_json(folder / SCORES_FILE, finalist.scores)
    return len(cases)


def ship(finalists: list[Finalist], run_dir: Path, adapter_dir: Path, config: Config, cases: int,
         seconds: float) -> dict:
    """Put the chosen finalist's adapter in `adapter_dir` (atomically) and write the report."""
    chosen, reason = choose(finalists, config.train.select_max_false_calls)
    source = finalist_dir(run_dir, chosen.step)
    write_dir_atomically(adapter_dir, lambda d: copy_adapter(source, d))
    by_loss = min((f for f in finalists if f.val_loss is not None), key=lambda f: f.val_loss, default=None)
    report = {"select_by": "calls", "chosen_step": chosen.step, "reason": reason, "cases": cases,
              "max_tokens": config.train.select_max_tokens, "max_false_calls": config.train.select_max_false_calls,
              "seconds": seconds, "lowest_val_loss_step": by_loss.step if by_loss else None,
              "finalists": [asdict(f) for f in sorted(finalists, key=lambda f: f.step)]}
    atomic_write_json(Path(run_dir) / f"{REPORT_NAME}.json", report)
    atomic_write_text(Path(run_dir) / f"{REPORT_NAME}.md", report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    def cell(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = ["# Adapter selection", "",
             f"Shipped: **{report['reason']}**.", "",
             f"Each finalist answered {report['cases']} validation cases greedily (up to {report['max_tokens']} "
             f"tokens) through MLX, in {report['seconds']:.0f} s in all. The decision loss is the validation loss at "
             "the tokens of each reference call and at each reply's end; the validation loss covers every DM token.",
             "", "| step | validation loss | decision loss | tool F1 | calls where none belong | right argument | shipped |",
             "|---|---|---|---|---|---|---|"]
    for f in report["finalists"]:
        scores = f["scores"] or {}
        lines.append(f"| {f['step']} | {cell(f['val_loss'])} | {cell(f['decision_loss'])} | {cell(scores.get('tool_f1'))} | "
                     f"{cell(scores.get('false_call_rate'))} | {cell(scores.get('tool_argument_accuracy'))} | "
                     f"{'yes' if f['step'] == report['chosen_step'] else ''} |")
    if report.get("lowest_val_loss_step") is not None:
        lines += ["", f"Of the finalists, step {report['lowest_val_loss_step']} had the lowest validation loss "
                      "(what `train.select_by = \"loss\"` would have shipped among them)."]
    return "\n".join(lines) + "\n"


def run_selection(finalists: list[Finalist], run_dir: Path, adapter_dir: Path, base_path: Path, dataset_dir: Path,
                  config: Config, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Score the finalists and ship the best (the trainer's last stage when select_by = "calls")."""
    start = time.perf_counter()
    cases = score_finalists(finalists, run_dir, base_path, dataset_dir, config, progress)
    return ship(finalists, run_dir, adapter_dir, config, cases, time.perf_counter() - start)
