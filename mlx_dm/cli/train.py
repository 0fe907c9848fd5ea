"""`mlx-dm run` (the whole job), `mlx-dm train` and `mlx-dm export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import ConfigError
from ..model.hub import TINY_BASES
from ..pipeline.data import build
from ..pipeline.export import run_cactus_export, run_export
from ..pipeline.project import Project
from ..pipeline.run import RunOptions, run
from ..pipeline.settings import dev_validation
from ..pipeline.train import run_training
from ..pipeline.validate import validate_and_promote
from .common import PROJECT_OPTION, app, console, hardware, project_of, writes_project
from .reporter import RUN_HEADLINES, RichReporter

# Options shared by `train` and `run`; None means "from the profile, then mlx-dm.toml".
BASE_OPTION = typer.Option(None, "--base", help="Base model: a Hugging Face repo id, a local folder, 'tiny', 'tiny-vision' (with vision and audio towers), or 'gemma3-270m' (real weights, optional package).")
VISION_OPTION = typer.Option(False, "--vision", help="Also write the vision projector (mmproj) for CactusVLM; needs a base with its vision tower (same as model.vision in mlx-dm.toml).")
DEV_OPTION = typer.Option(False, "--dev", help="The built-in tiny offline Gemma 3n with a short schedule.")
EPOCHS_OPTION = typer.Option(None, "--epochs", min=1, help="Passes over the training split (train.epochs).")
MAX_STEPS_OPTION = typer.Option(None, "--max-steps", min=0, help="Stop after this many optimizer steps; 0: as many as the epochs need.")
BATCH_SIZE_OPTION = typer.Option(None, "--batch-size", min=1, help="Packed rows per step (default: the hardware profile).")
LEARNING_RATE_OPTION = typer.Option(None, "--learning-rate", min=0.0, help="Peak learning rate, after warmup and before the cosine decay.")
MAX_SEQ_LENGTH_OPTION = typer.Option(None, "--max-seq-length", min=32, help="Tokens per packed row; a longer scenario is split at user turns into windows that each restart from its context.")
LORA_RANK_OPTION = typer.Option(None, "--lora-rank", min=1, help="LoRA rank (alpha scales with it, train.lora_alpha).")
SEED_OPTION = typer.Option(None, "--seed", help="Seed for LoRA initialisation, data order and dropout.")
RESUME_OPTION = typer.Option(None, "--resume/--no-resume", help="Continue an unfinished run with the same config and data (default: when one exists).")
QUANT_OPTION = typer.Option(None, "--quant", help="GGUF type, forced (Q4_K_M, Q5_K_M, Q8_0, ...); default export.quant = auto: the smallest candidate within 2 F1 points of f16 on held-out cases.")
SIZE_BUDGET_OPTION = typer.Option(None, "--size-budget", min=0.0, help="Largest GGUF in GB (0: no limit; default export.size_budget_gb, 2.0); a K type over it gets a smaller per-tensor mix.")
IMATRIX_OPTION = typer.Option(None, "--imatrix/--no-imatrix", help="Quantise with an importance matrix of the training scenarios (default: export.imatrix, on).")


def _export_flags(quant, size_budget, imatrix) -> dict:
    return {"quant": quant, "size_budget_gb": size_budget, "imatrix": imatrix}


def _train_flags(epochs, max_steps, batch_size, learning_rate, max_seq_length, lora_rank, seed) -> dict:
    return {"epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "max_seq_length": max_seq_length, "lora_rank": lora_rank, "seed": seed}


@app.command("train")
@writes_project("train")
def train_command(
    base: Optional[str] = BASE_OPTION, dev: bool = DEV_OPTION, epochs: Optional[int] = EPOCHS_OPTION,
    max_steps: Optional[int] = MAX_STEPS_OPTION, batch_size: Optional[int] = BATCH_SIZE_OPTION,
    learning_rate: Optional[float] = LEARNING_RATE_OPTION, max_seq_length: Optional[int] = MAX_SEQ_LENGTH_OPTION,
    lora_rank: Optional[int] = LORA_RANK_OPTION, seed: Optional[int] = SEED_OPTION, resume: Optional[bool] = RESUME_OPTION,
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Build the dataset and train LoRA adapters on the base model."""
    where = project_of(project, dev, train=_train_flags(epochs, max_steps, batch_size, learning_rate, max_seq_length,
                                                        lora_rank, seed), model={"base_model": base})
    built = build(where.config)
    run_training(where.config, built.path, where.base(), resume, hardware(), RichReporter())


