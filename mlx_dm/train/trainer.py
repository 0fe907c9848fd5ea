"""LoRA fine-tuning of Gemma 3n with MLX: packed rows, completion-only loss, compiled step,
atomic checkpoints with exact resume, early stopping on validation loss."""

from __future__ import annotations

import hashlib
import logging
import json
import math
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from ..config import Config
from ..errors import MlxDmError, TrainingError
from ..model import patches, per_layer_embeddings
from ..model.load import load_model
from ..runs import Run, atomic_write_json
from . import batching
from .checkpoint import (STATE_FILE, list_checkpoints, load_checkpoint, prune_checkpoints, save_adapter,
                         save_checkpoint, write_dir_atomically)

logger = logging.getLogger(__name__)


class TrainingInterrupted(MlxDmError):
    exit_code = 130
    kind = "interrupted"


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    total_steps: int
    best_val_loss: float | None
    last_train_loss: float | None
    trained_tokens: int
    tokens_per_second: float
    peak_memory_bytes: int
    padding_fraction: float
    stopped_early: bool
    resumed_from: int | None = None
    truncated_examples: int = 0
    history: list[dict] = field(default_factory=list)
    micro_batch_size: int = 1  # rows per forward/backward pass (per process), from the memory probe
    grad_accumulation: int = 1  # micro-batches per optimizer step
    processes: int = 1  # mx.distributed group size
    grad_checkpoint: bool = False  # activations recomputed in the backward pass (set, or chosen by the probe)
    per_layer_rows: tuple[int, int] | None = None  # Gemma 3n per-layer embedding rows kept / in the base

    def to_dict(self) -> dict:
        data = asdict(self)
        data["run_dir"], data["adapter_dir"] = str(self.run_dir), str(self.adapter_dir)
        data.pop("history")
        return data


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
            if state.get("key") == key and state.get("status") in ("running", "interrupted") and list_checkpoints(run_dir / "checkpoints"):
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


def attention_mask(segments: mx.array) -> mx.array:
    """Causal and block-diagonal over packed scenarios; padding attends to itself (no empty rows)."""
    length = segments.shape[1]
    positions = mx.arange(length)
    causal = positions[:, None] >= positions[None, :]
    same = segments[:, :, None] == segments[:, None, :]
    diagonal = positions[:, None] == positions[None, :]
    return ((same & causal) | diagonal)[:, None, :, :]


def loss_fn(model, inputs, targets, positions, weights, segments):
    """Mean cross-entropy over the DM tokens; the output head, and Gemma 3n's KV-shared layers, run
    at those positions only (patches, extension 6)."""
    selected = patches.hidden_states(model, inputs, mask=attention_mask(segments), positions=positions)
    logits = patches.output_logits(model, selected)
    losses = nn.losses.cross_entropy(logits.astype(mx.float32), targets.reshape(-1)[positions]) * weights
    tokens = weights.sum()
    return losses.sum() / mx.maximum(tokens, 1), tokens


def batch_arrays(batch: batching.Batch) -> tuple:
    positions, weights = batch.loss_positions()
    return (mx.array(batch.inputs), mx.array(batch.targets), mx.array(positions), mx.array(weights),
            mx.array(batch.segments))


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


def evaluate_loss(model, rows: list[batching.PackedRow], length: int, batch_size: int, group=None) -> float | None:
    """Mean loss over the DM tokens of ``rows``; with a distributed group each process scores its
    share of the rows and the sums are added up, so every process gets the same value."""
    if not rows:
        return None
    world, rank = (group.size(), group.rank()) if group is not None else (1, 0)
    mine = rows[rank::world]
    total, tokens = 0.0, 0.0
    for start in range(0, len(mine), batch_size):
        batch = batching.make_batch(mine[start:start + batch_size], length + 1)
        loss, n = loss_fn(model, *batch_arrays(batch))
        mx.eval(loss, n)
        total += loss.item() * n.item()
        tokens += n.item()
    if world > 1:
        summed = mx.distributed.all_sum(mx.array([total, tokens], dtype=mx.float32), group=group)
        total, tokens = summed.tolist()
    return total / tokens if tokens else None


