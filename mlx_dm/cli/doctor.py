"""`mlx-dm doctor` (this machine, and a llama.cpp load-and-generate in a child) and `mlx-dm tiny-model`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import supervise
from ..errors import EnvironmentProblem
from ..hardware import GIB, detect, recommend_profile
from ..llama.build import installed_build, rebuild_command
from ..llama.smoke import smoke_test
from ..model.tiny import TinySpec, build_tiny_model
from .common import PROJECT_OPTION, SCENARIOS_OPTION, app, console, settings


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Report this machine: OS, chip, the device MLX uses and why, memory, disk, versions, profile, llama.cpp."""
    supervise.mark_stage("doctor", "detecting the machine")
    hw = detect()
    profile = recommend_profile(hw)
    supervise.mark_stage("doctor", "llama.cpp load-and-generate check")
    smoke = smoke_test()
    build = installed_build()
    if json_out:
        console.print_json(json.dumps({"hardware": hw.to_dict(), "profile": profile.__dict__, "llama_cpp": {
            "passed": smoke.passed, "detail": smoke.detail, "build": build}}))
    else:
        table = Table(title="mlx-dm doctor", show_header=False)
        table.add_row("OS", f"{hw.os_name} {hw.os_version} ({hw.machine})")
        table.add_row("Chip", f"{hw.chip} ({hw.cpu_count} cores)")
        table.add_row("MLX device", f"[bold]{hw.device}[/bold] — {escape(hw.device_reason)}")
        mem_kind = "unified memory" if hw.unified_memory else "memory"
        table.add_row("CPU BLAS", escape(hw.cpu_blas))
        table.add_row("Memory", f"{hw.total_memory_bytes / GIB:.1f} GiB {mem_kind}, "
                      f"{hw.available_memory_bytes / GIB:.1f} GiB available")
        table.add_row("MLX memory limit", f"{hw.mlx_memory_limit_bytes / GIB:.1f} GiB (mx.get_memory_limit)")
        table.add_row("Free disk", f"{hw.free_disk_bytes / GIB:.1f} GiB")
        for name, version in hw.versions.items():
            table.add_row(name, version)
        table.add_row("Profile", f"[bold]{profile.name}[/bold]: batch {profile.batch_size}, sequence {profile.max_seq_length}, "
                      f"gradient checkpointing {'on' if profile.grad_checkpoint else 'off'}, "
                      f"4-bit base {'yes' if profile.quantize_base else 'no'} — {profile.reason}")
        table.add_row("llama.cpp build", escape(" ".join(build["cmake_args"])) if build else "not built by the bootstrap")
        table.add_row("llama.cpp check", ("[green]pass[/green]: " if smoke.passed else "[red]FAIL[/red]: ") + escape(smoke.detail))
        console.print(table)
    if not smoke.passed:
        raise EnvironmentProblem(f"llama.cpp failed its load-and-generate check: {smoke.detail}",
                                 f"rebuild it for this machine:\n  {rebuild_command()}")


@app.command("tiny-model")
def tiny_model(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write (default .mlx-dm/models/tiny-gemma3n)."),
    scenarios: Optional[Path] = SCENARIOS_OPTION,
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cached copy is up to date."),
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Build the offline tiny Gemma 3n (random weights, real architecture, real tokenizer)."""
    config = settings(project)
    target = out or config.path(".mlx-dm/models/tiny-gemma3n")
    path = build_tiny_model(target, scenarios or config.path(config.data.scenarios_dir), TinySpec(seed=seed), force=force)
    size = sum(p.stat().st_size for p in path.iterdir())
    console.print(f"[green]tiny Gemma 3n at {path}[/green] ({size / 1e6:.1f} MB)")
