"""`mlx-dm validate`: score models on held-out scenarios, check the GGUF against the app, decide pass/fail.

Every backend gets the same prompts (rendered as in training) and greedy decoding, so scores are
reproducible and differences come from the weights alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from ..inference import Backend
from ..config import ValidateConfig
from ..errors import ValidationFailed
from ..files import atomic_write_json, atomic_write_text
from .cases import EvalCase, reply_budget, select_cases
from ..data.profiles import AgentProfile, builtin_profiles, profile_report
from .compat import CompatReport, agent_tool_report, check_compat
from .llama_node import NodeReport, check_in_llama_node
from .score import (HEURISTIC_METRICS, ExampleScore, aggregate, by_tool, f1_text, score_calls, score_context,
                    score_interaction)

CATEGORY_ORDER = ("combat", "exploration", "roleplay")
CHART_METRICS = (("tool_f1", "tool-call F1"), ("format_compliance", "format compliance"),
                 ("context_recall", "context recall"), ("respects_agency", "player agency"))


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
                     progress: Callable[[str, int, int], None] | None = None, max_reply_tokens: int = 0) -> BackendEval:
    """The backend's replies to every case (greedy in validation), scored; a case with a long
    reference reply gets up to `max_reply_tokens` (cases.reply_budget), the others `max_tokens`."""
    start = time.perf_counter()
    scores = []
    for index, case in enumerate(cases):
        output = generate(backend, case.prompt, reply_budget(case.reference, max_tokens, max_reply_tokens))
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
        drift = (mlx.overall["tool_f1"] or 0) - (overall["tool_f1"] or 0)
        checks.append(Check("GGUF tool-call F1 vs tuned MLX", drift <= settings.max_gguf_drift, drift,
                            settings.max_gguf_drift, "F1 points the GGUF loses"))
    previous = report.evaluation(PREVIOUS_GGUF)
    if previous is not None:
        regression = (previous.overall["tool_f1"] or 0) - (overall["tool_f1"] or 0)
        checks.append(Check("no regression vs the current model", regression <= settings.max_regression, regression,
                            settings.max_regression, "tool-call F1 points lost"))


def run_validation(gguf: Path, cases: list[EvalCase], vocabulary: set[str], agent_tools: list[str],
                   training_texts: list[str], settings: ValidateConfig,
                   mlx_backends: list[tuple[str, Callable[[], Backend]]] = (),
                   previous_gguf: Path | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   profiles: dict[str, AgentProfile] | None = None) -> ValidationReport:
    """Evaluate the GGUF (and the MLX models and the current GGUF, for comparison) and check compatibility."""
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
        evaluations.append(evaluate_backend(TUNED_GGUF, GgufBackend(gguf, n_ctx=settings.n_ctx), cases, vocabulary,
                                            settings.max_tokens, progress, settings.max_reply_tokens))
    for label, make in mlx_backends:
        evaluations.append(evaluate_backend(label, make(), cases, vocabulary, settings.max_tokens, progress,
                                            settings.max_reply_tokens))
    if previous_gguf is not None and Path(previous_gguf).is_file():
        previous_compat = check_compat(previous_gguf, conversations[:1], settings.n_ctx, settings.phone_ram_gb,
                                       settings.app_memory_fraction, speed_prompt)
        if previous_compat.loads:
            evaluations.append(evaluate_backend(PREVIOUS_GGUF, GgufBackend(previous_gguf, n_ctx=settings.n_ctx), cases,
                                                vocabulary, settings.max_tokens, progress, settings.max_reply_tokens))
    tuned = next((e for e in evaluations if e.label == TUNED_GGUF), None)
    agent = {"data": agent_tool_report(training_texts, agent_tools),
             "model": agent_tool_report([s.output for s in tuned.scores] if tuned else [], agent_tools)}
    profiles = profiles or builtin_profiles(agent_tools)
    agent["profiles"] = {"data": profile_report(training_texts, profiles),
                         "model": profile_report([s.output for s in tuned.scores] if tuned else [], profiles)}
    report = ValidationReport(str(gguf), len(cases), evaluations, compat, previous_compat, agent)
    if settings.llama_node and compat.loads:
        report.node = check_in_llama_node(gguf, conversations[:4], settings.n_ctx)
    decide(report, settings)
    return report


def _source_cell(values: dict) -> str:
    interval = values.get("tool_f1_interval")
    f1 = f1_text(values) + (f" [{interval[0]:.2f}-{interval[1]:.2f}]" if interval else "")
    return " / ".join([f1, _fmt(values.get("false_call_rate")), _fmt(values.get("tool_argument_accuracy"))])


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _tool_lines(evaluation: BackendEval) -> list[str]:
    lines = ["", f"### By tool ({evaluation.label}): the reference's calls, the model's, and those paired", "",
             "| tool | reference | model | paired |", "|---|---|---|---|"]
    for name, row in by_tool(evaluation.scores).items():
        lines.append(f"| `{name}` | {row['reference']} | {row['predicted']} | {row['matched']} |")
    return lines


def _score_lines(evaluations: list[BackendEval]) -> list[str]:
    """The scores tables: overall, by source (with the F1's interval) and by category."""
    metrics = ["tool_f1", "tool_precision", "tool_recall", "tool_argument_accuracy", "tool_exact_match",
               "call_detection", "false_call_rate", "syntax_valid", "format_compliance", "in_role",
               "context_recall", "no_new_names", "no_invented_speakers", "respects_agency", "addresses_actor"]
    if not evaluations:
        return []
    lines = ["", "## Scores", "", "| metric | " + " | ".join(e.label for e in evaluations) + " |",
              "|---|" + "---|" * len(evaluations)]
    for metric in metrics:
        mark = " (heuristic)" if metric in HEURISTIC_METRICS else ""
        lines.append(f"| {metric}{mark} | " + " | ".join(f1_text(e.overall) if metric == "tool_f1" else _fmt(e.overall[metric])
                                                         for e in evaluations) + " |")
    lines += ["", "### By source (tool-call F1 [90% interval] / calls where none belong / right arguments)", "",
              "The validation split shares no DM sentence with training; the independent set was written apart "
              "from the starter corpus; the suite checks one behaviour per case. The interval draws the source's "
              "scenarios again with replacement: two F1s whose intervals overlap widely are not told apart.", "",
              "| source | " + " | ".join(e.label for e in evaluations) + " |",
              "|---|" + "---|" * len(evaluations)]
    by_source = [e.by("source") for e in evaluations]
    for source in sorted({s.source for e in evaluations for s in e.scores}):
        cells = [_source_cell(scores.get(source, {})) for scores in by_source]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    lines += ["", "### By category (tool-call F1 / format compliance / context recall)", "",
              "| category | " + " | ".join(e.label for e in evaluations) + " |",
              "|---|" + "---|" * len(evaluations)]
    by_category = [e.by("category") for e in evaluations]
    for category in sorted({s.category for e in evaluations for s in e.scores}):
        cells = [" / ".join([f1_text(scores.get(category, {}))] + [_fmt(scores.get(category, {}).get(k))
                                                                    for k in ("format_compliance", "context_recall")])
                 for scores in by_category]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines += _tool_lines(evaluations[0])
    lines += ["", "Heuristic metrics are rules over names and phrases (reproducible, not judgements): "
              + ", ".join(HEURISTIC_METRICS) + ".", "", "![scores by category](scores.png)"]
    return lines


def markdown_report(report: ValidationReport) -> str:
    lines = [f"# Validation: {Path(report.gguf).name}", "",
             f"**{'PASSED' if report.passed else 'FAILED'}** on {report.cases} cases "
             "(every DM reply of the validation split, the built-in D&D suite and the independent set), greedy decoding.", ""]
    lines += ["## Checks", "", "| check | result | value | threshold | detail |", "|---|---|---|---|---|"]
    for check in report.checks:
        lines.append(f"| {check.name} | {'pass' if check.passed else '**FAIL**'} | {_fmt(check.value)} | "
                     f"{_fmt(check.threshold)} | {check.detail} |")
    lines += [""] + [f"- {note}" for note in report.notes]
    lines += _score_lines(report.evaluations)
    compat = report.compat
    memory = compat.memory or {}
    lines += ["", "## Cactus compatibility", "",
              f"- loads: {compat.loads}, architecture `{compat.architecture}`, EOS `{compat.eos_token}`",
              f"- chat template renders the training text: {compat.template_renders_training_text} {compat.template_mismatch}",
              f"- `<end_of_turn>` ends generation: {compat.end_of_turn_is_eog}; stop words for the app: "
              f"`{json.dumps(compat.stop_words)}`",
              f"- context: n_ctx {compat.n_ctx} (trained {compat.trained_context})"]
    if memory:
        lines.append(f"- memory at n_ctx {memory['n_ctx']}: file {memory['file_bytes'] / 1e6:.1f} MB + KV cache "
                     f"{memory['kv_cache_bytes'] / 1e6:.1f} MB + runtime buffers {memory['compute_buffer_bytes'] / 1e6:.1f} MB "
                     f"= {memory['total_bytes'] / 1e6:.1f} MB; budget {memory['budget_bytes'] / 1e6:.0f} MB "
                     f"({memory['phone_ram_gb']:g} GB phone)")
        fitting = [t["tier"] for t in memory.get("tiers", []) if t["fits"]]
        lines.append(f"- phone tiers it fits (estimated share of RAM an app may use): {'; '.join(fitting) or 'none'}")
    lines.append(f"- speed here: prompt {compat.prompt_tokens_per_second:.0f} tok/s, decode "
                 f"{compat.decode_tokens_per_second:.1f} tok/s")
    lines += _node_lines(report.node)
    if report.previous_compat:
        prev = report.previous_compat
        lines.append(f"- the current model {Path(prev.gguf).name}: prompt {prev.prompt_tokens_per_second:.0f} tok/s, "
                     f"decode {prev.decode_tokens_per_second:.1f} tok/s")
    lines += ["", "## Tool calls the app's agent reads", "",
              "Pattern `/\\[(\\w+):([^\\]]+)\\]/g`; names outside the agent's accepted list are dropped silently."]
    lines += _profile_lines(report.agent_tools.get("profiles", {}))
    lines += ["", "| source | tool | count | agent |", "|---|---|---|---|"]
    for source, agent in report.agent_tools.items():
        if source == "profiles":
            continue
        for name, entry in agent["tools"].items():
            lines.append(f"| {source} | `{name}` | {entry['count']} | {entry['agent']} |")
        if agent["unparseable"]:
            lines.append(f"| {source} | (unparseable) | {len(agent['unparseable'])} | cannot parse: "
                         + ", ".join(f"`{t}`" for t in agent["unparseable"][:5]) + " |")
    tuned = report.evaluation(TUNED_GGUF)
    if tuned:
        lines += ["", "## Sample replies (tuned GGUF)", ""]
        for score in tuned.scores[:6]:
            lines += [f"**{score.case}** ({score.category})", "", f"- reference: {score.reference[:300]}",
                      f"- model: {score.output[:300] or '(empty)'}", ""]
    return "\n".join(lines) + "\n"


def _profile_lines(profiles: dict) -> list[str]:
    if not profiles:
        return []
    lines = ["", "Each agent profile (data/profiles.py, `data.agent_profiles`) on the training data and on the model's replies:", "",
             "| profile | data: acts / drops / rejects | model: acts / drops / rejects | rejected or dropped, e.g. |",
             "|---|---|---|---|"]
    for name in profiles.get("data", {}):
        data, model = profiles["data"][name], profiles.get("model", {}).get(name, {})
        seen = model.get("examples", {}).get("rejects", []) + data["examples"]["rejects"] + data["examples"]["drops"]
        cell = lambda r: f"{r.get('acts', 0)} / {r.get('drops', 0)} / {r.get('rejects', 0)}"  # noqa: E731
        lines.append(f"| {name} | {cell(data)} | {cell(model)} | {', '.join(f'`{c}`' for c in seen[:4])} |")
    return lines


def _node_lines(node: NodeReport | None) -> list[str]:
    if node is None:
        return []
    if not node.ran:
        return [f"- llama.rn's engine (@fugood/llama.node): not checked ({node.skipped})"]
    lines = [f"- llama.rn's engine (@fugood/llama.node, the app's load options): loads {node.loaded}, renders the "
             f"training text {node.renders_training_text} {node.error or node.mismatch}"]
    for name, run in node.generations.items():
        calls = ", ".join(f"[{c['name']}: {c['arguments']}]" for c in run["calls"]) or "none"
        ended = ("end of sequence" if run["stopped_eos"] else f"stop word {run['stopped_word']!r}" if run["stopped_on_word"]
                 else "ran to the token limit")
        speed = f", {run['tokens_per_second']:.0f} tokens/s" if run.get("tokens_per_second") else ""
        lines.append(f"  - {name} stop words `{json.dumps(run['stop'])}`: {ended}; calls the app parses: {calls}{speed}")
    return lines


def plot_scores(report: ValidationReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = [c for c in CATEGORY_ORDER if any(s.category == c for e in report.evaluations for s in e.scores)]
    groups = categories + ["all"]
    fig, axes = plt.subplots(1, len(CHART_METRICS), figsize=(4 * len(CHART_METRICS), 3.6), sharey=True)
    width = 0.8 / max(1, len(report.evaluations))
    for axis, (metric, title) in zip(axes, CHART_METRICS):
        for index, evaluation in enumerate(report.evaluations):
            per_category = evaluation.by("category")
            values = [(per_category.get(g, {}).get(metric) if g != "all" else evaluation.overall[metric]) or 0.0
                      for g in groups]
            axis.bar([x + index * width for x in range(len(groups))], values, width, label=evaluation.label)
        axis.set_xticks([x + width * (len(report.evaluations) - 1) / 2 for x in range(len(groups))], groups, fontsize=8)
        axis.set_title(title + (" (heuristic)" if metric in HEURISTIC_METRICS else ""), fontsize=9)
        axis.set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{Path(report.gguf).name}: scores by category", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: ValidationReport, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "validation.json", report.to_dict())
    if report.evaluations:
        plot_scores(report, out_dir / "scores.png")
    atomic_write_text(out_dir / "validation.md", markdown_report(report))
    return out_dir / "validation.md"


def raise_if_failed(report: ValidationReport, report_path: Path) -> None:
    if report.passed:
        return
    failed = "; ".join(f"{c.name} ({_fmt(c.value)} vs {_fmt(c.threshold)})" if c.threshold is not None else c.name
                       for c in report.failed)
    raise ValidationFailed(f"the model failed validation: {failed}",
                           f"see {report_path}; train longer or on more scenarios, or change the thresholds in "
                           "mlx-dm.toml [validate]")