def memory_budget(config: Config) -> int:
    """Bytes a training step may use: `train.memory_limit_gb`, else the limit MLX reports for this
    device (on a Mac, the GPU's recommended working set), less `train.memory_headroom`."""
    limit = config.train.memory_limit_gb * 1e9 if config.train.memory_limit_gb > 0 else mx.get_memory_limit()
    return int(limit * (1 - config.train.memory_headroom))


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


def train(config: Config, dataset_dir: Path, base_path: Path, run: Run, resume_dir: Path | None = None,
          progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Train LoRA adapters; returns the best adapter's folder. ``progress`` gets a dict per step."""
    mx.random.seed(config.train.seed)
    # Data parallel when started by `mlx.launch` (a group of one otherwise): every process holds the
    # same LoRA weights, trains on its own rows of each step, and the token-weighted gradients are
    # summed, so N processes with batch B compute exactly the step of one process with batch N*B.
    group = mx.distributed.init()
    world, rank = group.size(), group.rank()
    fingerprint = (Path(dataset_dir) / "fingerprint.txt").read_text().strip()
    key = run_key(config, base_path, fingerprint)
    loaded = load_model(base_path, quantize_4bit=config.model.quantize_base, dtype=config.train.compute_dtype,
                        lazy=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    seq = config.train.max_seq_length
    train_examples = batching.load_examples(Path(dataset_dir) / "train.jsonl", tokenizer, seq)
    valid_examples = batching.load_examples(Path(dataset_dir) / "valid.jsonl", tokenizer, seq)
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

    train_rows = batching.pack(train_examples, seq)
    valid_rows = batching.pack(valid_examples, seq)
    length = _row_length(train_rows + valid_rows, seq)
    pad_fraction = batching.padding_fraction(train_rows, length)
    batch_size = max(1, min(config.train.batch_size, len(train_rows)))
    accumulation = max(1, config.train.grad_accumulation)
    probe: list[dict] = []
    saved_state = Path(resume_dir) / STATE_FILE if resume_dir is not None else None
    earlier = json.loads(saved_state.read_text()) if saved_state is not None and saved_state.exists() else {}
    if "micro_batch_size" in earlier:
        # A resumed run keeps the split it started with, so it continues exactly.
        batch_size, accumulation = earlier["micro_batch_size"], earlier["grad_accumulation"]
        if earlier.get("grad_checkpoint") and not checkpointing:
            checkpointing = enable_grad_checkpoint(model)
    elif config.train.auto_batch:
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
        if world > 1:  # every process must run the same number of passes per step
            micro = int(mx.distributed.all_min(mx.array([micro]), group=group).item())  # a divisor on every process
        accumulation *= batch_size // micro
        batch_size = micro
    micro_per_epoch = math.ceil(len(train_rows) / (batch_size * world))
    steps_per_epoch = math.ceil(micro_per_epoch / accumulation)
    total_steps = steps_per_epoch * config.train.epochs
    if config.train.max_steps:
        total_steps = min(total_steps, config.train.max_steps)

    optimizer = optim.AdamW(learning_rate=lr_schedule(config, total_steps), weight_decay=0.0)
    value_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state, mx.random.state]

    def micro_step(inputs, targets, positions, weights, segments):
        (loss, tokens), grad = value_and_grad(model, inputs, targets, positions, weights, segments)
        return loss, tokens, grad

    def full_step(inputs, targets, positions, weights, segments):
        loss, tokens, grad = micro_step(inputs, targets, positions, weights, segments)
        optimizer.update(model, grad)
        return loss, tokens

    compiled_full = mx.compile(full_step, inputs=state, outputs=state)
    compiled_micro = mx.compile(micro_step, inputs=state, outputs=state)

    run_dir = run.path
    checkpoints_dir = run_dir / "checkpoints"
    best_dir = run_dir / "best"
    run_state = {"key": key, "status": "running", "base": str(base_path), "data_fingerprint": fingerprint,
                 "total_steps": total_steps, "micro_batch_size": batch_size, "grad_accumulation": accumulation,
                 "grad_checkpoint": checkpointing, "processes": world, "batch_probe": probe}
    step, epoch, position = 0, 0, 0
    step_start, micro_count = 0, 0
    best_val, patience_left, best_step = None, config.train.patience, None
    trained_tokens, resumed_from = 0, None
    optimizer.init(model.trainable_parameters())
    if resume_dir is not None:
        last = list_checkpoints(checkpoints_dir)[-1]
        saved = load_checkpoint(last, model, optimizer)
        step, epoch, position = saved["step"], saved["epoch"], saved["position"]
        best_val, best_step, patience_left = saved["best_val"], saved["best_step"], saved["patience_left"]
        trained_tokens = saved["trained_tokens"]
        resumed_from = step
    atomic_write_json(run_dir / STATE_FILE, run_state)

    def checkpoint_state() -> dict:
        return {"epoch": epoch, "position": step_start if micro_count else position, "best_val": best_val, "best_step": best_step,
                "patience_left": patience_left, "trained_tokens": trained_tokens, "key": key}

    history: list[dict] = []
    stopped_early = False
    last_loss = None
    start_time = time.perf_counter()
    tokens_this_session = 0
    padded_tokens, real_tokens_mine = 0, 0  # this process's rows, for the padding actually computed
    eval_seconds = 0.0  # excluded from tokens/s, which measures training
    mx.reset_peak_memory()
    interrupted = False

    stop_requested = []

    def on_stop(signum, frame):
        # Ctrl-C or a polite kill (e.g. from the bootstrap) stops after the current step: raising
        # inside MLX's compile tracing would leave the model's arrays without values to save.
        if stop_requested:
            raise KeyboardInterrupt  # asked twice: stop now
        stop_requested.append(signum)

    previous_handlers = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while step < total_steps and not stopped_early:
            order = batching.epoch_order(len(train_rows), config.train.seed, epoch)
            accumulated, accumulated_tokens, step_loss, micro_count, real = None, 0.0, 0.0, 0, 0
            while position < len(order) and step < total_steps:
                if stop_requested:
                    raise KeyboardInterrupt
                if micro_count == 0:
                    step_start = position  # a checkpoint mid-accumulation resumes from here
                step_rows = [train_rows[i] for i in order[position:position + batch_size * world]]
                chosen = step_rows[rank * batch_size:(rank + 1) * batch_size]
                # At the end of an epoch a process may get no row; it still joins the sum, with weight 0.
                idle = not chosen
                # Pad only to the batch's longest row (in steps of 64, so the compiled step sees few
                # shapes), not to the longest row of the run.
                batch_length = min(length, -(-max(len(r.ids) for r in chosen or step_rows[:1]) // 64) * 64)
                batch = batching.make_batch(chosen or step_rows[:1], batch_length + 1)
                padded_tokens += batch.inputs.size
                arrays = batch_arrays(batch)
                position += batch_size * world
                real += int(sum(len(r.ids) for r in step_rows))  # tokens of every micro-batch in this step
                real_tokens_mine += 0 if idle else int(sum(len(r.ids) - 1 for r in chosen))
                mx.random.seed(config.train.seed * 1_000_003 + step * 1_009 + micro_count)
                if accumulation == 1 and world == 1:
                    loss, tokens = compiled_full(*arrays)
                    mx.eval(state, loss, tokens)
                    step_loss, step_tokens = loss.item(), tokens.item()
                else:
                    loss, tokens, grad = compiled_micro(*arrays)
                    weight = mx.zeros_like(tokens) if idle else tokens
                    grad = tree_map(lambda g: g * weight, grad)
                    accumulated = grad if accumulated is None else tree_map(mx.add, accumulated, grad)
                    accumulated_tokens += weight.item()
                    step_loss += loss.item() * weight.item()
                    micro_count += 1
                    mx.eval(accumulated)
                    if micro_count < accumulation and position < len(order):
                        continue
                    if world > 1:
                        accumulated = tree_map(lambda g: mx.distributed.all_sum(g, group=group), accumulated)
                        sums = mx.distributed.all_sum(mx.array([step_loss, accumulated_tokens], dtype=mx.float32), group=group)
                        step_loss, accumulated_tokens = sums.tolist()
                    optimizer.update(model, tree_map(lambda g: g / max(accumulated_tokens, 1.0), accumulated))
                    mx.eval(state)
                    step_loss, step_tokens = step_loss / max(accumulated_tokens, 1.0), accumulated_tokens
                    accumulated, accumulated_tokens = None, 0.0
                step += 1
                last_loss = step_loss
                trained_tokens += real
                tokens_this_session += real
                elapsed = time.perf_counter() - start_time - eval_seconds
                record = {"step": step, "epoch": epoch + position / len(order), "loss": step_loss,
                          "trainable_tokens": step_tokens, "tokens": real,
                          "learning_rate": float(optimizer.learning_rate.item()),
                          "tokens_per_second": tokens_this_session / elapsed if elapsed > 0 else 0.0,
                          "peak_memory_bytes": int(mx.get_peak_memory())}
                step_loss, micro_count, real = 0.0, 0, 0
                evaluate_now = step % config.train.steps_per_eval == 0 or step == total_steps or position >= len(order)
                if evaluate_now and valid_rows:
                    eval_start = time.perf_counter()
                    val = evaluate_loss(model, valid_rows, length, batch_size, group)
                    eval_seconds += time.perf_counter() - eval_start
                    record["val_loss"] = val
                    if best_val is None or val < best_val - 1e-4:
                        best_val, best_step, patience_left = val, step, config.train.patience
                        write_dir_atomically(best_dir, lambda d: save_adapter(d, model, adapter_config))
                    else:
                        patience_left -= 1
                        if patience_left <= 0:
                            stopped_early = True
                run.log_metrics(**record)
                history.append(record)
                if progress:
                    progress({**record, "total_steps": total_steps, "best_val_loss": best_val})
                if step % config.train.steps_per_checkpoint == 0 or step == total_steps or stopped_early:
                    save_checkpoint(checkpoints_dir, step, model, optimizer, adapter_config, checkpoint_state())
                    prune_checkpoints(checkpoints_dir, config.train.keep_checkpoints)
                if stopped_early:
                    break
            if position >= len(order):
                epoch, position = epoch + 1, 0
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    if interrupted:
        save_checkpoint(checkpoints_dir, step, model, optimizer, adapter_config, checkpoint_state())
        atomic_write_json(run_dir / STATE_FILE, {**run_state, "status": "interrupted", "step": step})
        raise TrainingInterrupted(f"training stopped at step {step}/{total_steps}; a checkpoint was saved in {checkpoints_dir}",
                                  "run the same command again to resume (or add --resume); --no-resume starts over")

    if not valid_rows or not best_dir.exists():
        write_dir_atomically(best_dir, lambda d: save_adapter(d, model, adapter_config))
    adapter_dir = write_dir_atomically(run_dir / "adapters", lambda d: _copy_adapter(best_dir, d))
    elapsed = time.perf_counter() - start_time - eval_seconds
    if padded_tokens:
        pad_fraction = 1 - real_tokens_mine / padded_tokens
    result = TrainResult(run_dir, adapter_dir, step, total_steps, best_val, last_loss, trained_tokens,
                         tokens_this_session / elapsed if elapsed > 0 else 0.0, int(mx.get_peak_memory()),
                         pad_fraction, stopped_early, resumed_from,
                         sum(e.truncated for e in train_examples + valid_examples), history, batch_size, accumulation, world,
                         checkpointing, (compaction.rows_kept, compaction.rows_total) if compaction else None)
    atomic_write_json(run_dir / STATE_FILE, {**run_state, "status": "finished", "step": step,
                                             "result": result.to_dict()})
    plot_loss(run.metrics_path, run_dir / "loss.png")
    return result


def _copy_adapter(source: Path, target: Path) -> None:
    for name in ("adapters.safetensors", "adapter_config.json"):
        shutil.copy2(source / name, target / name)


def plot_loss(metrics_path: Path, out: Path) -> Path | None:
    """Training and validation loss against step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not Path(metrics_path).exists():
        return None
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step" in r and "loss" in r]
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", linewidth=1)
    val = [r for r in rows if r.get("val_loss") is not None]
    if val:
        axis.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (DM tokens)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
