"""`mlx-dm data scan | validate | stats | build`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..data.dataset import _promote_warnings
from ..data.discover import scan
from ..errors import DataError
from ..pipeline.data import build, read_dataset
from .common import PROJECT_OPTION, SCENARIOS_OPTION, console, data_app, settings, writes_project
from .reporter import show_dataset


def _scan(config, scenarios: Optional[Path]):
    root = Path(scenarios) if scenarios else config.path(config.data.scenarios_dir)
    return root, scan(root, config.data.max_file_bytes)


def print_problems(problems, limit: int = 200) -> None:
    for problem in problems[:limit]:
        colour = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{colour}]{escape(problem.location())}: {problem.severity}[/{colour}] "
                      f"{escape(problem.message)}\n    fix: {escape(problem.hint)}")
    if len(problems) > limit:
        console.print(f"... and {len(problems) - limit} more (see problems.json in the dataset folder)")


def print_summary(dataset) -> None:
    s = dataset.summary
    table = Table(title="Dataset")
    for column in ("files", "accepted", "not scenarios", "rejected", "duplicates", "warnings", "train", "balanced", "valid"):
        table.add_column(column, justify="right")
    table.add_row(*map(str, (s.files, s.accepted, len(s.skipped), len(s.rejected), len(s.duplicates), s.warnings,
                             s.train, s.train_balanced, s.valid)))
    console.print(table)
    cats = Table(title="Categories (train)")
    for column in ("category", "before", "after balancing"):
        cats.add_column(column)
    for category in ("combat", "roleplay", "exploration"):
        cats.add_row(category, str(s.categories_before.get(category, 0)), str(s.categories_after.get(category, 0)))
    console.print(cats)
    tools = Table(title="Tools")
    for column in ("tool", "calls", "app agent"):
        tools.add_column(column)
    for name, info in dataset.vocabulary.items():
        tools.add_row(name, str(info.count), "acts" if info.agent_acts else "[yellow]drops[/yellow]")
    console.print(tools)
    for path, reason in s.rejected.items():
        console.print(f"[red]rejected[/red] {escape(path)}: {escape(reason)}")


@data_app.command("scan")
def data_scan(scenarios: Optional[Path] = SCENARIOS_OPTION, project: Optional[Path] = PROJECT_OPTION) -> None:
    """List the scenario files found, in the order they are used."""
    root, result = _scan(settings(project), scenarios)
    table = Table(title=f"{root}")
    for column in ("file", "status", "turns", "calls"):
        table.add_column(column)
    for parsed in result.results:
        if parsed.scenario:
            table.add_row(parsed.path, "scenario", str(len(parsed.scenario.turns)), str(len(parsed.scenario.calls)))
        elif parsed.skipped_reason:
            table.add_row(parsed.path, f"[dim]skipped: {parsed.skipped_reason}[/dim]", "", "")
        else:
            table.add_row(parsed.path, f"[red]rejected: {escape(parsed.errors[0].message)}[/red]", "", "")
    console.print(table)
    console.print(f"{len(result.accepted)} scenarios, {len(result.skipped)} not scenarios, {len(result.rejected)} rejected")


@data_app.command("validate")
def data_validate(
    scenarios: Optional[Path] = SCENARIOS_OPTION,
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Check every scenario file; exits non-zero when a file is rejected."""
    config = settings(project, data={"strict": strict or None})
    root, result = _scan(config, scenarios)
    if config.data.strict:
        _promote_warnings(result)
    print_problems(result.problems)
    console.print(f"[bold]{len(result.accepted)} accepted[/bold], {len(result.rejected)} rejected, "
                  f"{len(result.skipped)} skipped (not scenarios), "
                  f"{sum(p.severity == 'warning' for p in result.problems)} warnings")
    if result.rejected:
        raise DataError(f"{len(result.rejected)} scenario file(s) rejected in {root}",
                        "fix the errors listed above; the other files are still usable")


@data_app.command("stats")
def data_stats(scenarios: Optional[Path] = SCENARIOS_OPTION, project: Optional[Path] = PROJECT_OPTION) -> None:
    """Counts of files, turns, categories and tools, without writing anything."""
    print_summary(read_dataset(settings(project), scenarios))


@data_app.command("build")
@writes_project("data build", computes=False)
def data_build(
    scenarios: Optional[Path] = SCENARIOS_OPTION,
    out: Optional[Path] = typer.Option(None, "--out", help="Dataset folder (default: data.dataset_dir)."),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the train/validation split."),
    validation_fraction: Optional[float] = typer.Option(None, "--validation-fraction", min=0.0, max=0.9, help="Share of scenarios (per category) held out for validation."),
    no_balance: bool = typer.Option(False, "--no-balance", help="Keep the category mix as it is."),
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Parse, validate, categorise, balance, split and render the scenarios into a dataset folder."""
    config = settings(project, data={"strict": strict or None, "seed": seed, "validation_fraction": validation_fraction,
                                     "dataset_dir": str(out) if out else None, "balance": False if no_balance else None})
    built = build(config, scenarios)
    show_dataset(built)
    print_problems(built.dataset.problems, limit=30)
    print_summary(built.dataset)
    console.print(f"[green]dataset written to {built.path}[/green] (fingerprint {built.dataset.summary.fingerprint[:12]})")
