"""All settings as frozen dataclasses: hardware-profile defaults, then `mlx-dm.toml`, then flags.

Settings are resolved once (`load_config`) and not changed afterwards: a stage that needs other
values gets a new Config from `override`, checked like flags are, and every run's config.json
records what it ran with."""

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


@dataclass(frozen=True)
class DataConfig:
    scenarios_dir: str = "ai-training"  # where the scenario .md files are, searched at any depth
    dataset_dir: str = ".mlx-dm/dataset"  # the built dataset (train/valid JSONL, stats, report)
    validation_fraction: float = 0.15  # share of scenarios held out, stratified by category; at least one
    seed: int = 0  # seed of the split and of balancing
    strict: bool = False  # warnings reject a file too
    balance: bool = True  # up/down-sample the training split to target_mix
    target_mix: dict[str, float] = field(
        default_factory=lambda: {"combat": 1 / 3, "roleplay": 1 / 3, "exploration": 1 / 3}
    )  # category shares balancing aims at in the training split
    max_file_bytes: int = 1_000_000  # larger files are rejected as not a single scenario
    agent_tools: list[str] = field(default_factory=lambda: list(DEFAULT_AGENT_TOOLS))  # tool names the app's agent acts on
    agent_profiles: dict[str, dict] = field(default_factory=dict)  # parsers of your own beside the built-in three (data/profiles.py)
    tools_in_prompt: bool = False  # the system text ends with the tools, a line each (when, argument form); integration.json too
    augment_copies: int = 1  # copies of each training scenario with its party renamed throughout (data/augment.py); 0: none
    drill_scenes: int = 0  # generated drill scenes of which call each player action needs, training only (data/drills.py); 0: none, e.g. 40
    include_starter: str = "auto"  # mlx-dm's starter corpus joins the data: "auto" (below starter_below scenarios), "always", "never"
    starter_below: int = 30  # "auto" adds the starter corpus while the scenario folder has fewer scenarios than this
    starter_sample: int = 0  # that many starter files, spread over its folders (0: all); the dev profile takes 64


@dataclass(frozen=True)
class ModelConfig:
    base_model: str = DEFAULT_BASE_MODEL  # Hugging Face repo id, local folder, "tiny", "tiny-vision" or "gemma3-270m"
    quantize_base: bool = False  # train on a 4-bit copy of the base (QLoRA); the profile turns it on when memory is short
    cache_dir: str = ".mlx-dm/models"  # built and imported bases (the tiny model, gemma3-270m)
    vision: bool = False  # also export the vision projector (mmproj) for CactusVLM; needs a base with a vision tower
    keep_versions: int = 5  # stored model versions in assets/models/versions (the current and the previous always stay)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3  # passes over the training split
    batch_size: int = 1  # packed rows per step
    max_seq_length: int = 1024  # tokens per packed row; a longer scenario is split into windows at user turns
    learning_rate: float = 1e-4  # peak, after warmup, then cosine decay
    warmup_fraction: float = 0.1  # of all steps
    lora_rank: int = 8  # LoRA rank
    lora_alpha: float = 16.0  # LoRA scale is alpha / rank
    lora_dropout: float = 0.0  # dropout on the LoRA input
    lora_layers: int = -1  # adapt the last N decoder layers; -1: all
    call_weight: float = 1.0  # loss weight of a tool call's tokens and a reply's closing token (narration: 1); e.g. 4
    lora_keys: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # the projections that get a LoRA
    grad_checkpoint: bool = False  # recompute activations in the backward pass (less memory, slower)
    grad_accumulation: int = 1  # micro-batches per optimizer step
    auto_batch: bool = True  # probe real steps; split batch_size into micro-batches that fit memory (accumulated)
    memory_limit_gb: float = 0.0  # MLX keeps to it (memory and cache) and the batch probe plans for it; 0: the limit MLX reports (several runs sharing a GPU: set it)
    memory_headroom: float = 0.2  # share of that budget kept free
    seed: int = 0  # LoRA initialisation, data order, dropout
    steps_per_eval: int = 25  # validation loss every N steps (early stopping and the best adapter use it)
    eval_rows: int = 0  # held-out rows those losses are measured on, a spread sample (0: all of them)
    steps_per_checkpoint: int = 25  # resumable checkpoint every N steps
    keep_checkpoints: int = 3  # the last K checkpoints kept, plus the best
    patience: int = 3  # evaluations in a row without a better score (select_by's) before training stops early
    select_by: str = "calls"  # the adapter shipped: "calls" (finalists by decision loss, then their generated calls) or "loss"
    finalists: int = 3  # adapters kept by decision loss (the loss at call and end-of-reply tokens) for the final choice
    select_cases: int = 48  # validation cases each finalist answers greedily (0: every DM reply)
    select_max_tokens: int = 96  # tokens per finalist reply
    select_max_false_calls: float = 0.3  # calls where none belongs above this rule a finalist out (unless every one is)
    max_steps: int = 0  # 0: as many as the epochs need
    compute_dtype: str = "auto"  # auto: bfloat16 on a GPU, float32 on the CPU
    init_adapter: str = ""  # start from this adapter folder (incremental retraining)
    replay_fraction: float = 0.5  # incremental: share of the old scenarios trained again beside the new ones