@app.command("export")
@writes_project("export")
def export_command(
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A run's adapters/ folder (default: the newest run)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model the adapter was trained on (default: from the run)."),
    quant: Optional[str] = QUANT_OPTION, size_budget: Optional[float] = SIZE_BUDGET_OPTION,
    imatrix: Optional[bool] = IMATRIX_OPTION,
    n_ctx: int = typer.Option(2048, "--n-ctx", help="Context length the app will use."),
    vision: bool = VISION_OPTION,
    target: str = typer.Option("gguf", "--target", help="gguf (llama.cpp: llama.rn, Cactus 0.2) or cactus (a Cactus 1.x bundle made by `cactus convert` of cactus-compute, installed apart)."),
    cactus_bits: int = typer.Option(4, "--cactus-bits", min=1, max=4, help="Bits of the Cactus bundle's weights (--target cactus)."),
    cactus_weights_only: bool = typer.Option(False, "--cactus-weights-only", help="Stop `cactus convert` after the weights (its graph step needs the Cactus engine library, which PyPI's package lacks)."),
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Fuse the adapter, convert with llama.cpp, quantise, check, and place the GGUF in assets/models (or, with --target cactus, a Cactus 1.x bundle)."""
    if target not in ("gguf", "cactus"):
        raise ConfigError(f"--target {target} is not a target", "use --target gguf (the default) or --target cactus")
    where = project_of(project, validate={"n_ctx": n_ctx}, model={"vision": vision or None},
                       export=_export_flags(quant, size_budget, imatrix))
    adapter_dir = adapter or where.latest_adapter()
    base_model = where.base_of_adapter(adapter_dir, base)
    config = where.config.override("the adapter's base", model={"base_model": base_model})
    where = Project(dev_validation(config) if base_model in TINY_BASES else config)
    # The export reads the dataset (the importance matrix, the held-out cases, the parity check):
    # built here, before the first expensive step, in a project that never built one.
    build(where.config)
    base_path, reporter = where.base(), RichReporter()
    if target == "cactus":
        bundle = run_cactus_export(where, base_path, adapter_dir, reporter, cactus_bits, n_ctx, cactus_weights_only)
        console.print(f"[green]Cactus bundle[/green] {bundle.folder} (CQ{bundle.bits}); lines for cactus-react-native "
                      f"1.x: {bundle.snippet}; cactus convert's output: {bundle.log}. Not validated here: "
                      "mlx-dm has no Cactus runtime to load it with")
        return
    exported = run_export(where, base_path, adapter_dir, reporter, n_ctx)
    validate_and_promote(where, exported.placed, adapter_dir, base_path,
                         adapter_dir.parent / f"validation-{exported.placed.version}", reporter)


def _show_configuration(config) -> None:
    table = Table(title="configuration", show_header=False)
    table.add_row("base model", config.model.base_model)
    for key in ("epochs", "max_steps", "batch_size", "max_seq_length", "learning_rate", "lora_rank", "compute_dtype"):
        table.add_row(key, str(getattr(config.train, key)))
    console.print(table)


@app.command("run")
@writes_project("run")
def run_command(
    base: Optional[str] = BASE_OPTION, dev: bool = DEV_OPTION, epochs: Optional[int] = EPOCHS_OPTION,
    max_steps: Optional[int] = MAX_STEPS_OPTION, batch_size: Optional[int] = BATCH_SIZE_OPTION,
    learning_rate: Optional[float] = LEARNING_RATE_OPTION, max_seq_length: Optional[int] = MAX_SEQ_LENGTH_OPTION,
    lora_rank: Optional[int] = LORA_RANK_OPTION, seed: Optional[int] = SEED_OPTION, resume: Optional[bool] = RESUME_OPTION,
    quant: Optional[str] = QUANT_OPTION, size_budget: Optional[float] = SIZE_BUDGET_OPTION,
    imatrix: Optional[bool] = IMATRIX_OPTION,
    n_ctx: int = typer.Option(2048, "--n-ctx", help="Context length written to the Cactus config and used by validation."),
    validate_only: bool = typer.Option(False, "--validate-only", help="Validate the data and the current model; no training."),
    incremental: Optional[bool] = typer.Option(None, "--incremental/--full", help="Continue from the app's model on the new scenarios plus a replay of the old (default: when scenarios were only added)."),
    force: bool = typer.Option(False, "--force", help="Train even when no scenario changed since the app's model."),
    vision: bool = VISION_OPTION,
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """The whole job: scenarios → dataset → LoRA training → GGUF in assets/models with the Cactus config."""
    where = project_of(project, dev, train=_train_flags(epochs, max_steps, batch_size, learning_rate, max_seq_length,
                                                        lora_rank, seed),
                       model={"base_model": base, "vision": vision or None}, validate={"n_ctx": n_ctx},
                       export=_export_flags(quant, size_budget, imatrix))
    _show_configuration(where.config)
    run(where, RunOptions(resume, incremental, force, n_ctx, validate_only), hardware(), RichReporter(RUN_HEADLINES))

