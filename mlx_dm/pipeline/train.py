"""The training stage: a run folder (new, or the unfinished one of the same configuration and data),
then the trainer. Started by `mlx.launch`, process 0 writes the run and the others train beside it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..data.profiles import tools_prompt
from ..hardware import Hardware
from ..runs import Run, attach_log_file, new_run
from ..train.setup import find_resumable, run_key
from ..train.trainer import TrainResult, train
from .reporter import Reporter
from .settings import settle_memory_savings

CHARS_PER_TOKEN_PROSE = 4  # Gemma's tokenizer on English prose: about 4 characters a token


@dataclass(frozen=True)
class Trained:
    result: TrainResult
    config: Config  # what it trained with


def distributed_rank() -> tuple[int, int]:
    """(processes, this one's rank) of an `mlx.launch` group; (1, 0) when started alone."""
    import mlx.core as mx

    group = mx.distributed.init()
    return group.size(), group.rank()


def training_key(config: Config, dataset_dir: Path, base_path: Path, hardware: Hardware) -> str:
    """The trainer's run key for these settings as training would settle them."""
    config = settle_memory_savings(config, base_path, hardware)
    return run_key(config, base_path, (Path(dataset_dir) / "fingerprint.txt").read_text().strip())


def warn_if_the_tool_list_crowds_the_rows(config: Config, reporter: Reporter) -> None:
    """data.tools_in_prompt puts the tool list (~375 tokens for the default agent) in every row's
    system text: at a short train.max_seq_length little is left of the conversation it should
    teach (on the H200, seq 512 left ~140 tokens a row and the arm scored half the F1)."""
    tokens = len(tools_prompt(config.data.agent_tools, config.data.tools_in_prompt)) // CHARS_PER_TOKEN_PROSE
    if tokens * 3 > config.train.max_seq_length:
        reporter.warn(f"data.tools_in_prompt: the tool list takes about {tokens} of the {config.train.max_seq_length} "
                      "tokens of every row; raise train.max_seq_length (1024 or more) or turn the tool list off")


def run_training(config: Config, dataset_dir: Path, base_path: Path, resume: bool | None, hardware: Hardware,
                 reporter: Reporter) -> Trained:
    """Train; resumes an unfinished run of the same config and data unless `resume` is False."""
    config = settle_memory_savings(config, base_path, hardware)
    warn_if_the_tool_list_crowds_the_rows(config, reporter)
    key = run_key(config, base_path, (Path(dataset_dir) / "fingerprint.txt").read_text().strip())
    world, rank = distributed_rank()
    if world > 1:
        if resume:
            reporter.warn("--resume is not supported for distributed runs; starting a new one")
        resume = False
        if rank > 0:
            scratch = Path(tempfile.mkdtemp(prefix=f"mlx-dm-rank{rank}-"))
            return Trained(train(config, dataset_dir, base_path, Run(scratch, scratch.name)), config)
        reporter.note(f"distributed training: {world} processes, {config.train.batch_size} rows each per step")
    resume_dir = find_resumable(config.path(config.runs_dir), key) if resume is not False else None
    if resume is True and resume_dir is None:
        reporter.warn("--resume: no unfinished run with this configuration and data; starting a new one")
    if resume_dir is not None:
        run = Run(resume_dir, resume_dir.name)
        attach_log_file(resume_dir / "run.log")
        reporter.note(f"resuming {resume_dir}")
    else:
        run = new_run(config.path(config.runs_dir), "train")
    run.save_config(config.to_json())
    reporter.stage("train", "loading the base model and training", run.path)

    def update(record: dict) -> None:
        val = f" val {record['val_loss']:.3f}" if record.get("val_loss") is not None else ""
        val += f" decision {record['decision_loss']:.3f}" if record.get("decision_loss") is not None else ""
        status = (f"epoch {record['epoch']:.2f} loss {record['loss']:.3f}{val} lr {record['learning_rate']:.2e} "
                  f"{record['tokens_per_second']:.0f} tok/s mem {record['peak_memory_bytes'] / 2**20:.0f} MiB")
        reporter.progress("train", "train", record["step"], record["total_steps"], status)

    try:
        result = train(config, dataset_dir, base_path, run, resume_dir=resume_dir, progress=update,
                       selection_progress=lambda label, done, total: reporter.progress(
                           "train", label, done, total, f"{label}: choosing the adapter by its calls"))
    finally:
        reporter.finished("train")
    trained = Trained(result, config)
    reporter.result("training", trained)
    return trained
