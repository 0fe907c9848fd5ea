"""All settings as dataclasses: hardware-profile defaults, then `mlx-dm.toml`, then flags."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .hardware import Hardware, recommend_profile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_BASE_MODEL = "google/gemma-3n-E2B-it"
TINY_MODEL = "tiny"
CONFIG_FILE = "mlx-dm.toml"

# The names the game's agent (local-dm-agent.ts) acts on; every other name it silently drops.
DEFAULT_AGENT_TOOLS = ("roll", "update", "damage", "heal", "status", "inventory", "skill_check")


@dataclass
class DataConfig:
    scenarios_dir: str = "ai-training"
    dataset_dir: str = ".mlx-dm/dataset"
    validation_fraction: float = 0.15
    seed: int = 0
    strict: bool = False
    balance: bool = True
    target_mix: dict[str, float] = field(
        default_factory=lambda: {"combat": 1 / 3, "roleplay": 1 / 3, "exploration": 1 / 3}
    )
    max_file_bytes: int = 1_000_000
    agent_tools: list[str] = field(default_factory=lambda: list(DEFAULT_AGENT_TOOLS))


@dataclass
class ModelConfig:
    base_model: str = DEFAULT_BASE_MODEL
    quantize_base: bool = False
    cache_dir: str = ".mlx-dm/models"
    keep_versions: int = 5  # stored model versions in assets/models/versions (the current and the previous always stay)


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 1
    max_seq_length: int = 1024
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_layers: int = -1
    lora_keys: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    grad_checkpoint: bool = False
    grad_accumulation: int = 1
    seed: int = 0
    steps_per_eval: int = 25
    steps_per_checkpoint: int = 25
    keep_checkpoints: int = 3
    patience: int = 3
    max_steps: int = 0  # 0: as many as the epochs need
    compute_dtype: str = "auto"  # auto: bfloat16 on a GPU, float32 on the CPU
    init_adapter: str = ""  # start from this adapter folder (incremental retraining)
    replay_fraction: float = 0.5  # incremental: share of the old scenarios trained again beside the new ones


@dataclass
class ValidateConfig:
    """`mlx-dm validate`: what is generated and the thresholds a model must meet to be used."""

    max_tokens: int = 96  # per generated DM reply
    max_cases: int = 0  # 0: every DM reply of the validation split plus the built-in suite
    n_ctx: int = 2048  # the context the app creates
    min_tool_f1: float = 0.6
    min_format_compliance: float = 0.9
    min_in_role: float = 0.9
    max_gguf_drift: float = 0.02  # tool-call F1 of the GGUF may trail the MLX model by this much
    max_regression: float = 0.02  # ... and the model the app uses now by this much
    phone_ram_gb: float = 6.0
    app_memory_fraction: float = 0.5  # of the phone's RAM an app can count on (iOS/Android kill beyond)
    compare_base: bool = True  # also score the base model, side by side
    quality_thresholds: bool = True  # off for the tiny dev model, which cannot learn the DM in minutes


@dataclass
class Config:
    project_dir: str = "."
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def path(self, relative: str) -> Path:
        return (Path(self.project_dir) / relative).resolve()


def _apply(section: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(
                f"unknown setting '{key}' in {where}",
                f"known settings there: {', '.join(sorted(known))}",
            )
        current = getattr(section, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"'{key}' in {where} must be a table", f"write it as [{name}] with key = value lines")
            _apply(current, value, f"{where} [{name}]")
            continue
        if current is not None and not isinstance(current, (dict, list)) and value is not None:
            expected = type(current)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(
                    f"'{key}' in {where} must be {expected.__name__}, got {value!r}",
                    f"write e.g. {name} = {current!r}",
                )
        setattr(section, name, value)


def load_config(
    project_dir: str | Path = ".",
    overrides: dict[str, dict[str, Any]] | None = None,
    hardware: Hardware | None = None,
) -> Config:
    """Defaults from the hardware profile, then `mlx-dm.toml`, then explicit overrides (flags)."""
    config = Config(project_dir=str(Path(project_dir).resolve()))
    if hardware is not None:
        profile = recommend_profile(hardware)
        config.train.batch_size = profile.batch_size
        config.train.max_seq_length = profile.max_seq_length
        config.train.grad_checkpoint = profile.grad_checkpoint
        config.model.quantize_base = profile.quantize_base
    toml_path = Path(project_dir) / CONFIG_FILE
    if toml_path.exists():
        try:
            values = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: not valid TOML ({exc})", "fix the line named above, or delete the file to use defaults") from exc
        _apply(config, values, str(toml_path))
    for section, values in (overrides or {}).items():
        target = config if section == "" else getattr(config, section)
        _apply(target, {k: v for k, v in values.items() if v is not None}, f"--{section} flags" if section else "flags")
    return config
