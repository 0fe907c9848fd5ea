"""LoRA fine-tuning of Gemma 3n with MLX: the step loop over a built TrainingSetup (setup.py):
compiled steps (accumulated and summed over processes when the batch is split), evaluation, early
stopping, atomic checkpoints with exact resume, and a clean stop on Ctrl-C."""

from __future__ import annotations

import gc
import json
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from ..config import Config
from ..errors import ConfigError, MlxDmError
from ..files import atomic_write_json, write_dir_atomically
from ..runs import Run
from . import batching
from .checkpoint import STATE_FILE, copy_adapter, list_checkpoints, load_checkpoint, prune_checkpoints, save_adapter, save_checkpoint
from .setup import TrainingSetup, prepare
from .select import FINALISTS_DIR, Finalist, admit, finalist_dir, run_selection
from .step import batch_arrays, evaluate_losses, loss_fn


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
    best_decision_loss: float | None = None  # the lowest validation loss at the call-decision tokens (select.py)
    finalists: list[dict] = field(default_factory=list)  # select.Finalist, when select_by = "calls"
    selection: dict | None = None  # the report of select.run_selection, once it ran

    def to_dict(self) -> dict:
        data = asdict(self)
        data["run_dir"], data["adapter_dir"] = str(self.run_dir), str(self.adapter_dir)
        data.pop("history")
        return data


@dataclass
class LoopState:
    """Where the loop is; what a checkpoint saves and a resume restores."""
    step: int = 0
    epoch: int = 0
    position: int = 0  # rows of this epoch's order already used
    step_start: int = 0  # position where the step being accumulated began
    micro_count: int = 0
    best_val: float | None = None  # the lowest validation loss (every DM token)
    best_decision: float | None = None  # the lowest decision loss
    best_score: float | None = None  # the lowest of the one select_by watches: best/ and early stopping follow it
    best_step: int | None = None
    finalists: list[Finalist] = field(default_factory=list)
    patience_left: int = 0
    trained_tokens: int = 0
    resumed_from: int | None = None
    last_loss: float | None = None
    stopped_early: bool = False
    tokens_this_session: int = 0
    padded_tokens: int = 0  # this process's rows, for the padding actually computed
    real_tokens_mine: int = 0
    eval_seconds: float = 0.0  # excluded from tokens/s, which measures training
    start_time: float = field(default_factory=time.perf_counter)
    history: list[dict] = field(default_factory=list)

    def checkpoint(self, key: str) -> dict:
        return {"epoch": self.epoch, "position": self.step_start if self.micro_count else self.position,
                "best_val": self.best_val, "best_step": self.best_step, "patience_left": self.patience_left,
                "best_decision": self.best_decision, "best_score": self.best_score, "stopped_early": self.stopped_early,
                "finalists": [asdict(f) for f in self.finalists], "trained_tokens": self.trained_tokens, "key": key}

    def tokens_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start_time - self.eval_seconds
        return self.tokens_this_session / elapsed if elapsed > 0 else 0.0


def train(config: Config, dataset_dir: Path, base_path: Path, run: Run, resume_dir: Path | None = None,
          progress: Callable[[dict], None] | None = None,
          selection_progress: Callable[[str, int, int], None] | None = None) -> TrainResult:
    """Train LoRA adapters, then choose the one that ships (select.py); returns its folder.
    ``progress`` gets a dict per step, ``selection_progress`` (label, done, total) per finalist reply."""
    trainer = Trainer(prepare(config, dataset_dir, base_path, resume_dir), config, run, base_path)
    result = trainer.run(resume_dir, progress)
    if not trainer.selection_pending:
        return result
    del trainer  # the training model's memory, before the finalists load the full model
    gc.collect()
    mx.clear_cache()
    finalists = [Finalist(**f) for f in result.finalists]
    result.selection = run_selection(finalists, run.path, result.adapter_dir, base_path, Path(dataset_dir), config,
                                     selection_progress)
    result.finalists = [asdict(f) for f in finalists]
    state = json.loads((run.path / STATE_FILE).read_text())
    atomic_write_json(run.path / STATE_FILE, {**state, "status": "finished", "result": result.to_dict()})
    return result


