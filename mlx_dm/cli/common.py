"""What every command shares: the Typer apps, the consoles, the project and settings of a call,
the writer lock, and the options written once."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .. import cpu_blas
from ..config import Config
from ..errors import MlxDmError
from ..hardware import Hardware, detect
from ..files import sweep_stale
from ..lock import project_lock
from ..registry import models_dir_of
from ..pipeline.project import Project
from ..pipeline.settings import resolve_settings

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn D&D scenario transcripts into an on-device Dungeon Master model (Gemma 3n, MLX, GGUF).")
data_app = typer.Typer(no_args_is_help=True, help="Scan, validate and build the scenario dataset.")
app.add_typer(data_app, name="data")
models_app = typer.Typer(no_args_is_help=True, help="Model versions in assets/models: list, show, promote, rollback.")
app.add_typer(models_app, name="models")

state = {"debug": False, "project": Path(".")}

# Accepted after the command too (`mlx-dm run --project ../game`); there it wins over the global one.
PROJECT_OPTION = typer.Option(None, "--project", "-C", help="Project root (holds ai-training/, assets/, mlx-dm.toml).")
SCENARIOS_OPTION = typer.Option(None, "--scenarios", help="Scenario folder (default: data.scenarios_dir, ai-training/).")


def project_dir(project: Optional[Path] = None) -> Path:
    return Path(project) if project is not None else Path(state["project"])


@functools.lru_cache(maxsize=1)
def hardware() -> Hardware:
    """This machine, detected once per command (settings and the stages both ask)."""
    return detect()


def settings(project: Optional[Path] = None, dev: bool = False, **flags: dict) -> Config:
    """This call's settings: profile < mlx-dm.toml < flags < the dev profile (pipeline/settings.py)."""
    return resolve_settings(project_dir(project), hardware(), dev, **flags)


def project_of(project: Optional[Path] = None, dev: bool = False, **flags: dict) -> Project:
    return Project(settings(project, dev, **flags))


def writes_project(command: str, computes: bool = True):
    """Run the command under the project's writer lock (lock.py): one writer per project at a time.

    A command that `computes` (trains, scores, benchmarks) first says when MLX runs on a CPU with
    the reference BLAS (cpu_blas.py). The processes an `mlx.launch` group starts beside process 0
    write nothing and take no lock."""
    def decorate(func):
        @functools.wraps(func)
        def locked(*args, **kwargs):
            if os.environ.get("MLX_RANK", "0") not in ("", "0"):
                return func(*args, **kwargs)
            if computes:
                cpu_blas.warn_if_slow(lambda text: err_console.print(f"[yellow]{escape(text)}[/yellow]"))
            root = project_dir(kwargs.get("project")).resolve()
            with project_lock(root, f"mlx-dm {command}"):
                _sweep(root)
                return func(*args, **kwargs)
        return locked
    return decorate


def _sweep(root: Path) -> None:
    """Half-written files of an earlier, killed writer of this project (files.sweep_stale), removed
    while this command holds the lock: say what went."""
    config = settings(root)
    folders = [models_dir_of(root), config.path(config.runs_dir), config.path(config.data.dataset_dir),
               root / ".mlx-dm" / "models"]
    removed = sweep_stale(folders)
    if removed:
        shown = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in removed[:5]]
        say(f"removed {len(removed)} half-written file(s) an interrupted run left: {', '.join(shown)}"
            + (" ..." if len(removed) > 5 else ""))


def print_error(exc: MlxDmError) -> None:
    err_console.print(f"[bold red]{exc.kind}:[/bold red] {escape(exc.message)}")
    if exc.hint:
        err_console.print(f"[bold]hint:[/bold] {escape(exc.hint)}")


def say(text: str) -> None:
    """A line that must stay whole (paths, commands): never wrapped."""
    console.print(text, soft_wrap=True)
