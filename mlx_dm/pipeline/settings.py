"""Settings resolved once: hardware profile < mlx-dm.toml < flags < the dev profile; and the
decisions that follow from the base model (memory savings, the model's name)."""

from __future__ import annotations

from pathlib import Path

from ..config import Config, explicit_settings, load_config
from ..hardware import Hardware, fits_without_savings
from ..model.hub import GEMMA3_270M, TINY_BASES

# The tiny model on a 2-core CPU in minutes: short rows, a capped number of steps.
DEV_CANDIDATES = ["Q4_K_M", "Q8_0"]
DEV_PROFILE = {"max_seq_length": 256, "max_steps": 24, "epochs": 1, "batch_size": 2, "learning_rate": 1e-3}


def resolve_settings(project_dir: Path, hardware: Hardware | None, dev: bool = False, **flags: dict) -> Config:
    """The settings of one command: `flags` per section (None: not given), the dev profile last."""
    config = load_config(project_dir, overrides=flags, hardware=hardware)
    return dev_profile(config, flags.get("train", {})) if dev else config


def dev_profile(config: Config, explicit_train: dict) -> Config:
    """The built-in tiny model with a short schedule; flags given on the command line still win.
    With model.vision, the tiny model with towers."""
    train = {name: value for name, value in DEV_PROFILE.items() if explicit_train.get(name) is None}
    train.update(steps_per_eval=min(config.train.steps_per_eval, 8),
                 steps_per_checkpoint=min(config.train.steps_per_checkpoint, 8), grad_checkpoint=False,
                 finalists=min(config.train.finalists, 2), eval_rows=min(config.train.eval_rows or 24, 24), select_cases=min(config.train.select_cases or 4, 4),
                 select_max_tokens=min(config.train.select_max_tokens, 8))
    config = config.override("the dev profile", train=train, model={
        "base_model": "tiny-vision" if config.model.vision else "tiny", "quantize_base": False},
        data={"starter_sample": config.data.starter_sample or 64})  # the route, not the corpus: 64 of its files
    return dev_validation(config)


def dev_validation(config: Config) -> Config:
    """Scores without quality thresholds on a short, balanced set of cases (MLX decodes the tiny
    model at ~15 tokens/s on 2 CPU cores; the GGUF at ~600), and a short quantisation choice: the
    tiny model's random weights make its scores noise, so two candidates show the route."""
    return config.override("the dev profile", validate={
        "quality_thresholds": False, "max_tokens": min(config.validate.max_tokens, 32),
        "max_reply_tokens": min(config.validate.max_reply_tokens, 32),
        "max_cases": config.validate.max_cases or 12},
        playtest={"thresholds": False, "turns": min(config.playtest.turns, 4),
                  "max_tokens": min(config.playtest.max_tokens, 48)},
        export={"imatrix_chunks": min(config.export.imatrix_chunks, 8), "choice_cases": min(config.export.choice_cases, 8),
                "choice_max_tokens": min(config.export.choice_max_tokens, 32), "candidates": DEV_CANDIDATES})


def settle_memory_savings(config: Config, base_path: Path, hardware: Hardware) -> Config:
    """Without the profile's 4-bit base and checkpointing for a base that fits without them.

    The hardware profile assumes Gemma 3n E2B; a small base needs neither saving, unless
    mlx-dm.toml asks for it."""
    if not (config.model.quantize_base or config.train.grad_checkpoint) or not fits_without_savings(hardware, base_path):
        return config
    chosen = explicit_settings(config.project_dir)
    return config.override(
        "memory settings for a small base",
        model={"quantize_base": None if "model.quantize_base" in chosen else False},
        train={"grad_checkpoint": None if "train.grad_checkpoint" in chosen else False})


def model_name(base_model: str) -> str:
    """The name the app's files carry: dm-<base>, e.g. dm-gemma-3n-e2b."""
    if base_model in TINY_BASES:
        return "dm-" + base_model.replace("tiny", "tiny-gemma3n")
    if base_model == GEMMA3_270M:
        return "dm-gemma3-270m"
    return "dm-" + base_model.split("/")[-1].lower().replace("-it", "").replace("_", "-")
