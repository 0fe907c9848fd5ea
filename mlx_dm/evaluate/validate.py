"""`mlx-dm validate`: score models on held-out scenarios, check the GGUF against the app, decide pass/fail.

Every backend gets the same prompts (rendered as in training) and greedy decoding, so scores are
reproducible and differences come from the weights alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from ..inference import Backend, mlx_batch
from ..config import ValidateConfig
from ..errors import ValidationFailed
from .cases import EvalCase, reply_budget, select_cases
from ..data.profiles import AgentProfile, builtin_profiles, profile_report
from .compat import CompatReport, agent_tool_report, check_compat
from .llama_node import NodeReport, check_in_llama_node
from .score import (HEURISTIC_METRICS, ExampleScore, aggregate, by_tool, paired_f1_drop, score_calls, score_context,
                    score_interaction)



@dataclass
class BackendEval:
    label: str
    scores: list[ExampleScore]
    seconds: float

    @cached_property
    def overall(self) -> dict:
        """Computed once: the report reads it per metric, and each aggregate draws the F1's interval."""
        return aggregate(self.scores)

    def by(self, attribute: str) -> dict[str, dict]:
        groups: dict[str, list[ExampleScore]] = {}
        for score in self.scores:
            groups.setdefault(getattr(score, attribute), []).append(score)
        return {key: aggregate(value) for key, value in sorted(groups.items())}

    def to_dict(self) -> dict:
        return {"label": self.label, "seconds": self.seconds, "overall": self.overall,
                "by_category": self.by("category"), "by_source": self.by("source"), "by_tool": by_tool(self.scores),
                "examples": [score.to_dict() for score in self.scores]}


def generate(backend: Backend, prompt: str, max_tokens: int) -> str:
    return "".join(backend.stream(prompt, max_tokens)).strip()


def evaluate_backend(label: str, backend: Backend, cases: list[EvalCase], vocabulary: set[str], max_tokens: int,
                     progress: Callable[[str, int, int], None] | None = None, max_reply_tokens: int = 0,
                     batch: int = 1) -> BackendEval:
    """The backend's replies to every case (greedy in validation), scored; a case with a long
    reference reply gets up to `max_reply_tokens` (cases.reply_budget), the others `max_tokens`.
    `batch` > 1 decodes that many cases together where the backend can (MlxBackend.generate_batch)."""
    start = time.perf_counter()
    scores = []
    budgets = [reply_budget(case.reference, max_tokens, max_reply_tokens) for case in cases]
    outputs: dict[int, str] = {}
    for index, case in enumerate(cases):
        if index not in outputs and batch > 1 and hasattr(backend, "generate_batch"):
            chunk = range(index, min(index + batch, len(cases)))
            replies = backend.generate_batch([cases[i].prompt for i in chunk], [budgets[i] for i in chunk])
            outputs.update((i, reply.strip()) for i, reply in zip(chunk, replies))
        output = outputs.pop(index) if index in outputs else generate(backend, case.prompt, budgets[index])
        scores.append(ExampleScore(
            case.case, case.category, case.source, output, case.reference,
            score_calls(case.reference, output, vocabulary),
            score_context(case.prompt, case.reference, output, case.facts),
            score_interaction(output, case.last_user_message, case.facts)))
        if progress:
            progress(label, index + 1, len(cases))
    return BackendEval(label, scores, time.perf_counter() - start)


@dataclass
class Check:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str = ""


@dataclass
class ValidationReport:
    gguf: str
    cases: int
    evaluations: list[BackendEval]
    compat: CompatReport
    previous_compat: CompatReport | None
    agent_tools: dict  # "data" and "model" -> agent_tool_report
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    node: NodeReport | None = None  # llama.rn's engine (llama_node.py), when asked for

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def evaluation(self, label: str) -> BackendEval | None:
        return next((e for e in self.evaluations if e.label == label), None)

    def to_dict(self) -> dict:
        return {"gguf": self.gguf, "passed": self.passed, "cases": self.cases,
                "checks": [asdict(c) for c in self.checks], "notes": self.notes,
                "heuristic_metrics": list(HEURISTIC_METRICS),
                "compat": self.compat.to_dict(),
                "previous_compat": self.previous_compat.to_dict() if self.previous_compat else None,
                "agent_tools": self.agent_tools, "llama_node": self.node.to_dict() if self.node else None,
                "evaluations": [e.to_dict() for e in self.evaluations]}