@dataclass(frozen=True)
class ValidateConfig:
    """`mlx-dm validate`: what is generated and the thresholds a model must meet to be used."""

    max_tokens: int = 96  # per generated DM reply
    max_reply_tokens: int = 256  # a case whose reference reply is longer gets its length, up to this (the app's n_predict)
    max_cases: int = 0  # 0: every DM reply of the validation split, the built-in suite and the independent set
    n_ctx: int = 2048  # the context the app creates
    min_tool_f1: float = 0.6  # tool-call F1 (tool names) the tuned GGUF must reach
    min_format_compliance: float = 0.9  # share of calls the app's pattern reads
    min_in_role: float = 0.9  # share of replies without template leaks or assistant talk
    max_gguf_drift: float = 0.02  # tool-call F1 of the GGUF may trail the MLX model by this much (refused when the paired bootstrap's 90% bound of the loss is above it)
    max_regression: float = 0.02  # ... and the model the app uses now by this much
    phone_ram_gb: float = 6.0  # RAM of the smallest phone to support
    app_memory_fraction: float = 0.5  # of the phone's RAM an app can count on (iOS/Android kill beyond)
    compare_base: bool = True  # also score the base model, side by side
    grammar: bool = True  # decode the GGUFs with the app's tool grammar (data/grammar.py), as the phone does; false: unconstrained, to compare
    compare_mlx: bool = True  # also score the tuned MLX model, for the GGUF's drift check; off: GGUF only (on a CPU, half the time)
    quality_thresholds: bool = True  # off for the tiny dev model, which cannot learn the DM in minutes
    llama_node: bool = True  # also load the GGUF in llama.rn's engine (@fugood/llama.node) when node is here
    cases_dir: str = ""  # a folder of your scenario files kept out of training, scored as a source of its own


@dataclass(frozen=True)
class ExportConfig:
    """The GGUF the app gets: which quantisation, chosen how, under what size."""

    quant: str = "auto"  # auto: the smallest candidate within max_kl of the f16 file and not significantly below it in F1; or a type, forced
    size_budget_gb: float = 2.0  # the largest GGUF the phone gets (0: no limit); over it, K types get the budget mix
    imatrix: bool = True  # an importance matrix from the training scenarios, for every quantisation
    imatrix_chunks: int = 64  # chunks of 512 tokens of the rendered training conversations that llama-imatrix reads
    candidates: list = field(default_factory=lambda: ["Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0"])
    max_kl: float = 0.05  # mean KL divergence from the f16 file (nats per reply position, teacher-forced) a candidate may have; real 270M: Q5 0.03 (90% same first choice), Q4 0.07 (82%)
    choice_cases: int = 24  # held-out cases (validation split and independent set, balanced) each candidate replies to
    choice_max_tokens: int = 64  # per reply while choosing

    @property
    def size_budget_bytes(self) -> float | None:
        return self.size_budget_gb * 1e9 if self.size_budget_gb > 0 else None


