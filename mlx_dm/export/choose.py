"""Choose the quantisation by measurement, under the phone's size budget.

Size alone does not say what a type costs: on the real Gemma 3 270M, stock Q4_K_M lost 21 points of
tool-call F1 against the f16 file and Q5_K_M two. So every candidate type that fits the budget
(sized first by llama-quantize --dry-run, which writes nothing) is quantised with the export's
importance matrix, replies greedily in llama.cpp to the same held-out cases as the f16 file, and
is teacher-forced on the reference replies (agreement.py). Kept: the smallest file whose mean KL
divergence from f16 is at most `export.max_kl` and whose tool-call F1 is not significantly below
f16's (paired bootstrap over the cases, one-sided 90%: score.paired_f1_drop); when none is, the
file closest to f16 by KL.

Why KL first: greedy F1 on a few dozen cases holds a handful of right calls, so it ranked the types
by noise (on the real 270M, Q8_0 "lost" 5 points and Q6_K tied f16), while the teacher-forced KL
fell cleanly with every bit (Q3_K_M 0.145 ... Q8_0 0.004 nats per reply position). F1 stays as a
guard: a file the cases show to be worse is not kept, whatever its KL.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ExportError
from ..evaluate.cases import EvalCase
from ..evaluate.score import paired_f1_drop
from ..evaluate.validate import evaluate_backend
from ..inference import GgufBackend
from .agreement import agreement, f16_reference
from .gguf import estimated_size, quantize

# Applied to a K type whose stock mix is over the size budget (E2B: Q4_K_M is 3.31 GB stock).
# Chosen with benchmarks/export_size.py on the E2B-shaped model; the per-layer embeddings (2B of
# E2B's 4.5B parameters, Q6_K in the stock mix) carry most of the saving.
BUDGET_MIX = {"per_layer_token_embd": "Q2_K", r"^token_embd": "Q2_K", r"ffn_down": "Q4_K"}
K_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")

Progress = Callable[[str, int, int], None]
F1_NOISE = 0.02  # F1 differences below this are not worth a note against the KL ranking (coarse_f1_notes)


@dataclass
class Candidate:
    quant: str
    tensor_types: dict[str, str] | None
    size_bytes: int
    path: Path | None = None  # None: not written (over the budget)
    tool_f1: float | None = None
    identical: float | None = None  # share of replies equal to the f16 file's
    same_top1: float | None = None  # teacher-forced: share of reply positions with f16's first choice
    mean_kl: float | None = None  # teacher-forced: KL(f16 || file), nats per reply position
    f1_drop: float | None = None  # f16's tool-call F1 less this file's, on the same cases
    f1_drop_lower: float | None = None  # its one-sided 90% lower bound (paired bootstrap); > 0: significantly below
    seconds: float = 0.0

    @property
    def significantly_below(self) -> bool:
        return self.f1_drop_lower is not None and self.f1_drop_lower > 0

    @property
    def label(self) -> str:
        return self.quant + (" budget mix" if self.tensor_types else "")

    @property
    def file_stem(self) -> str:
        return self.quant + ("-budget" if self.tensor_types else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path) if self.path else None, "label": self.label}


@dataclass
class QuantChoice:
    reference_f1: float | None  # the f16 file's
    reference_seconds: float
    candidates: list[Candidate]
    chosen: Candidate
    reason: str
    cases: int
    max_kl: float
    imatrix: str | None  # the matrix every candidate was quantised with, or None
    forced_positions: int = 0  # reply positions of the teacher-forced comparison
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k not in ("candidates", "chosen")},
                "candidates": [c.to_dict() for c in self.candidates], "chosen": self.chosen.to_dict()}


def plan_candidates(f16: Path, types: list[str], budget: float | None) -> list[Candidate]:
    """Each type as llama-quantize would write it: stock, or with BUDGET_MIX when stock is over the
    budget (K types only); sized without writing. Those still over the budget are kept, unwritten,
    for the report's frontier."""
    planned = []
    for quant in dict.fromkeys(t.upper() for t in types):
        candidate = Candidate(quant, None, estimated_size(f16, quant))
        if budget and candidate.size_bytes > budget and quant in K_TYPES:
            candidate = Candidate(quant, dict(BUDGET_MIX), estimated_size(f16, quant, BUDGET_MIX))
        planned.append(candidate)
    return sorted(planned, key=lambda c: c.size_bytes)


def reply_to_cases(path: Path, cases: list[EvalCase], vocabulary: set[str], max_tokens: int, n_ctx: int,
                   label: str, progress: Progress | None):
    backend = GgufBackend(path, n_ctx=n_ctx)
    try:
        return evaluate_backend(label, backend, cases, vocabulary, max_tokens, progress)
    finally:
        backend.llm.close()


