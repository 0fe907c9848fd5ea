"""The pipeline's reporter for a terminal: stage headlines, rich progress bars, result lines and
tables; and the stage breadcrumb a native-crash report names (supervise.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .. import supervise
from ..app_config import grammar_name, llama_rn_snippet
from ..data.dataset import starter_line
from ..evaluate.score import f1_text
from ..pipeline.reporter import Reporter
from .common import console, say

RUN_HEADLINES = {"data": "1/4 data", "train": "2/4 train", "export": "3/4 export", "validation": "4/4 validate"}


class RichReporter(Reporter):
    def __init__(self, headlines: dict[str, str] | None = None) -> None:
        self.headlines = headlines or {}
        self.seen: set[str] = set()
        self.bars: dict[str, tuple[Progress, dict[str, int]]] = {}

    def stage(self, name: str, text: str = "", run_dir: Path | None = None) -> None:
        where = {"run_dir": run_dir, "log": Path(run_dir) / "run.log"} if run_dir else {}
        supervise.mark_stage(name, text, **where)
        if name not in self.seen:
            self.seen.add(name)
            if name in self.headlines:
                say(f"[bold]{self.headlines[name]}[/bold]" + (f" {escape(text)}" if name == "train" else ""))
        if name == "export":  # its steps are few and long: each one shown
            say(f"[bold]export[/bold] {escape(text)}")

    def note(self, text: str) -> None:
        say(escape(text))

    def warn(self, text: str) -> None:
        say(f"[yellow]{escape(text)}[/yellow]")

    def progress(self, stage: str, label: str, done: int, total: int | None, status: str = "") -> None:
        if stage not in self.bars:
            columns = [TextColumn(f"[bold]{stage}[/bold] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
            if stage == "train":
                columns += [TextColumn("ETA"), TimeRemainingColumn()]
            bar = Progress(*columns, console=console)
            bar.start()
            self.bars[stage] = (bar, {})
        bar, tasks = self.bars[stage]
        if label not in tasks:
            tasks[label] = bar.add_task(label if stage != "train" else "", total=total, status=status)
        bar.update(tasks[label], completed=done, total=total, status=status)

    def finished(self, stage: str) -> None:
        if stage in self.bars:
            self.bars.pop(stage)[0].stop()

    def result(self, kind: str, value: Any) -> None:
        RESULTS[kind](value)


def show_dataset(built) -> None:
    for tool in built.new_tools:
        say(f"[yellow]new tool[/yellow] `{tool['name']}` (first in {tool['first_file']}:{tool['first_line']}, "
            f"{tool['count']} calls; the app's agent {'acts on' if tool['agent_acts'] else 'drops'} it)")
    s = built.dataset.summary
    say(f"{s.accepted} scenarios ({s.train} train, {s.valid} validation), {len(s.rejected)} rejected, "
        f"{s.warnings} warnings; report {built.path / 'report.md'}")
    if s.starter:
        say(escape(starter_line(s.starter)))
    for name, counts in built.profiles.items():
        refused = counts["examples"]["rejects"][:2] + counts["examples"]["drops"][:2]
        say(f"agent profile {name}: acts on {counts['acts']} calls, drops {counts['drops']}, rejects {counts['rejects']}"
            + (f" (e.g. {', '.join(escape(c) for c in refused)})" if refused else ""))
    if s.split_overlap.get("warning"):
        say(f"[yellow]warning[/yellow] {escape(s.split_overlap['warning'])}")


def show_plan(plan) -> None:
    if plan.changes is None:
        return
    say(f"data: {plan.changes.summary()} ({plan.version})")
    for label, paths in (("new", plan.changes.new), ("changed", plan.changes.changed), ("removed", plan.changes.removed)):
        for path in paths[:20]:
            say(f"  {label}: {escape(path)}")
    if plan.action == "nothing":
        say(f"[green]{plan.version} was trained on exactly these scenarios: nothing to do[/green] (--force trains again)")
    elif plan.action == "incremental":
        say(f"incremental: continuing from {plan.version}'s adapter on {plan.new} new scenarios + {plan.replayed} replayed")


def show_training(trained) -> None:
    result, config = trained.result, trained.config
    best = result.best_val_loss if result.best_val_loss is not None else "n/a"
    say(f"[green]adapter[/green] {result.adapter_dir}  (steps {result.steps}/{result.total_steps}, best val loss {best}, "
        f"{result.tokens_per_second:.0f} tok/s, peak {result.peak_memory_bytes / 2**20:.0f} MiB, "
        f"padding {result.padding_fraction:.1%}{', stopped early' if result.stopped_early else ''})")
    if result.per_layer_rows and result.per_layer_rows[0] < result.per_layer_rows[1]:
        kept, total = result.per_layer_rows
        say(f"per-layer embeddings: {kept:,} of {total:,} rows held in memory (the token ids of your data)")
    if result.micro_batch_size * result.grad_accumulation > 1:
        processes = f" × {result.processes} processes" if result.processes > 1 else ""
        probed = result.grad_accumulation > config.train.grad_accumulation  # only the probe raises it
        say(f"batch: {result.micro_batch_size} rows per pass × {result.grad_accumulation} accumulated"
            f"{processes}{' (auto_batch probed the memory)' if probed else ''}")
    if result.selection:
        say(f"shipped by its calls: {result.selection['reason']} ({result.selection['cases']} cases, "
            f"{result.selection['seconds']:.0f} s; {result.run_dir / 'selection.md'})")
    if result.grad_checkpoint and not config.train.grad_checkpoint:
        say("gradient checkpointing: on (one row did not fit the memory budget without it)")


def show_quant_choice(choice) -> None:
    """The candidates side by side: what each costs in size and in tool-call F1 against f16."""
    table = Table(title=f"quantisation: {choice.cases} held-out cases, f16 tool F1 {_cell(choice.reference_f1)}")
    for column in ("type", "MB", "tool F1", "same replies", "same top-1", "KL", "chosen"):
        table.add_column(column)
    for c in choice.candidates:
        scored = c.path is not None
        table.add_row(c.label, f"{c.size_bytes / 1e6:.1f}", _cell(c.tool_f1) if scored else "over budget",
                      _cell(c.identical) if scored else "", _cell(c.same_top1) if scored else "",
                      "" if c.mean_kl is None else f"{c.mean_kl:.4f}", "✓" if c is choice.chosen else "")
    console.print(table)
    for note in choice.notes:
        say(f"[yellow]note[/yellow] {escape(note)}")


def show_export(result) -> None:
    if result.choice:
        show_quant_choice(result.choice)
    for parity in result.parity:
        say(f"parity {Path(parity.gguf).name}: argmax agreement {parity.argmax_agreement:.3f}, "
            f"max logit diff {parity.max_logit_diff:.4f}, greedy equal {parity.greedy_equal}/{parity.greedy_total}")
    placed = result.placed
    say(f"stored {placed.version}: {placed.gguf_path} ({placed.size_bytes / 1e6:.1f} MB, {placed.quant}); "
        f"report: {Path(result.gguf).parent / 'export-report.md'}")


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value if value is not None else "")


def show_validation(outcome) -> None:
    report, path = outcome
    table = Table(title=f"validation of {Path(report.gguf).name}")
    for column in ("check", "result", "value", "threshold"):
        table.add_column(column)
    for check in report.checks:
        table.add_row(check.name, "[green]pass[/green]" if check.passed else "[red]FAIL[/red]", _cell(check.value),
                      _cell(check.threshold))
    console.print(table)
    for evaluation in report.evaluations:
        o = evaluation.overall
        recall = "n/a" if o["context_recall"] is None else round(o["context_recall"], 3)
        say(f"{evaluation.label}: tool F1 {f1_text(o)}, "
            f"format {o['format_compliance']:.3f}, context recall {recall} ({evaluation.seconds:.0f} s)")
        by_source = evaluation.by("source")
        say("  " + "; ".join(f"{source} F1 {f1_text(values)}" for source, values in sorted(by_source.items())))
    for note in report.notes:
        say(f"[yellow]note[/yellow] {escape(note)}")
    say(f"report: {path}")


def show_playtest(outcome) -> None:
    report, path = outcome
    s = report.summary
    table = Table(title=f"playtest of {report.model}: {s['games']} games, {s['replies']} DM replies")
    for column in ("check", "result", "value", "threshold"):
        table.add_column(column)
    for check in report.checks:
        verdict = "[green]pass[/green]" if check.passed else "[red]FAIL[/red]" if report.thresholds else "[yellow]no[/yellow]"
        table.add_row(check.name, verdict, _cell(check.value), _cell(check.threshold))
    console.print(table)
    say(f"calls {s['calls']} ({s['parsed']:.1%} read; {report.profile} acts on {s['acts']}, drops {s['drops']}, "
        f"rejects {s['rejects']}); {s['games_trimmed']} games trimmed to fit the context; "
        f"{s['seconds_per_reply']:.2f} s per reply, {s['tokens_per_second']:.1f} tokens/s")
    say(f"report: {path}")


def show_promotion(promoted) -> None:
    placed = promoted.placed
    pruned = f"; pruned {', '.join(promoted.pruned)}" if promoted.pruned else ""
    say(f"[green]model[/green] {placed.gguf_path} ({placed.size_bytes / 1e6:.1f} MB, {placed.quant}, "
        f"{placed.version}) is now the app's model{pruned}")
    say("[bold]llama.rn[/bold] (assets/models/llama-rn.ts; for cactus-react-native 0.2: cactus-config.ts, "
        "cactus-config.json; for the game's model screen: integration.json):")
    say(escape(llama_rn_snippet(placed)))  # exact lines, never wrapped
    say(f"tool grammar: assets/models/{grammar_name(placed)} (llama-rn.ts exports it as toolGrammar; "
        "pass it to completion as `grammar`)")


RESULTS = {"dataset": show_dataset, "plan": show_plan, "training": show_training, "export": show_export,
           "validation": show_validation, "playtest": show_playtest, "promotion": show_promotion}