TUNED_GGUF, TUNED_MLX, BASE_MLX, PREVIOUS_GGUF = "tuned GGUF", "tuned MLX", "base MLX", "current GGUF"


def decide(report: ValidationReport, settings: ValidateConfig) -> None:
    """Fill in the checks: compatibility always, quality thresholds when enabled."""
    checks = report.checks
    compat = report.compat
    checks.append(Check("GGUF loads in llama.cpp", compat.loads, None, None, "" if compat.loads else compat.problems[0]))
    checks.append(Check("chat template renders the training text", compat.template_renders_training_text, None, None,
                        compat.template_mismatch))
    checks.append(Check("<end_of_turn> ends a turn", compat.end_of_turn_is_eog, None, None))
    checks.append(Check("end-of-sequence token", compat.eos_token in ("<eos>", "<end_of_turn>"), None, None, compat.eos_token))
    checks.append(Check(f"context {settings.n_ctx}", compat.context_ok, compat.n_ctx, compat.trained_context))
    node = report.node
    if node is not None and node.ran:
        checks.append(Check("loads and renders in llama.rn's engine (llama.node)", node.ok, None, None,
                            node.error or node.mismatch))
    elif node is not None:
        report.notes.append(f"llama.rn's engine (@fugood/llama.node) not checked: {node.skipped}")
    memory = compat.memory
    if memory:
        checks.append(Check(f"fits a {settings.phone_ram_gb:g} GB phone", memory["fits"], memory["total_bytes"] / 1e9,
                            memory["budget_bytes"] / 1e9, "GB: file + KV cache + runtime buffers"))
    gguf = report.evaluation(TUNED_GGUF)
    if gguf is None:
        return
    overall = gguf.overall
    if not settings.quality_thresholds:
        report.notes.append("quality thresholds are off (dev profile: the tiny random model cannot learn the DM in "
                            "minutes); scores are reported, compatibility checks still apply")
        return
    checks.append(Check("tool-call F1", (overall["tool_f1"] or 0) >= settings.min_tool_f1, overall["tool_f1"],
                        settings.min_tool_f1))
    checks.append(Check("format compliance", (overall["format_compliance"] or 0) >= settings.min_format_compliance,
                        overall["format_compliance"], settings.min_format_compliance))
    checks.append(Check("stays in the DM role", (overall["in_role"] or 0) >= settings.min_in_role, overall["in_role"],
                        settings.min_in_role))
    mlx = report.evaluation(TUNED_MLX)
    if mlx is None and not settings.compare_mlx:
        report.notes.append("the tuned MLX model was not scored (validate.compare_mlx = false): no drift check of the GGUF")
    if mlx is not None:
        checks.append(_loss_check("GGUF tool-call F1 vs tuned MLX", mlx, gguf, settings.max_gguf_drift,
                                  "F1 points the GGUF loses"))
    previous = report.evaluation(PREVIOUS_GGUF)
    if previous is not None:
        checks.append(_loss_check("no regression vs the current model", previous, gguf, settings.max_regression,
                                  "tool-call F1 points lost"))


def _loss_check(name: str, before: BackendEval, after: BackendEval, allowed: float, unit: str) -> Check:
    """Fails only when `after` is significantly more than `allowed` below `before` on the same cases
    (the paired bootstrap's one-sided 90% bound, as the export's choice uses: score.paired_f1_drop),
    so a file the export kept is not refused here for the noise of a few dozen cases."""
    paired = paired_f1_drop(before.scores, after.scores)
    if paired is None:
        return Check(name, True, 0.0, allowed, f"{unit}; no calls on either side")
    drop, lower = paired
    return Check(name, lower <= allowed, drop, allowed, f"{unit} (90% one-sided lower bound {lower:+.3f})")


