"""The validation report: `validation.md` (scores, checks, compatibility, the agent profiles, llama.rn's
engine) and `validation.json`, and the scores chart, written from a ValidationReport (validate.py)."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_json, atomic_write_text
from .llama_node import NodeReport
from .score import HEURISTIC_METRICS, by_tool, f1_text
from .validate import TUNED_GGUF, BackendEval, ValidationReport, fmt_value

CATEGORY_ORDER = ("combat", "exploration", "roleplay")
CHART_METRICS = (("tool_f1", "tool-call F1"), ("format_compliance", "format compliance"),
                 ("context_recall", "context recall"), ("respects_agency", "player agency"))


def _source_cell(values: dict) -> str:
    interval = values.get("tool_f1_interval")
    f1 = f1_text(values) + (f" [{interval[0]:.2f}-{interval[1]:.2f}]" if interval else "")
    return " / ".join([f1, fmt_value(values.get("false_call_rate")), fmt_value(values.get("tool_argument_accuracy"))])


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
        lines.append(f"| {metric}{mark} | " + " | ".join(f1_text(e.overall) if metric == "tool_f1" else fmt_value(e.overall[metric])
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
        cells = [" / ".join([f1_text(scores.get(category, {}))] + [fmt_value(scores.get(category, {}).get(k))
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
        lines.append(f"| {check.name} | {'pass' if check.passed else '**FAIL**'} | {fmt_value(check.value)} | "
                     f"{fmt_value(check.threshold)} | {check.detail} |")
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
