"""`mlx-dm bench`: training against mlx_lm.lora, generation of MLX against the GGUFs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import bench
from ..errors import ConfigError, ValidationFailed
from ..evaluate.cases import suite_cases
from ..pipeline.data import build
from ..pipeline.project import Project
from ..runs import new_run
from .common import PROJECT_OPTION, app, console, hardware, project_of, say, writes_project


def _baseline(compare_to: Optional[Path]) -> dict | None:
    """An earlier bench.json, checked before minutes of measuring."""
    if compare_to is None:
        return None
    try:
        baseline = json.loads(Path(compare_to).read_text())
        baseline["measurements"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{compare_to} is not a bench report ({exc.__class__.__name__}: {exc})",
                          "pass the bench.json of an earlier `mlx-dm bench` run, e.g. benchmarks/baselines/bench-tiny.json")
    return baseline


def _show(measurements, ratios: dict, base_model: str, repetitions: int, out: Path) -> None:
    table = Table(title=f"bench ({base_model}, median ± half-range of {repetitions})")
    for column in ("what", "metric", "median", "±"):
        table.add_column(column)
    for m in measurements:
        for metric in m.values:
            table.add_row(m.name, metric, f"{m.median(metric):.3g}", f"{m.spread(metric):.2g}")
    console.print(table)
    for key, value in ratios.items():
        console.print(f"{key}: [bold]{value:.2f}[/bold]")
    say(f"report: {out / 'bench.md'}")


@app.command("bench")
@writes_project("bench")
def bench_command(
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the current model's base, else 'tiny')."),
    steps: int = typer.Option(6, "--steps", min=1, help="Optimizer steps per training run."),
    seq: int = typer.Option(256, "--seq", min=32, help="Training sequence length."),
    batch: int = typer.Option(2, "--batch", min=1, help="Rows per training step, the same for both trainers."),
    repetitions: int = typer.Option(3, "--repetitions", min=1, help="Measured runs (after a warm-up for generation)."),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, help="Generated tokens per generation run."),
    no_train: bool = typer.Option(False, "--no-train", help="Skip the training comparison."),
    compare_to: Optional[Path] = typer.Option(None, "--compare", help="An earlier bench.json: flag regressions."),
    tolerance: float = typer.Option(0.15, "--tolerance", help="Allowed regression, as a fraction, for --compare."),
    ratios_only: bool = typer.Option(False, "--ratios-only", help="With --compare: only the ratios measured within each run (for a baseline from another machine or a busy one)."),
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Training tokens/s and memory against mlx_lm.lora; generation speed of MLX against the GGUFs."""
    baseline = _baseline(compare_to)
    where = project_of(project)
    current = where.current_model()
    where = Project(where.config.override("--base", model={"base_model": base or (current["base_model"] if current else "tiny")}))
    base_model, base_path = where.config.model.base_model, where.base()
    built = build(where.config)
    measurements, ratios = [], {}
    if not no_train:
        measurements, ratios = bench.compare_training(base_model, base_path, where.scenarios_dir, built.path, steps, seq,
                                                      batch, repetitions, say)
    if current is not None:
        more, more_ratios = bench.compare_generation(where, current, base_path, suite_cases()[0].prompt, max_tokens,
                                                     repetitions, say)
        measurements, ratios = measurements + more, {**ratios, **more_ratios}
    else:
        say("[yellow]no model in assets/models: generation not measured (train and export first)[/yellow]")
    out = new_run(where.runs_dir, "bench").path
    report = bench.write_bench_report(measurements, ratios, out, {
        "base": base_model, "device": hardware().device, "machine": bench.machine_id(), "steps": steps, "seq": seq,
        "batch": batch, "repetitions": repetitions, "max_tokens": max_tokens})
    _show(measurements, ratios, base_model, repetitions, out)
    if baseline is not None:
        problems, notes = bench.compare(report, baseline, tolerance, ratios_only)
        for note in notes:
            console.print(f"[dim]{escape(note)}[/dim]")
        for problem in problems:
            console.print(f"[red]regression[/red] {problem}")
        if problems:
            raise ValidationFailed(f"{len(problems)} regressions beyond {tolerance:.0%} against {compare_to}",
                                   "see the lines above; rerun to rule out noise (--repetitions 5)")
        console.print(f"no regression beyond {tolerance:.0%} against {compare_to}")
