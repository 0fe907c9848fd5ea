"""`mlx-dm playtest`: whole games against a GGUF with the app's settings, outside a run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..evaluate.playtest_report import raise_if_playtest_failed
from ..pipeline.playtest import playtest_gguf
from ..pipeline.project import Project
from ..pipeline.settings import dev_validation
from ..runs import new_run
from .common import PROJECT_OPTION, app, project_of, writes_project
from .reporter import RichReporter


@app.command("playtest")
@writes_project("playtest")
def playtest_command(
    model: Optional[Path] = typer.Option(None, "--model", help="The GGUF to play (default: the current model in assets/models)."),
    sessions: Optional[int] = typer.Option(None, "--sessions", min=1, help="Games to play (playtest.sessions)."),
    turns: Optional[int] = typer.Option(None, "--turns", min=1, help="Player turns per game (playtest.turns)."),
    scripts: Optional[Path] = typer.Option(None, "--scripts", help="Replay the scenario files of this folder as scripts (playtest.scripts_dir; default: the built-in scripts)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sampling and the dice (playtest.seed)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Context length the app uses (playtest.n_ctx)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Agent profile that reads the calls (playtest.profile)."),
    grammar: Optional[bool] = typer.Option(None, "--grammar/--no-grammar", help="Decode with the app's tool grammar, as the phone does (validate.grammar; default on); --no-grammar to compare."),
    dev: bool = typer.Option(False, "--dev", help="Tiny dev model: report the games without thresholds."),
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Play scripted games against a GGUF as the app would (its context, sampling and stop words), the dice answering each call."""
    where = project_of(project, playtest={"sessions": sessions, "turns": turns, "seed": seed, "n_ctx": n_ctx,
                                          "profile": profile, "scripts_dir": str(scripts.resolve()) if scripts else None},
                       validate={"grammar": grammar})
    if dev:
        where = Project(dev_validation(where.config))
    model = where.gguf_file(model)
    report, path = playtest_gguf(where, model, new_run(where.runs_dir, "playtest").path, RichReporter())
    raise_if_playtest_failed(report, path)
