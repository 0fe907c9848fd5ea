"""`mlx-dm validate`: score a GGUF and check it against the app, outside a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..evaluate.validate import raise_if_failed
from ..pipeline.data import build
from ..pipeline.project import Project
from ..pipeline.settings import dev_validation
from ..pipeline.validate import validate_gguf
from ..runs import new_run
from .common import PROJECT_OPTION, app, project_of, writes_project
from .reporter import RichReporter


@app.command("validate")
@writes_project("validate")
def validate_command(
    model: Optional[Path] = typer.Option(None, "--model", help="The GGUF to validate (default: the current model in assets/models)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="Its run's adapters/ folder, to score the MLX models beside it (default: from the manifest)."),
    max_cases: Optional[int] = typer.Option(None, "--max-cases", min=0, help="Score only this many cases (0: all)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Most tokens generated per DM reply, however long the reference (validate.max_tokens and max_reply_tokens)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Context length the app uses."),
    phone_ram_gb: Optional[float] = typer.Option(None, "--phone-ram-gb", help="RAM of the smallest phone to support."),
    no_base: bool = typer.Option(False, "--no-base", help="Do not score the base model."),
    no_mlx: bool = typer.Option(False, "--no-mlx", help="Score the GGUF only, not the tuned MLX model beside it (no drift check; validate.compare_mlx)."),
    cases: Optional[Path] = typer.Option(None, "--cases", help="Also score the scenario files of this folder, kept out of training, as a source of their own (validate.cases_dir)."),
    grammar: Optional[bool] = typer.Option(None, "--grammar/--no-grammar", help="Decode the GGUFs with the app's tool grammar, as the phone does (validate.grammar; default on); --no-grammar to compare."),
    dev: bool = typer.Option(False, "--dev", help="Tiny dev model: report scores without quality thresholds."),
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Score a GGUF on the validation split, the D&D suite, the independent set (and --cases DIR), and check it against the app."""
    where = project_of(project, validate={"max_cases": max_cases, "max_tokens": max_tokens,
                                          "max_reply_tokens": max_tokens, "n_ctx": n_ctx, "phone_ram_gb": phone_ram_gb,
                                          "compare_base": False if no_base else None,
                                          "compare_mlx": False if no_mlx else None, "grammar": grammar,
                                          "cases_dir": str(cases.resolve()) if cases else None})
    if dev:
        where = Project(dev_validation(where.config))
    build(where.config)
    model = where.gguf_file(model)
    if adapter is not None:
        adapter_dir, base_path = adapter, where.base(where.base_of_adapter(adapter))
    else:
        adapter_dir, base_path = where.run_of_model(where.entry_of_gguf(model))
    report, path = validate_gguf(where, model, adapter_dir, base_path, new_run(where.runs_dir, "validate").path,
                                 RichReporter(), where.previous_model(model))
    raise_if_failed(report, path)