class Trainer:
    """The step loop over a built model and optimizer; writes the run folder as it goes."""

    def __init__(self, setup: TrainingSetup, config: Config, run: Run, base_path: Path) -> None:
        self.setup, self.config, self.run_ = setup, config, run
        self.checkpoints_dir, self.best_dir = run.path / "checkpoints", run.path / "best"
        if config.train.select_by not in ("calls", "loss"):
            raise ConfigError(f"train.select_by = {config.train.select_by!r} is not a choice",
                              'write select_by = "calls" (the adapter that calls tools best) or "loss" in mlx-dm.toml')
        self.by_calls = config.train.select_by == "calls"
        # train.eval_rows: a spread sample of the held-out rows (the same at every evaluation), so a
        # large validation split does not cost more than the steps between two evaluations.
        rows, keep = setup.valid_rows, config.train.eval_rows
        self.eval_rows = rows if not keep or keep >= len(rows) else [rows[i * len(rows) // keep] for i in range(keep)]
        self.selection_pending = False
        self.run_state = {"key": setup.key, "status": "running", "base": str(base_path),
                          "data_fingerprint": setup.fingerprint, "total_steps": setup.total_steps,
                          "micro_batch_size": setup.batch_size, "grad_accumulation": setup.accumulation,
                          "grad_checkpoint": setup.checkpointing, "processes": setup.world, "batch_probe": setup.probe}
        model, optimizer = setup.model, setup.optimizer
        value_and_grad = nn.value_and_grad(model, loss_fn)
        self.state = [model.state, optimizer.state, mx.random.state]

        def micro_step(inputs, targets, positions, weights, segments):
            (loss, tokens), grad = value_and_grad(model, inputs, targets, positions, weights, segments)
            return loss, tokens, grad

        def full_step(inputs, targets, positions, weights, segments):
            loss, tokens, grad = micro_step(inputs, targets, positions, weights, segments)
            optimizer.update(model, grad)
            return loss, tokens

        self.full_step = mx.compile(full_step, inputs=self.state, outputs=self.state)
        self.micro_step = mx.compile(micro_step, inputs=self.state, outputs=self.state)

    def run(self, resume_dir: Path | None, progress: Callable[[dict], None] | None) -> TrainResult:
        setup, loop = self.setup, LoopState(patience_left=self.config.train.patience)
        setup.optimizer.init(setup.model.trainable_parameters())
        if resume_dir is not None:
            self._restore(loop)
        atomic_write_json(self.run_.path / STATE_FILE, self.run_state)
        mx.reset_peak_memory()
        stop_requested: list[int] = []

        def on_stop(signum, frame):
            # Ctrl-C or a polite kill (e.g. from the bootstrap) stops after the current step: raising
            # inside MLX's compile tracing would leave the model's arrays without values to save.
            if stop_requested:
                raise KeyboardInterrupt  # asked twice: stop now
            stop_requested.append(signum)

        previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._epochs(loop, stop_requested, progress)
        except KeyboardInterrupt:
            self._interrupted(loop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._finish(loop)

    def _restore(self, loop: LoopState) -> None:
        saved = load_checkpoint(list_checkpoints(self.checkpoints_dir)[-1], self.setup.model, self.setup.optimizer)
        loop.step, loop.epoch, loop.position = saved["step"], saved["epoch"], saved["position"]
        loop.best_val, loop.best_step, loop.patience_left = saved["best_val"], saved["best_step"], saved["patience_left"]
        loop.best_decision, loop.stopped_early = saved.get("best_decision"), saved.get("stopped_early", False)
        loop.best_score = saved.get("best_score", saved["best_val"])
        loop.finalists = [Finalist(**f) for f in saved.get("finalists", [])]
        loop.trained_tokens, loop.resumed_from = saved["trained_tokens"], saved["step"]

    def _epochs(self, loop: LoopState, stop_requested: list[int], progress) -> None:
        setup = self.setup
        while loop.step < setup.total_steps and not loop.stopped_early:
            order = batching.epoch_order(len(setup.train_rows), self.config.train.seed, loop.epoch)
            pending, loop.micro_count = _Accumulator(), 0
            while loop.position < len(order) and loop.step < setup.total_steps:
                if stop_requested:
                    raise KeyboardInterrupt
                finished = self._pass(loop, order, pending)
                if finished is None:
                    continue
                self._after_step(loop, finished, len(order), progress)
                if loop.stopped_early:
                    break
            if loop.position >= len(order):
                loop.epoch, loop.position = loop.epoch + 1, 0


    def _pass(self, loop: LoopState, order: list[int], pending: "_Accumulator") -> StepTotals | None:
        """One forward and backward pass; the step's totals when it completed a step, else None."""
        setup, world = self.setup, self.setup.world
        if loop.micro_count == 0:
            loop.step_start = loop.position  # a checkpoint mid-accumulation resumes from here
        step_rows = [setup.train_rows[i] for i in order[loop.position:loop.position + setup.batch_size * world]]
        chosen = step_rows[setup.rank * setup.batch_size:(setup.rank + 1) * setup.batch_size]
        idle = not chosen  # at the end of an epoch a process may get no row; it still joins the sum, with weight 0
        # Pad only to the batch's longest row (in steps of 64, so the compiled step sees few shapes),
        # not to the longest row of the run.
        batch_length = batching.batch_length(chosen or step_rows[:1], setup.length)
        batch = batching.make_batch(chosen or step_rows[:1], batch_length + 1)
        loop.padded_tokens += batch.inputs.size
        arrays = batch_arrays(batch)
        loop.position += setup.batch_size * world
        pending.real += int(sum(len(r.ids) for r in step_rows))  # tokens of every micro-batch in this step
        pending.trainable += int(sum(np.count_nonzero(r.loss_mask) for r in step_rows))
        loop.real_tokens_mine += 0 if idle else int(sum(len(r.ids) - 1 for r in chosen))
        mx.random.seed(self.config.train.seed * 1_000_003 + loop.step * 1_009 + loop.micro_count)
        if setup.accumulation == 1 and world == 1:
            loss, tokens = self.full_step(*arrays)
            mx.eval(self.state, loss, tokens)
            return pending.done(loss.item(), tokens.item())
        loss, tokens, grad = self.micro_step(*arrays)
        pending.add(grad, mx.zeros_like(tokens) if idle else tokens, loss)
        loop.micro_count += 1
        if loop.micro_count < setup.accumulation and loop.position < len(order):
            return None
        return pending.apply(setup, self.state)

    def _after_step(self, loop: LoopState, finished: StepTotals, n_order: int, progress) -> None:
        setup, settings = self.setup, self.config.train
        step_loss, real = finished.loss, finished.tokens
        loop.step += 1
        loop.last_loss = step_loss
        loop.trained_tokens += real
        loop.tokens_this_session += real
        loop.micro_count = 0
        record = {"step": loop.step, "epoch": loop.epoch + loop.position / n_order, "loss": step_loss,
                  "trainable_tokens": finished.trainable_tokens, "loss_weight": finished.loss_weight, "tokens": real,
                  "learning_rate": float(setup.optimizer.learning_rate.item()),
                  "tokens_per_second": loop.tokens_per_second(), "peak_memory_bytes": int(mx.get_peak_memory())}
        evaluate_now = loop.step % settings.steps_per_eval == 0 or loop.step == setup.total_steps or loop.position >= n_order
        if evaluate_now and setup.valid_rows:
            self._evaluate(loop, record)
        self.run_.log_metrics(**record)
        loop.history.append(record)
        if progress:
            progress({**record, "total_steps": setup.total_steps, "best_val_loss": loop.best_val})
        if loop.step % settings.steps_per_checkpoint == 0 or loop.step == setup.total_steps or loop.stopped_early:
            self._checkpoint(loop)
            prune_checkpoints(self.checkpoints_dir, settings.keep_checkpoints)

    def _evaluate(self, loop: LoopState, record: dict) -> None:
        """Validation and decision losses; a better score (select_by's) saves the best adapter and
        `patience` worse ones in a row stop the run; a good decision loss makes a finalist."""
        setup = self.setup
        start = time.perf_counter()
        val, decision = evaluate_losses(setup.model, self.eval_rows, setup.length, 2 * setup.batch_size, setup.group)
        loop.eval_seconds += time.perf_counter() - start
        record["val_loss"], record["decision_loss"] = val, decision
        loop.best_val = val if loop.best_val is None or (val is not None and val < loop.best_val) else loop.best_val
        if decision is not None and (loop.best_decision is None or decision < loop.best_decision):
            loop.best_decision = decision
        watched = decision if self.by_calls and decision is not None else val
        if watched is None:  # no held-out token to score: every held-out row was cut before its first reply
            return
        if loop.best_score is None or watched < loop.best_score - 1e-4:
            loop.best_score, loop.best_step, loop.patience_left = watched, loop.step, self.config.train.patience
            write_dir_atomically(self.best_dir, lambda d: save_adapter(d, setup.model, setup.adapter_config))
        else:
            loop.patience_left -= 1
            loop.stopped_early = loop.patience_left <= 0
        if self.by_calls and decision is not None and self.config.train.finalists > 1:
            kept, _ = admit(loop.finalists, Finalist(loop.step, val, decision), self.config.train.finalists)
            if any(f.step == loop.step for f in kept):
                write_dir_atomically(finalist_dir(self.run_.path, loop.step),
                                     lambda d: save_adapter(d, setup.model, setup.adapter_config))
            loop.finalists = kept  # the folders of those that dropped out go after the next checkpoint

    def _checkpoint(self, loop: LoopState) -> None:
        save_checkpoint(self.checkpoints_dir, loop.step, self.setup.model, self.setup.optimizer, self.setup.adapter_config,
                        loop.checkpoint(self.setup.key))
        # Only now: a kill before this checkpoint resumes from one whose finalists still have their folders.
        kept = {finalist_dir(self.run_.path, f.step).name for f in loop.finalists}
        for folder in sorted((self.run_.path / FINALISTS_DIR).glob("step-*")):
            if folder.name not in kept:
                shutil.rmtree(folder, ignore_errors=True)

    def _interrupted(self, loop: LoopState) -> None:
        self._checkpoint(loop)
        atomic_write_json(self.run_.path / STATE_FILE, {**self.run_state, "status": "interrupted", "step": loop.step})
        raise TrainingInterrupted(f"training stopped at step {loop.step}/{self.setup.total_steps}; a checkpoint was saved "
                                  f"in {self.checkpoints_dir}",
                                  "run the same command again to resume (or add --resume); --no-resume starts over")

    def _finish(self, loop: LoopState) -> TrainResult:
        setup, run_dir = self.setup, self.run_.path
        if not setup.valid_rows or not self.best_dir.exists():
            write_dir_atomically(self.best_dir, lambda d: save_adapter(d, setup.model, setup.adapter_config))
        adapter_dir = write_dir_atomically(run_dir / "adapters", lambda d: copy_adapter(self.best_dir, d))
        pad_fraction = 1 - loop.real_tokens_mine / loop.padded_tokens if loop.padded_tokens else setup.pad_fraction
        result = TrainResult(run_dir, adapter_dir, loop.step, setup.total_steps, loop.best_val, loop.last_loss,
                             loop.trained_tokens, loop.tokens_per_second(), int(mx.get_peak_memory()), pad_fraction,
                             loop.stopped_early, loop.resumed_from, setup.truncated, loop.history, setup.batch_size,
                             setup.accumulation, setup.world, setup.checkpointing, setup.per_layer_rows,
                             loop.best_decision, [asdict(f) for f in loop.finalists])
        # With finalists to choose from, the run is finished once train() has shipped one: until then
        # a rerun resumes here and selects again (select.py keeps each finalist's scores).
        self.selection_pending = self.by_calls and len(loop.finalists) > 1 and setup.world == 1
        atomic_write_json(run_dir / STATE_FILE, {**self.run_state, "status": "selecting" if self.selection_pending
                                                 else "finished", "step": loop.step, "result": result.to_dict()})
        plot_loss(self.run_.metrics_path, run_dir / "loss.png")
        return result


class StepTotals(NamedTuple):
    loss: float  # weighted mean over the step's DM tokens
    loss_weight: float  # the sum of the loss weights (the DM-token count unless train.call_weight != 1)
    tokens: int  # every token of the step's rows, padding excluded
    trainable_tokens: int  # the DM tokens among them (the ones with a loss)


class _Accumulator:
    """The gradients of a step split into passes: token-weighted, summed, then summed over processes."""

    def __init__(self) -> None:
        self.grad, self.tokens, self.loss, self.real, self.trainable = None, 0.0, 0.0, 0, 0

    def done(self, loss: float, tokens: float) -> StepTotals:
        totals = StepTotals(loss, tokens, self.real, self.trainable)
        self.real = self.trainable = 0
        return totals

    def add(self, grad, weight: mx.array, loss: mx.array) -> None:
        grad = tree_map(lambda g: g * weight, grad)
        self.grad = grad if self.grad is None else tree_map(mx.add, self.grad, grad)
        self.tokens += weight.item()
        self.loss += loss.item() * weight.item()
        mx.eval(self.grad)

    def apply(self, setup: TrainingSetup, state: list) -> StepTotals:
        if setup.world > 1:
            self.grad = tree_map(lambda g: mx.distributed.all_sum(g, group=setup.group), self.grad)
            sums = mx.distributed.all_sum(mx.array([self.loss, self.tokens], dtype=mx.float32), group=setup.group)
            self.loss, self.tokens = sums.tolist()
        setup.optimizer.update(setup.model, tree_map(lambda g: g / max(self.tokens, 1.0), self.grad))
        mx.eval(state)
        finished = self.done(self.loss / max(self.tokens, 1.0), self.tokens)
        self.grad, self.tokens, self.loss = None, 0.0, 0.0
        return finished

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
    decision = [r for r in rows if r.get("decision_loss") is not None]
    if decision:  # the loss at the call and end-of-reply tokens: what select_by = "calls" watches
        axis.plot([r["step"] for r in decision], [r["decision_loss"] for r in decision], "s--",
                  label="decision loss (validation)")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (DM tokens)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
