"""The `mlx-dm` command: Typer only. Each command parses its flags, calls one pipeline function and
prints what it returns; the work lives in mlx_dm/pipeline/ and the stage packages.

The command runs in a worker process its parent watches (supervise.py), so a native crash is
reported with its stage; errors print as message and hint, without a traceback unless --debug.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from .. import __version__, supervise
from ..errors import MlxDmError
from . import bench, chat, data, doctor, models, playtest, train, validate  # noqa: F401 - each registers its commands
from .common import app, console, err_console, print_error, state

log = logging.getLogger("mlx_dm")


def _version(value: bool) -> None:
    if value:
        console.print(f"mlx-dm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    project: Path = typer.Option(Path("."), "--project", "-C", help="Project root (holds ai-training/, assets/, mlx-dm.toml); also accepted after the command."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state["debug"] = debug
    state["project"] = project
    supervise.mark_stage("startup", project=project.resolve(), command=" ".join(["mlx-dm", *sys.argv[1:]]))
    if os.environ.get("MLX_RANK", "0") not in ("", "0"):
        console.quiet = True  # one voice for an `mlx.launch` group: process 0's
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Entry point: the worker's parent when started by a user, the command itself in the worker."""
    if supervise.wanted():
        code, crash = supervise.supervise(sys.argv[1:])
        if crash is not None:
            print_error(crash)
        sys.exit(code)
    if supervise.in_worker():
        supervise.start_worker_side()
    try:
        app(prog_name="mlx-dm")  # standalone: click reports usage errors (bad flags) itself, with exit code 2
    except MlxDmError as exc:
        log.debug("failure", exc_info=True)
        print_error(exc)
        if state["debug"]:
            err_console.print_exception()
        sys.exit(exc.exit_code)
