"""`mlx-dm models list | show | promote | rollback`: the versions in assets/models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import ValidationFailed
from ..evaluate.score import f1_text
from ..registry import find_version, promote, rollback
from .common import PROJECT_OPTION, console, models_app, project_of, writes_project


@models_app.command("list")
def models_list(project: Optional[Path] = PROJECT_OPTION) -> None:
    """Every stored version, its status and scores; the app's current one is marked."""
    manifest = project_of(project).manifest()
    if not manifest["versions"]:
        console.print("no model versions yet: train first (`npm run train`)")
        return
    current = manifest["current"]["version"] if manifest["current"] else None
    table = Table(title="assets/models")
    for column in ("", "version", "status", "quant", "size", "tool F1", "created"):
        table.add_column(column, no_wrap=True)
    for entry in manifest["versions"]:
        scores = entry.get("scores") or {}
        table.add_row("*" if entry["version"] == current else "", entry["version"], entry.get("status", ""), entry["quant"],
                      f"{entry['size_bytes'] / 1e6:.1f} MB", f1_text(scores) if scores else "", entry["created"][:16])
    console.print(table)


@models_app.command("show")
def models_show(version: str = typer.Argument(..., help="e.g. v2"), project: Optional[Path] = PROJECT_OPTION) -> None:
    """One version's manifest entry (paths, sha256, data fingerprint, validation report)."""
    console.print_json(json.dumps(find_version(project_of(project).root, version)))


@models_app.command("promote")
@writes_project("models promote", computes=False)
def models_promote(version: str = typer.Argument(..., help="The version to put in the app, e.g. v2."),
                   force: bool = typer.Option(False, "--force", help="Promote a version that has not passed validation."),
                   project: Optional[Path] = PROJECT_OPTION) -> None:
    """Make a stored version the app's model (GGUF, manifest and Cactus config, each replaced atomically)."""
    root = project_of(project).root
    entry = find_version(root, version)
    if entry.get("status") not in ("validated", "promoted", "rolled back") and not force:
        raise ValidationFailed(f"{entry['version']} is '{entry.get('status')}', not validated",
                               f"run `mlx-dm validate --model {entry['gguf_path']}`, or pass --force")
    placed = promote(root, entry["version"])
    console.print(f"[green]{placed.version}[/green] is the app's model: {placed.gguf_path}")


@models_app.command("rollback")
@writes_project("models rollback", computes=False)
def models_rollback(project: Optional[Path] = PROJECT_OPTION) -> None:
    """Back to the version promoted before the current one."""
    placed = rollback(project_of(project).root)
    console.print(f"[green]rolled back[/green] to {placed.version}: {placed.gguf_path}")