def pick(candidates: list[Candidate], max_kl: float) -> tuple[Candidate, str]:
    """The smallest scored candidate within `max_kl` of f16 and not significantly below it in F1,
    else the one closest to f16 by KL (then the smallest)."""
    scored = [c for c in candidates if c.path is not None]
    within = [c for c in scored if c.mean_kl is not None and c.mean_kl <= max_kl + 1e-12 and not c.significantly_below]
    if within:
        chosen = min(within, key=lambda c: c.size_bytes)
        return chosen, (f"the smallest file within KL {max_kl:g} of f16 ({chosen.mean_kl:.4f} nats per reply position) "
                        f"whose tool-call F1 is not significantly below f16's ({_drop_text(chosen)})")
    chosen = min(scored, key=lambda c: (c.mean_kl if c.mean_kl is not None else float("inf"), c.size_bytes))
    return chosen, (f"no file was within KL {max_kl:g} of f16 with an F1 not significantly below it: the closest "
                    f"by KL ({chosen.mean_kl if chosen.mean_kl is not None else float('nan'):.4f}; {_drop_text(chosen)})")


def _drop_text(candidate: Candidate) -> str:
    if candidate.f1_drop is None:
        return "no calls on either side"
    return (f"{candidate.f1_drop * 100:+.1f} points below f16, 90% one-sided bound "
            f"{candidate.f1_drop_lower * 100:+.1f}")


def choose_quant(f16: Path, work_dir: Path, stem: str, types: list[str], budget: float | None,
                 imatrix: Path | None, cases: list[EvalCase], vocabulary: set[str], max_kl: float,
                 max_tokens: int, n_ctx: int, make: Callable[[Path, str, Callable[[], Path]], Path],
                 progress: Progress | None = None) -> QuantChoice:
    """Quantise and score the candidates that fit; `make(path, what, build)` writes one file (the
    export's resumable step, so a resumed export reuses the files it already made)."""
    planned = plan_candidates(f16, types, budget)
    fitting = [c for c in planned if not budget or c.size_bytes <= budget]
    if not fitting:
        smallest = planned[0]
        raise_over_budget(smallest, budget)
    if not cases:  # nothing to measure on: the most faithful type that fits
        fitting = fitting[-1:]
    reference = reply_to_cases(f16, cases, vocabulary, max_tokens, n_ctx, "f16", progress)
    reference_f1 = reference.overall["tool_f1"] or 0.0
    forced = f16_reference(f16, cases)
    for candidate in fitting:
        target = work_dir / f"{stem}-{candidate.file_stem}.gguf"
        candidate.path = make(target, f"quantising to {candidate.label}" + (" with the importance matrix" if imatrix else ""),
                              lambda c=candidate, t=target: quantize(f16, t, c.quant, tensor_types=c.tensor_types,
                                                                     imatrix=imatrix))
        candidate.size_bytes = candidate.path.stat().st_size
        start = time.perf_counter()
        evaluation = reply_to_cases(candidate.path, cases, vocabulary, max_tokens, n_ctx, candidate.label, progress)
        candidate.seconds = time.perf_counter() - start
        candidate.tool_f1 = evaluation.overall["tool_f1"] or 0.0
        candidate.identical = sum(a.output == b.output for a, b in zip(evaluation.scores, reference.scores)) / max(len(cases), 1)
        followed = agreement(candidate.path, forced)
        candidate.same_top1, candidate.mean_kl = followed.same_top1, followed.mean_kl
        candidate.f1_drop, candidate.f1_drop_lower = paired_f1_drop(reference.scores, evaluation.scores) or (None, None)
    chosen, reason = pick(fitting, max_kl)
    if not cases:
        reason = "no held-out cases to measure on: the largest candidate that fits"
    return QuantChoice(reference_f1, reference.seconds, planned, chosen, reason, len(cases), max_kl,
                       str(imatrix) if imatrix else None, forced_positions=sum(p.shape[0] for p in forced.log_probs),
                       notes=coarse_f1_notes(fitting, F1_NOISE))


def coarse_f1_notes(scored: list[Candidate], max_drift: float) -> list[str]:
    """A warning when F1 ranks two files against what the teacher-forced KL says: a file closer to
    f16 scoring more than `max_drift` below a farther one is noise of too few cases, not quality."""
    pairs = [(a, b) for a in scored for b in scored if a.mean_kl is not None and b.mean_kl is not None
             and a.mean_kl < b.mean_kl and (a.tool_f1 or 0) < (b.tool_f1 or 0) - max_drift]
    if not pairs:
        return []
    closer, farther = pairs[0]
    return [f"tool-call F1 on these cases is coarser than the differences between the types: {closer.label}, "
            f"closer to f16 (KL {closer.mean_kl:.4f}), scored {(closer.tool_f1 or 0) * 100:.1f} against "
            f"{farther.label}'s {(farther.tool_f1 or 0) * 100:.1f} (KL {farther.mean_kl:.4f}); more held-out cases "
            "([export] choice_cases) make the choice firmer"]


def raise_over_budget(smallest: Candidate, budget: float) -> None:
    raise ExportError(f"no candidate fits the {budget / 1e9:.2f} GB budget: the smallest, {smallest.label}, "
                      f"is {smallest.size_bytes / 1e9:.2f} GB",
                      "use a smaller base (E2B rather than E4B), add a smaller type to [export] candidates, "
                      "or raise --size-budget")