def run_validation(gguf: Path, cases: list[EvalCase], vocabulary: set[str], agent_tools: list[str],
                   training_texts: list[str], settings: ValidateConfig,
                   mlx_backends: list[tuple[str, Callable[[], Backend]]] = (),
                   previous_gguf: Path | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   profiles: dict[str, AgentProfile] | None = None, grammar: Path | None = None) -> ValidationReport:
    """Evaluate the GGUF (and the MLX models and the current GGUF, for comparison) and check compatibility.
    `grammar`: the app's tool grammar, which both GGUFs decode with (the MLX models stay unconstrained)."""
    from ..inference import GgufBackend

    cases = select_cases(cases, settings.max_cases)
    # The template check renders a few of the cases' own conversations.
    conversations = [case.messages for case in cases[:8]] or [[{"role": "user", "content": "I open the door."}]]
    speed_prompt = cases[0].prompt if cases else ""
    compat = check_compat(gguf, conversations, settings.n_ctx, settings.phone_ram_gb, settings.app_memory_fraction,
                          speed_prompt)
    previous_compat = None
    evaluations = []
    if compat.loads:
        evaluations.append(evaluate_backend(TUNED_GGUF, GgufBackend(gguf, n_ctx=settings.n_ctx, grammar=grammar), cases, vocabulary,
                                            settings.max_tokens, progress, settings.max_reply_tokens))
    for label, make in mlx_backends:
        evaluations.append(evaluate_backend(label, make(), cases, vocabulary, settings.max_tokens, progress,
                                            settings.max_reply_tokens, batch=mlx_batch()))
    if previous_gguf is not None and Path(previous_gguf).is_file():
        previous_compat = check_compat(previous_gguf, conversations[:1], settings.n_ctx, settings.phone_ram_gb,
                                       settings.app_memory_fraction, speed_prompt)
        if previous_compat.loads:
            evaluations.append(evaluate_backend(PREVIOUS_GGUF, GgufBackend(previous_gguf, n_ctx=settings.n_ctx, grammar=grammar), cases,
                                                vocabulary, settings.max_tokens, progress, settings.max_reply_tokens))
    tuned = next((e for e in evaluations if e.label == TUNED_GGUF), None)
    agent = {"data": agent_tool_report(training_texts, agent_tools),
             "model": agent_tool_report([s.output for s in tuned.scores] if tuned else [], agent_tools)}
    profiles = profiles or builtin_profiles(agent_tools)
    agent["profiles"] = {"data": profile_report(training_texts, profiles),
                         "model": profile_report([s.output for s in tuned.scores] if tuned else [], profiles)}
    report = ValidationReport(str(gguf), len(cases), evaluations, compat, previous_compat, agent)
    report.notes.append(f"the GGUFs decoded with the app's tool grammar ({Path(grammar).name})" if grammar else
                        "the GGUFs decoded without the app's tool grammar (validate.grammar off, or an agent with no tools)")
    if settings.llama_node and compat.loads:
        report.node = check_in_llama_node(gguf, conversations[:4], settings.n_ctx, grammar=grammar)
    decide(report, settings)
    return report


def fmt_value(value) -> str:
    """A score or threshold as the reports write it."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def raise_if_failed(report: ValidationReport, report_path: Path) -> None:
    if report.passed:
        return
    failed = "; ".join(f"{c.name} ({fmt_value(c.value)} vs {fmt_value(c.threshold)})" if c.threshold is not None else c.name
                       for c in report.failed)
    raise ValidationFailed(f"the model failed validation: {failed}",
                           f"see {report_path}; train longer or on more scenarios, or change the thresholds in "
                           "mlx-dm.toml [validate]")