@dataclass(frozen=True)
class PlaytestConfig:
    """`mlx-dm playtest`: whole games against the GGUF with the app's settings, and what they must show."""

    sessions: int = 10  # games played; session i plays script i (built-in scripts, or scripts_dir's), seeded
    turns: int = 12  # player turns per game (a script with fewer ends sooner)
    scripts_dir: str = ""  # a folder of your scenario files, replayed as scripts; empty: the built-in scripts
    n_ctx: int = 2048  # the app's context; older turns are trimmed when a prompt would not fit
    temperature: float = 0.7  # the app's sampling
    top_p: float = 0.9
    max_tokens: int = 256  # the app's n_predict
    seed: int = 0
    profile: str = "cactus-agent"  # the agent profile whose parser reads the calls (data.agent_profiles or built-in)
    min_parsed: float = 0.95  # share of call-like text the app's pattern reads as a call
    max_invented_results: int = 0  # replies that write a tool's result themselves
    max_player_decisions: int = 0  # replies that decide or speak for a player
    max_repeated: float = 0.2  # share of replies that repeat an earlier one of the game
    after_validation: int = 3  # `mlx-dm run` plays this many games before promotion; 0: none
    thresholds: bool = True  # off for the tiny dev model: its games are reported, not judged


@dataclass(frozen=True)
class Config:
    project_dir: str = "."
    runs_dir: str = "runs"  # one folder per train/bench run
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    playtest: PlaytestConfig = field(default_factory=PlaytestConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def path(self, relative: str) -> Path:
        return (Path(self.project_dir) / relative).resolve()

    def override(self, where: str = "settings", **sections: dict[str, Any]) -> "Config":
        """A copy with these values (None leaves a value as it is), checked as flags are:
        `config.override(train={"max_steps": 16})`."""
        result = self
        for section, values in sections.items():
            values = {k: v for k, v in values.items() if v is not None}
            if section == "":
                result = _apply(result, values, where)
            elif values:
                result = dataclasses.replace(result, **{section: _apply(getattr(result, section), values, where)})
        return result


def _apply(section: Any, values: dict[str, Any], where: str) -> Any:
    """`section` with `values` set, each checked against the field's type; a new object."""
    known = {f.name: f for f in dataclasses.fields(section)}
    changes: dict[str, Any] = {}
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
            changes[name] = _apply(current, value, f"{where} [{name}]")
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
        changes[name] = value
    return dataclasses.replace(section, **changes)


def explicit_settings(project_dir: str | Path) -> set[str]:
    """The `section.key` names `mlx-dm.toml` sets itself (not defaults or the hardware profile)."""
    path = Path(project_dir) / CONFIG_FILE
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return set()  # load_config reports the file
    return {f"{section}.{key.replace('-', '_')}" for section, table in values.items() if isinstance(table, dict)
            for key in table}


def load_config(
    project_dir: str | Path = ".",
    overrides: dict[str, dict[str, Any]] | None = None,
    hardware: Hardware | None = None,
) -> Config:
    """Defaults from the hardware profile, then `mlx-dm.toml`, then explicit overrides (flags)."""
    config = Config(project_dir=str(Path(project_dir).resolve()))
    if hardware is not None:
        profile = recommend_profile(hardware)
        config = config.override(train={"batch_size": profile.batch_size, "max_seq_length": profile.max_seq_length,
                                        "grad_checkpoint": profile.grad_checkpoint},
                                 model={"quantize_base": profile.quantize_base})
    toml_path = Path(project_dir) / CONFIG_FILE
    if toml_path.exists():
        try:
            values = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path}: not valid TOML ({exc})", "fix the line named above, or delete the file to use defaults") from exc
        config = _apply(config, values, str(toml_path))
    for section, values in (overrides or {}).items():
        config = config.override(f"--{section} flags" if section else "flags", **{section: values})
    return config
