"""Everything training needs before its first step, built once: the model with LoRA (and the
per-layer table cut to the data's ids), the packed rows, the batch plan a memory probe chose, and
the optimizer. The trainer (trainer.py) receives it built, as mlx-lm's trainer receives a model and
an optimizer."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from ..config import Config
from ..errors import TrainingError
from ..model import patches, per_layer_embeddings
from ..model.load import load_model
from . import batching
from .checkpoint import STATE_FILE, list_checkpoints
from .step import DECISION_MARK, batch_arrays, loss_fn

logger = logging.getLogger(__name__)


def run_key(config: Config, base_path: Path, fingerprint: str) -> str:
    """What makes two runs the same run (and so resumable into each other)."""
    train = asdict(config.train)
    for volatile in ("steps_per_eval", "steps_per_checkpoint", "keep_checkpoints", "auto_batch", "memory_headroom",
                     "memory_limit_gb"):
        train.pop(volatile)
    blob = json.dumps({"train": train, "base": str(base_path), "quantize": config.model.quantize_base,
                       "data": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_resumable(runs_dir: Path, key: str) -> Path | None:
    """The newest unfinished run with this key."""
    if not Path(runs_dir).is_dir():
        return None
    for run_dir in sorted(Path(runs_dir).iterdir(), reverse=True):
        state_path = run_dir / STATE_FILE
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text())
            except ValueError:
                continue
            unfinished = state.get("status") in ("running", "interrupted", "selecting")  # selecting: train/select.py
            if state.get("key") == key and unfinished and list_checkpoints(run_dir / "checkpoints"):
                return run_dir
    return None


# The cosine decay ends at this fraction of the peak learning rate.
FINAL_LR_FRACTION = 0.05


def lr_schedule(config: Config, total_steps: int):
    warmup = max(1, int(config.train.warmup_fraction * total_steps)) if config.train.warmup_fraction > 0 else 0
    peak = config.train.learning_rate
    decay = optim.cosine_decay(peak, max(1, total_steps - warmup), end=peak * FINAL_LR_FRACTION)
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(peak * 0.01, peak, warmup), decay], [warmup])


def apply_lora(model, config: Config) -> dict:
    from mlx_lm.tuner.utils import linear_to_lora_layers

    layers = len(model.layers) if config.train.lora_layers < 0 else min(config.train.lora_layers, len(model.layers))
    keys = [k if "." in k else _qualify(k) for k in config.train.lora_keys]
    parameters = {"rank": config.train.lora_rank, "scale": config.train.lora_alpha / config.train.lora_rank,
                  "dropout": config.train.lora_dropout, "keys": keys}
    model.freeze()
    linear_to_lora_layers(model, layers, parameters)
    return {"fine_tune_type": "lora", "num_layers": layers, "lora_parameters": parameters}


def load_initial_adapter(model, adapter_dir: Path, config: Config) -> None:
    """Continue from an earlier adapter (same base, same LoRA shape)."""
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    rank = saved.get("lora_parameters", {}).get("rank")
    if rank != config.train.lora_rank:
        raise TrainingError(f"the adapter in {adapter_dir} has LoRA rank {rank}, this run {config.train.lora_rank}",
                            f"train with --lora-rank {rank}, or start over with --full")
    model.load_weights(str(adapter_dir / "adapters.safetensors"), strict=False)


def _qualify(key: str) -> str:
    for full in patches.GEMMA3N_LORA_KEYS:
        if full.endswith("." + key):
            return full
    raise TrainingError(f"unknown LoRA target '{key}'", f"use some of: {', '.join(k.split('.')[-1] for k in patches.GEMMA3N_LORA_KEYS)}")


def memory_budget(config: Config) -> int:
    """Bytes a training step may use: `train.memory_limit_gb`, else the limit MLX reports for this
    device (on a Mac, the GPU's recommended working set), less `train.memory_headroom`."""
    limit = config.train.memory_limit_gb * 1e9 if config.train.memory_limit_gb > 0 else mx.get_memory_limit()
    return int(limit * (1 - config.train.memory_headroom))


def limit_mlx_memory(config: Config) -> int | None:
    """With `train.memory_limit_gb` set, MLX itself keeps to it (its memory and its cache of freed
    buffers), not only the batch probe; returns the limit in bytes, or None when unset.

    Why: each process's MLX takes the whole device as its limit and keeps freed buffers cached up to
    it, so trainings sharing one GPU starve each other. On an H200, six 270M trainings started side
    by side ran out of memory in their first validation pass while each one's probe had fitted."""
    if config.train.memory_limit_gb <= 0:
        return None
    limit = int(config.train.memory_limit_gb * 1e9)
    mx.set_memory_limit(limit)
    previous = mx.set_cache_limit(limit)
    if previous < limit:  # never raise a smaller default (CPU: 32 MB)
        mx.set_cache_limit(previous)
    return limit


def step_memory_probe(model, rows: list[batching.PackedRow], length: int) -> Callable[[int], int | None]:
    """Peak bytes of one real forward and backward pass on the ``n`` heaviest rows (most DM tokens),
    plus the optimizer state; None when MLX cannot allocate it."""
    value_and_grad = nn.value_and_grad(model, loss_fn)
    heaviest = sorted(rows, key=lambda row: -float(row.loss_mask.sum()))
    trainable = sum(v.nbytes for _, v in tree_flatten(model.trainable_parameters()))

    def measure(n: int) -> int | None:
        chosen = (heaviest * n)[:n]
        arrays = batch_arrays(batching.make_batch(chosen, length + 1))
        mx.clear_cache()
        mx.reset_peak_memory()
        try:
            (loss, _), grad = value_and_grad(model, *arrays)
            mx.eval(loss, grad)
        except RuntimeError as exc:  # Metal: "[metal::malloc] Attempting to allocate ..."
            if "alloc" in str(exc).lower() or "memory" in str(exc).lower():
                return None
            raise
        peak = int(mx.get_peak_memory())
        del grad, loss
        mx.clear_cache()
        return peak + 2 * trainable  # AdamW keeps two moments per trainable weight

    return measure


def enable_grad_checkpoint(model) -> bool:
    """Recompute each transformer layer's activations in the backward pass. Gemma 3n uses
    patches' KV-sharing-aware version; other models mlx-lm's helper (it patches the layer class,
    so it stays on for this process)."""
    if model.model_type == "gemma3n":
        model.model.language_model.checkpoint_layers = True
        return True
    from mlx_lm.tuner.trainer import grad_checkpoint

    grad_checkpoint(model.layers[0])
    return True


def choose_micro_batch(measure: Callable[[int], int | None], batch_size: int, budget: int) -> tuple[int, list[dict]]:
    """The largest divisor of ``batch_size`` whose measured step fits ``budget``; gradient
    accumulation over ``batch_size // micro`` micro-batches keeps the effective batch."""
    probe = []
    divisors = [d for d in range(batch_size, 0, -1) if batch_size % d == 0]
    for rows in divisors:
        peak = measure(rows)
        fits = peak is not None and peak <= budget
        probe.append({"rows": rows, "peak_bytes": peak, "budget_bytes": budget, "fits": fits})
        if fits:
            return rows, probe
    return 1, probe


def _row_length(rows: list[batching.PackedRow], max_seq_length: int) -> int:
    """One fixed row length for the whole run (so the compiled step never recompiles)."""
    longest = max((len(r.ids) for r in rows), default=2)
    return min(max_seq_length, int(math.ceil(longest / 32) * 32))


@dataclass
class TrainingSetup:
    model: nn.Module
    optimizer: optim.Optimizer
    adapter_config: dict
    train_rows: list[batching.PackedRow]
    valid_rows: list[batching.PackedRow]
    length: int  # tokens per row, fixed for the run
    batch_size: int  # rows per pass, per process
    accumulation: int  # passes per optimizer step
    total_steps: int
    key: str  # run_key: what a resumed run must match
    fingerprint: str
    group: object  # mx.distributed group (of one when started alone)
    checkpointing: bool
    probe: list[dict]
    pad_fraction: float
    truncated: int
    per_layer_rows: tuple[int, int] | None
    tokenizer: object = None  # for the finalists' generated replies (select.py)
    dataset_dir: Path | None = None

    @property
    def world(self) -> int:
        return self.group.size()

    @property
    def rank(self) -> int:
        return self.group.rank()


def prepare(config: Config, dataset_dir: Path, base_path: Path, resume_dir: Path | None = None) -> TrainingSetup:
    """Load and adapt the model, pack the rows, choose the batch plan and build the optimizer."""
    mx.random.seed(config.train.seed)
    limit_mlx_memory(config)
    # Data parallel when started by `mlx.launch` (a group of one otherwise): every process holds the
    # same LoRA weights, trains on its own rows of each step, and the token-weighted gradients are
    # summed, so N processes with batch B compute exactly the step of one process with batch N*B.
    group = mx.distributed.init()
    fingerprint = (Path(dataset_dir) / "fingerprint.txt").read_text().strip()
    loaded = load_model(base_path, quantize_4bit=config.model.quantize_base, dtype=config.train.compute_dtype,
                        lazy=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    seq = config.train.max_seq_length
    weight = config.train.call_weight
    train_examples = batching.load_examples(Path(dataset_dir) / "train.jsonl", tokenizer, seq, weight)
    # Validation marks the decision tokens (step.evaluate_losses): one pass gives both losses.
    valid_examples = batching.load_examples(Path(dataset_dir) / "valid.jsonl", tokenizer, seq, DECISION_MARK)
    if not train_examples:
        raise TrainingError("the training split is empty", "add scenarios to ai-training/ and run `mlx-dm data build`")
    # Before any weight is read: Gemma 3n's per-layer embedding table keeps only the rows of the
    # ids this run feeds (E2B: 4 GB of 262,144 rows in bfloat16 down to megabytes).
    compaction = per_layer_embeddings.keep_rows(model, base_path, (i for e in train_examples + valid_examples for i in e.ids))
    mx.eval(model.parameters())
    adapter_config = apply_lora(model, config)
    if config.train.init_adapter:
        load_initial_adapter(model, Path(config.train.init_adapter), config)
    checkpointing = config.train.grad_checkpoint
    if checkpointing:
        enable_grad_checkpoint(model)
    train_rows, valid_rows = batching.pack(train_examples, seq), batching.pack(valid_examples, seq)
    length = _row_length(train_rows + valid_rows, seq)
    batch_size, accumulation, checkpointing, probe = _batch_plan(config, model, train_rows, length, resume_dir,
                                                                 checkpointing, group)
    steps_per_epoch = math.ceil(math.ceil(len(train_rows) / (batch_size * group.size())) / accumulation)
    total_steps = steps_per_epoch * config.train.epochs
    if config.train.max_steps:
        total_steps = min(total_steps, config.train.max_steps)
    optimizer = optim.AdamW(learning_rate=lr_schedule(config, total_steps), weight_decay=0.0)
    return TrainingSetup(model, optimizer, adapter_config, train_rows, valid_rows, length, batch_size, accumulation,
                         total_steps, run_key(config, base_path, fingerprint), fingerprint, group, checkpointing, probe,
                         batching.padding_fraction(train_rows, length),
                         sum(e.truncated for e in train_examples + valid_examples),
                         (compaction.rows_kept, compaction.rows_total) if compaction else None, tokenizer,
                         Path(dataset_dir))


def _batch_plan(config: Config, model, train_rows, length: int, resume_dir: Path | None, checkpointing: bool,
                group) -> tuple[int, int, bool, list[dict]]:
    """(rows per pass, passes per step, checkpointing, probe): a resumed run keeps its plan, else the
    memory probe splits `train.batch_size` into micro-batches that fit."""
    batch_size = max(1, min(config.train.batch_size, len(train_rows)))
    accumulation = max(1, config.train.grad_accumulation)
    saved_state = Path(resume_dir) / STATE_FILE if resume_dir is not None else None
    earlier = json.loads(saved_state.read_text()) if saved_state is not None and saved_state.exists() else {}
    if "micro_batch_size" in earlier:
        # A resumed run keeps the split it started with, so it continues exactly.
        if earlier.get("grad_checkpoint") and not checkpointing:
            checkpointing = enable_grad_checkpoint(model)
        return earlier["micro_batch_size"], earlier["grad_accumulation"], checkpointing, []
    if not config.train.auto_batch:
        return batch_size, accumulation, checkpointing, []
    budget = memory_budget(config)
    micro, probe = choose_micro_batch(step_memory_probe(model, train_rows, length), batch_size, budget)
    if not probe[-1]["fits"] and not checkpointing:
        # Even one row is over the budget: recompute activations in the backward pass (slower,
        # much less memory) rather than fail or swap.
        checkpointing = enable_grad_checkpoint(model)
        micro, more = choose_micro_batch(step_memory_probe(model, train_rows, length), batch_size, budget)
        probe += [{**row, "grad_checkpoint": True} for row in more]
    if not probe[-1]["fits"]:
        logger.warning("even one row per step measured %s bytes, over the %s-byte budget; training goes on with one",
                       probe[-1]["peak_bytes"], budget)
    if group.size() > 1:  # every process must run the same number of passes per step
        micro = int(mx.distributed.all_min(mx.array([micro]), group=group).item())  # a divisor on every process
    return micro, accumulation * (batch_size // micro), checkpointing, probe
