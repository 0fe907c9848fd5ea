"""The `mlx-dm` command: one thin command per stage; the logic lives in the stage modules."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, supervise
from .config import Config, load_config
from .errors import MlxDmError
from .hardware import GIB, detect, recommend_profile
from .lock import project_lock
from .model.hub import TINY, TINY_VISION

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("mlx_dm")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn D&D scenario transcripts into an on-device Dungeon Master model (Gemma 3n, MLX, GGUF).")
data_app = typer.Typer(no_args_is_help=True, help="Scan, validate and build the scenario dataset.")
app.add_typer(data_app, name="data")
models_app = typer.Typer(no_args_is_help=True, help="Model versions in assets/models: list, show, promote, rollback.")
app.add_typer(models_app, name="models")

_state = {"debug": False, "project": Path(".")}


def _version(value: bool) -> None:
    if value:
        console.print(f"mlx-dm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    project: Path = typer.Option(Path("."), "--project", "-C", help="Project root (holds ai-training/, assets/, mlx-dm.toml)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug
    _state["project"] = project
    supervise.mark_stage("startup", project=project.resolve(), command=" ".join(["mlx-dm", *sys.argv[1:]]))
    if os.environ.get("MLX_RANK", "0") not in ("", "0"):
        console.quiet = True  # one voice for an `mlx.launch` group: process 0's
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


def writes_project(command: str):
    """Run the command under the project's writer lock (lock.py): one writer per project at a time.

    The processes an `mlx.launch` group starts beside process 0 write nothing and take no lock."""
    def decorate(func):
        @functools.wraps(func)
        def locked(*args, **kwargs):
            if os.environ.get("MLX_RANK", "0") not in ("", "0"):
                return func(*args, **kwargs)
            with project_lock(Path(_state["project"]), f"mlx-dm {command}"):
                return func(*args, **kwargs)
        return locked
    return decorate


def _config(**sections: dict) -> Config:
    return load_config(_state["project"], overrides=sections, hardware=detect())


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Report this machine: OS, chip, the device MLX uses and why, memory, disk, versions, profile."""
    import json

    supervise.mark_stage("doctor", "detecting the machine")
    hw = detect()
    profile = recommend_profile(hw)
    supervise.mark_stage("doctor", "llama.cpp load-and-generate check")
    smoke = llama_cpp_smoke()
    if json_out:
        console.print_json(json.dumps({"hardware": hw.to_dict(), "profile": profile.__dict__,
                                       "llama_cpp": {"passed": smoke.passed, "detail": smoke.detail}}))
        _raise_if_llama_cpp_broken(smoke)
        return
    table = Table(title="mlx-dm doctor", show_header=False)
    table.add_row("OS", f"{hw.os_name} {hw.os_version} ({hw.machine})")
    table.add_row("Chip", f"{hw.chip} ({hw.cpu_count} cores)")
    table.add_row("MLX device", f"[bold]{hw.device}[/bold] — {escape(hw.device_reason)}")
    mem_kind = "unified memory" if hw.unified_memory else "memory"
    table.add_row("CPU BLAS", escape(hw.cpu_blas))
    table.add_row("Memory", f"{hw.total_memory_bytes / GIB:.1f} GiB {mem_kind}, {hw.available_memory_bytes / GIB:.1f} GiB available")
    table.add_row("MLX memory limit", f"{hw.mlx_memory_limit_bytes / GIB:.1f} GiB (mx.get_memory_limit)")
    table.add_row("Free disk", f"{hw.free_disk_bytes / GIB:.1f} GiB")
    for name, version in hw.versions.items():
        table.add_row(name, version)
    table.add_row("Profile", f"[bold]{profile.name}[/bold]: batch {profile.batch_size}, sequence {profile.max_seq_length}, "
                  f"gradient checkpointing {'on' if profile.grad_checkpoint else 'off'}, "
                  f"4-bit base {'yes' if profile.quantize_base else 'no'} — {profile.reason}")
    from .llama.build import installed_build

    build = installed_build()
    table.add_row("llama.cpp build", escape(" ".join(build["cmake_args"])) if build else "not built by the bootstrap")
    table.add_row("llama.cpp check", ("[green]pass[/green]: " if smoke.passed else "[red]FAIL[/red]: ") + escape(smoke.detail))
    console.print(table)
    _raise_if_llama_cpp_broken(smoke)


def llama_cpp_smoke():
    """A small llama.cpp load-and-generate in a child process (llama/smoke.py)."""
    import tempfile

    from .llama.smoke import run_smoke, write_smoke_gguf

    with tempfile.TemporaryDirectory(prefix="mlx-dm-doctor-") as tmp:
        return run_smoke(write_smoke_gguf(Path(tmp) / "smoke.gguf"))


def _raise_if_llama_cpp_broken(smoke) -> None:
    from .errors import EnvironmentProblem
    from .llama.build import rebuild_command

    if not smoke.passed:
        raise EnvironmentProblem(f"llama.cpp failed its load-and-generate check: {smoke.detail}",
                                 f"rebuild it for this machine:\n  {rebuild_command()}")


# ---------------------------------------------------------------- data


def _scenarios_option() -> Optional[Path]:
    return typer.Option(None, "--scenarios", help="Scenario folder (default: data.scenarios_dir, ai-training/).")


def _scan(config: Config, scenarios: Optional[Path]):
    from .data.discover import scan

    root = Path(scenarios) if scenarios else config.path(config.data.scenarios_dir)
    return root, scan(root, config.data.max_file_bytes)


def _print_problems(problems, limit: int = 200) -> None:
    for problem in problems[:limit]:
        colour = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{colour}]{escape(problem.location())}: {problem.severity}[/{colour}] "
                      f"{escape(problem.message)}\n    fix: {escape(problem.hint)}")
    if len(problems) > limit:
        console.print(f"... and {len(problems) - limit} more (see problems.json in the dataset folder)")


@data_app.command("scan")
def data_scan(scenarios: Optional[Path] = _scenarios_option()) -> None:
    """List the scenario files found, in the order they are used."""
    config = _config()
    root, result = _scan(config, scenarios)
    table = Table(title=f"{root}")
    for column in ("file", "status", "turns", "calls"):
        table.add_column(column)
    for parsed in result.results:
        if parsed.scenario:
            table.add_row(parsed.path, "scenario", str(len(parsed.scenario.turns)), str(len(parsed.scenario.calls)))
        elif parsed.skipped_reason:
            table.add_row(parsed.path, f"[dim]skipped: {parsed.skipped_reason}[/dim]", "", "")
        else:
            table.add_row(parsed.path, f"[red]rejected: {escape(parsed.errors[0].message)}[/red]", "", "")
    console.print(table)
    console.print(f"{len(result.accepted)} scenarios, {len(result.skipped)} not scenarios, {len(result.rejected)} rejected")


@data_app.command("validate")
def data_validate(
    scenarios: Optional[Path] = _scenarios_option(),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
) -> None:
    """Check every scenario file; exits non-zero when a file is rejected."""
    from .data.dataset import _promote_warnings
    from .errors import DataError

    config = _config(data={"strict": strict or None})
    root, result = _scan(config, scenarios)
    if config.data.strict:
        _promote_warnings(result)
    _print_problems(result.problems)
    console.print(f"[bold]{len(result.accepted)} accepted[/bold], {len(result.rejected)} rejected, "
                  f"{len(result.skipped)} skipped (not scenarios), "
                  f"{sum(p.severity == 'warning' for p in result.problems)} warnings")
    if result.rejected:
        raise DataError(f"{len(result.rejected)} scenario file(s) rejected in {root}",
                        "fix the errors listed above; the other files are still usable")


def build_dataset_from_config(config: Config, scenarios: Optional[Path] = None):
    from .data.dataset import build_dataset, write_dataset

    root = Path(scenarios) if scenarios else config.path(config.data.scenarios_dir)
    dataset = build_dataset(
        root, config.data.validation_fraction, config.data.seed, config.data.strict,
        config.data.target_mix if config.data.balance else None, config.data.agent_tools, config.data.max_file_bytes,
    )
    out = write_dataset(dataset, config.path(config.data.dataset_dir))
    if scenarios is None:  # the project's own scenarios: keep its tool vocabulary and docs/tools.md current
        from .data.vocabulary import extend_vocabulary, write_tools_doc

        new, vocabulary = extend_vocabulary(Path(config.project_dir), dataset.vocabulary, config.data.agent_tools)
        for name in new:
            info = vocabulary[name]
            console.print(f"[yellow]new tool[/yellow] `{name}` (first in {info['first_file']}:{info['first_line']}, "
                          f"{info['count']} calls; the app's agent {'acts on' if info['agent_acts'] else 'drops'} it)")
        write_tools_doc(Path(config.project_dir), vocabulary, config.data.agent_tools)
    return dataset, out


def _print_summary(dataset) -> None:
    s = dataset.summary
    table = Table(title="Dataset")
    for column in ("files", "accepted", "not scenarios", "rejected", "duplicates", "warnings", "train", "balanced", "valid"):
        table.add_column(column, justify="right")
    table.add_row(*map(str, (s.files, s.accepted, len(s.skipped), len(s.rejected), len(s.duplicates), s.warnings,
                             s.train, s.train_balanced, s.valid)))
    console.print(table)
    cats = Table(title="Categories (train)")
    for column in ("category", "before", "after balancing"):
        cats.add_column(column)
    for category in ("combat", "roleplay", "exploration"):
        cats.add_row(category, str(s.categories_before.get(category, 0)), str(s.categories_after.get(category, 0)))
    console.print(cats)
    tools = Table(title="Tools")
    for column in ("tool", "calls", "app agent"):
        tools.add_column(column)
    for name, info in dataset.vocabulary.items():
        tools.add_row(name, str(info.count), "acts" if info.agent_acts else "[yellow]drops[/yellow]")
    console.print(tools)
    for path, reason in s.rejected.items():
        console.print(f"[red]rejected[/red] {escape(path)}: {escape(reason)}")


@data_app.command("stats")
def data_stats(scenarios: Optional[Path] = _scenarios_option()) -> None:
    """Counts of files, turns, categories and tools, without writing anything."""
    from .data.dataset import build_dataset

    config = _config()
    root = Path(scenarios) if scenarios else config.path(config.data.scenarios_dir)
    dataset = build_dataset(root, config.data.validation_fraction, config.data.seed, config.data.strict,
                            config.data.target_mix if config.data.balance else None, config.data.agent_tools,
                            config.data.max_file_bytes)
    _print_summary(dataset)


@data_app.command("build")
@writes_project("data build")
def data_build(
    scenarios: Optional[Path] = _scenarios_option(),
    out: Optional[Path] = typer.Option(None, "--out", help="Dataset folder (default: data.dataset_dir)."),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the train/validation split."),
    validation_fraction: Optional[float] = typer.Option(None, "--validation-fraction", min=0.0, max=0.9, help="Share of scenarios (per category) held out for validation."),
    no_balance: bool = typer.Option(False, "--no-balance", help="Keep the category mix as it is."),
) -> None:
    """Parse, validate, categorise, balance, split and render the scenarios into a dataset folder."""
    config = _config(data={"strict": strict or None, "seed": seed, "validation_fraction": validation_fraction,
                           "dataset_dir": str(out) if out else None, "balance": False if no_balance else None})
    dataset, path = build_dataset_from_config(config, scenarios)
    _print_problems(dataset.problems, limit=30)
    _print_summary(dataset)
    console.print(f"[green]dataset written to {path}[/green] (fingerprint {dataset.summary.fingerprint[:12]})")


@app.command("tiny-model")
def tiny_model(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write (default .mlx-dm/models/tiny-gemma3n)."),
    scenarios: Optional[Path] = _scenarios_option(),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cached copy is up to date."),
) -> None:
    """Build the offline tiny Gemma 3n (random weights, real architecture, real tokenizer)."""
    from .model.tiny import TinySpec, build_tiny_model

    config = _config()
    target = out or config.path(".mlx-dm/models/tiny-gemma3n")
    root = scenarios or config.path(config.data.scenarios_dir)
    path = build_tiny_model(target, root, TinySpec(seed=seed), force=force)
    size = sum(p.stat().st_size for p in path.iterdir())
    console.print(f"[green]tiny Gemma 3n at {path}[/green] ({size / 1e6:.1f} MB)")


def _train_overrides(epochs, max_steps, batch_size, learning_rate, max_seq_length, lora_rank, seed) -> dict:
    return {"epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "max_seq_length": max_seq_length, "lora_rank": lora_rank, "seed": seed}


def distributed_rank() -> tuple[int, int]:
    """(processes, this one's rank) of an `mlx.launch` group; (1, 0) when started alone."""
    import mlx.core as mx

    group = mx.distributed.init()
    return group.size(), group.rank()


def settle_memory_savings(config: Config, base_path: Path) -> None:
    """Drop the profile's 4-bit base and checkpointing for a base that fits without them."""
    from .hardware import fits_without_savings

    if (config.model.quantize_base or config.train.grad_checkpoint) and fits_without_savings(detect(), base_path):
        # The hardware profile assumes Gemma 3n E2B; a small base needs neither saving, unless
        # mlx-dm.toml asks for it.
        from .config import explicit_settings

        chosen = explicit_settings(config.project_dir)
        if "model.quantize_base" not in chosen:
            config.model.quantize_base = False
        if "train.grad_checkpoint" not in chosen:
            config.train.grad_checkpoint = False


def run_training(config: Config, dataset_dir: Path, base_path: Path, resume: Optional[bool]):
    """Train with a rich progress bar; resumes an unfinished run of the same config and data by default."""
    settle_memory_savings(config, base_path)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .runs import Run, attach_log_file, new_run
    from .train.trainer import find_resumable, run_key, train

    fingerprint = (dataset_dir / "fingerprint.txt").read_text().strip()
    key = run_key(config, base_path, fingerprint)
    world, rank = distributed_rank()
    if world > 1:
        # Started by `mlx.launch`: process 0 writes the run; the others train beside it silently.
        if resume:
            console.print("[yellow]--resume is not supported for distributed runs; starting a new one[/yellow]")
        resume = False
        if rank > 0:
            import tempfile

            scratch = Path(tempfile.mkdtemp(prefix=f"mlx-dm-rank{rank}-"))
            return train(config, dataset_dir, base_path, Run(scratch, scratch.name))
        console.print(f"distributed training: {world} processes, {config.train.batch_size} rows each per step")
    resume_dir = find_resumable(config.path(config.runs_dir), key) if resume is not False else None
    if resume is True and resume_dir is None:
        console.print("[yellow]--resume: no unfinished run with this configuration and data; starting a new one[/yellow]")
    if resume_dir is not None:
        run = Run(resume_dir, resume_dir.name)
        attach_log_file(resume_dir / "run.log")
        console.print(f"resuming {resume_dir}")
    else:
        run = new_run(config.path(config.runs_dir), "train")
    run.save_config(config.to_json())
    supervise.mark_stage("train", "loading the base model and training", run_dir=run.path, log=run.path / "run.log")
    columns = [TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=None, status="loading model")

        def update(record: dict) -> None:
            val = f" val {record['val_loss']:.3f}" if record.get("val_loss") is not None else ""
            status = (f"epoch {record['epoch']:.2f} loss {record['loss']:.3f}{val} lr {record['learning_rate']:.2e} "
                      f"{record['tokens_per_second']:.0f} tok/s mem {record['peak_memory_bytes'] / 2**20:.0f} MiB")
            bar.update(task, completed=record["step"], total=record["total_steps"], status=status)

        result = train(config, dataset_dir, base_path, run, resume_dir=resume_dir, progress=update)
    console.print(f"[green]adapter[/green] {result.adapter_dir}  (steps {result.steps}/{result.total_steps}, "
                  f"best val loss {result.best_val_loss if result.best_val_loss is not None else 'n/a'}, "
                  f"{result.tokens_per_second:.0f} tok/s, peak {result.peak_memory_bytes / 2**20:.0f} MiB, "
                  f"padding {result.padding_fraction:.1%}{', stopped early' if result.stopped_early else ''})")
    if result.per_layer_rows and result.per_layer_rows[0] < result.per_layer_rows[1]:
        kept, total = result.per_layer_rows
        console.print(f"per-layer embeddings: {kept:,} of {total:,} rows held in memory (the token ids of your data)")
    if result.micro_batch_size * result.grad_accumulation > 1:
        processes = f" × {result.processes} processes" if result.processes > 1 else ""
        probed = result.grad_accumulation > config.train.grad_accumulation  # only the probe raises it
        console.print(f"batch: {result.micro_batch_size} rows per pass × {result.grad_accumulation} accumulated"
                      f"{processes}{' (auto_batch probed the memory)' if probed else ''}")
    if result.grad_checkpoint and not config.train.grad_checkpoint:
        console.print("gradient checkpointing: on (one row did not fit the memory budget without it)")
    return result


# Options shared by `train` and `run`; None means "from the profile, then mlx-dm.toml".
BASE_OPTION = typer.Option(None, "--base", help="Base model: a Hugging Face repo id, a local folder, 'tiny', 'tiny-vision' (with vision and audio towers), or 'gemma3-270m' (real weights, optional package).")
TINY_BASES = (TINY, TINY_VISION)  # the built-in offline models
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


@app.command("train")
@writes_project("train")
def train_command(
    base: Optional[str] = BASE_OPTION,
    dev: bool = DEV_OPTION,
    epochs: Optional[int] = EPOCHS_OPTION,
    max_steps: Optional[int] = MAX_STEPS_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    learning_rate: Optional[float] = LEARNING_RATE_OPTION,
    max_seq_length: Optional[int] = MAX_SEQ_LENGTH_OPTION,
    lora_rank: Optional[int] = LORA_RANK_OPTION,
    seed: Optional[int] = SEED_OPTION,
    resume: Optional[bool] = RESUME_OPTION,
) -> None:
    """Build the dataset and train LoRA adapters on the base model."""
    from .model.hub import resolve_base

    explicit = _train_overrides(epochs, max_steps, batch_size, learning_rate, max_seq_length, lora_rank, seed)
    config = _config(train=explicit, model={"base_model": "tiny" if dev else base})
    if dev:
        apply_dev_profile(config, explicit)
    _dataset, dataset_dir = build_dataset_from_config(config)
    base_path = resolve_base(config.model.base_model, Path(config.project_dir), config.path(config.data.scenarios_dir))
    run_training(config, dataset_dir, base_path, resume)


DEV_PROFILE = {"max_seq_length": 256, "max_steps": 24, "epochs": 1, "batch_size": 2, "learning_rate": 1e-3}


def apply_dev_profile(config: Config, explicit: dict) -> None:
    """The tiny model on a 2-core CPU in minutes: short rows, a capped number of steps.

    Flags given on the command line still win. With model.vision, the tiny model with towers."""
    config.model.base_model = "tiny-vision" if config.model.vision else "tiny"
    config.model.quantize_base = False
    config.train.grad_checkpoint = False
    for name, value in DEV_PROFILE.items():
        if explicit.get(name) is None:
            setattr(config.train, name, value)
    config.train.steps_per_eval = min(config.train.steps_per_eval, 8)
    config.train.steps_per_checkpoint = min(config.train.steps_per_checkpoint, 8)
    apply_dev_validation(config)


def apply_dev_validation(config: Config) -> None:
    """Scores without quality thresholds on a short, balanced set of cases (MLX decodes the tiny
    model at ~15 tokens/s on 2 CPU cores; the GGUF at ~600)."""
    config.validate.quality_thresholds = False
    config.validate.max_tokens = min(config.validate.max_tokens, 32)
    config.validate.max_cases = config.validate.max_cases or 12


def _base_for_adapter(config: Config, adapter_dir: Path, base: Optional[str]) -> Path:
    """The base checkpoint an adapter was trained on: --base, else the run's config.json, else the config's."""
    import json as _json

    from .model.hub import resolve_base

    run_config = adapter_dir.parent / "config.json"
    if base is None and run_config.exists():
        base = _json.loads(run_config.read_text())["model"]["base_model"]
    config.model.base_model = base or config.model.base_model
    return resolve_base(config.model.base_model, Path(config.project_dir), config.path(config.data.scenarios_dir))


def _current_model(config: Config) -> Optional[dict]:
    """The manifest entry of the model the app uses now, or None when assets/models has none."""
    from .export.place import load_manifest, models_dir_of

    return load_manifest(models_dir_of(Path(config.project_dir)))["current"]


def _latest_adapter(config: Config) -> Path:
    from .errors import ExportError

    runs = config.path(config.runs_dir)
    candidates = sorted(runs.glob("*/adapters/adapters.safetensors")) if runs.is_dir() else []
    if not candidates:
        raise ExportError(f"no trained adapter in {runs}", "train first: `mlx-dm train` (or `npm run train`)")
    return candidates[-1].parent


def default_quant(base_path: Path) -> str:
    """Q4_K_M for Gemma 3n (what fits the phone budget). Q8_0 for small Gemma 3 models: on the real
    Gemma 3 270M, Q4_K_M lost 21 points of tool-call F1 against the tuned model and Q8_0 one
    (docs/real-model/), for 292 MB instead of 253."""
    import json as _json

    from .hardware import checkpoint_bytes

    config = _json.loads((Path(base_path) / "config.json").read_text())
    small = checkpoint_bytes(base_path) < 2e9 * (2 if config.get("torch_dtype") == "float32" else 1)
    return "Q8_0" if config.get("model_type") != "gemma3n" and small else "Q4_K_M"


def model_name(base_model: str) -> str:
    if base_model in TINY_BASES:
        return "dm-" + base_model.replace("tiny", "tiny-gemma3n")
    if base_model == "gemma3-270m":
        return "dm-gemma3-270m"
    return "dm-" + base_model.split("/")[-1].lower().replace("-it", "").replace("_", "-")


def run_export(config: Config, base_path: Path, adapter: Path, quant: str, n_ctx: int, vision: bool,
               size_budget_gb: float = 2.0):
    from .export.pipeline import ExportSpec, export_model

    run_dir = adapter.parent

    def say(text: str) -> None:
        supervise.mark_stage("export", text, run_dir=run_dir, log=run_dir / "run.log")
        log.info("export: %s", text)
        console.print(f"[bold]export[/bold] {escape(text)}")

    spec = ExportSpec(base_path, adapter, run_dir / "export", Path(config.project_dir), config.path(config.data.dataset_dir),
                      model_name(config.model.base_model), config.model.base_model, run_dir.name, quant, n_ctx, vision,
                      size_budget_gb * 1e9 if size_budget_gb > 0 else None)
    result = export_model(spec, say=say)
    for parity in result.parity:
        console.print(f"parity {Path(parity.gguf).name}: argmax agreement {parity.argmax_agreement:.3f}, "
                      f"max logit diff {parity.max_logit_diff:.4f}, greedy equal {parity.greedy_equal}/{parity.greedy_total}")
    placed = result.placed
    console.print(f"stored {placed.version}: {placed.gguf_path} ({placed.size_bytes / 1e6:.1f} MB, {placed.quant}); "
                  f"report: {run_dir / 'export' / 'export-report.md'}")
    return result


def validate_and_promote(config: Config, placed, adapter_dir: Optional[Path], base_path: Optional[Path], out_dir: Path,
                         validated: bool = False):
    """Validate a stored version against the app's current model; promote it only when it passes.

    `validated`: it passed in an earlier, interrupted run; only the promotion is left."""
    from .errors import ValidationFailed
    from .export.place import cactus_snippet, promote, prune_versions, update_version

    gguf = config.path(placed.gguf_path)
    current = _current_model(config)
    previous = config.path(current["gguf_path"]) if current else None
    if not validated:
        supervise.mark_stage("validation", f"scoring {gguf.name}", run_dir=out_dir.parent, log=out_dir.parent / "run.log")
        try:
            report = run_validation_stage(config, gguf, adapter_dir, base_path, out_dir,
                                          previous if previous and previous.is_file() else None)
        except ValidationFailed:
            update_version(Path(config.project_dir), placed, status="rejected", validation=str(out_dir / "validation.md"))
            console.print(f"[yellow]{placed.version} is kept in assets/models/versions but not used: the app stays on "
                          f"{current['version'] if current else 'no model'}[/yellow]")
            raise
        update_version(Path(config.project_dir), placed, status="validated", validation=str(out_dir / "validation.md"),
                       scores={k: report.evaluations[0].overall[k] for k in ("tool_f1", "format_compliance")} if report.evaluations else {})
    supervise.mark_stage("promotion", placed.version, run_dir=out_dir.parent, log=out_dir.parent / "run.log")
    promoted = promote(Path(config.project_dir), placed.version)
    removed = prune_versions(Path(config.project_dir), config.model.keep_versions)
    console.print(f"[green]model[/green] {promoted.gguf_path} ({promoted.size_bytes / 1e6:.1f} MB, {promoted.quant}, "
                  f"{promoted.version}) is now the app's model" + (f"; pruned {', '.join(removed)}" if removed else ""))
    console.print("[bold]cactus.ts[/bold] (also in assets/models/cactus-config.ts and cactus-config.json):")
    console.print(escape(cactus_snippet(promoted)), soft_wrap=True)  # exact lines, never wrapped
    return promoted


@app.command("export")
@writes_project("export")
def export_command(
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A run's adapters/ folder (default: the newest run)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model the adapter was trained on (default: from the run)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="Q4_K_M (Gemma 3n default), Q8_0 (default under 1B parameters), Q5_K_M, Q4_0, IQ4_XS, F16, ..."),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="Context length the app will use."),
    vision: bool = VISION_OPTION,
    size_budget: float = typer.Option(2.0, "--size-budget", help="Largest GGUF in GB (0: no limit); Q4_K_M over it gets a smaller per-tensor mix."),
) -> None:
    """Fuse the adapter, convert with llama.cpp, quantise, check, and place the GGUF in assets/models."""
    config = _config(validate={"n_ctx": n_ctx})
    adapter_dir = adapter or _latest_adapter(config)
    base_path = _base_for_adapter(config, adapter_dir, base)
    if config.model.base_model in TINY_BASES:
        apply_dev_validation(config)
    result = run_export(config, base_path, adapter_dir, quant or default_quant(base_path), n_ctx,
                        vision or config.model.vision, size_budget)
    validate_and_promote(config, result.placed, adapter_dir, base_path,
                         adapter_dir.parent / f"validation-{result.placed.version}")


@app.command("run")
@writes_project("run")
def run_command(
    base: Optional[str] = BASE_OPTION,
    dev: bool = DEV_OPTION,
    epochs: Optional[int] = EPOCHS_OPTION,
    max_steps: Optional[int] = MAX_STEPS_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    learning_rate: Optional[float] = LEARNING_RATE_OPTION,
    max_seq_length: Optional[int] = MAX_SEQ_LENGTH_OPTION,
    lora_rank: Optional[int] = LORA_RANK_OPTION,
    seed: Optional[int] = SEED_OPTION,
    resume: Optional[bool] = RESUME_OPTION,
    quant: Optional[str] = typer.Option(None, "--quant", help="GGUF type (default: Q4_K_M for Gemma 3n, Q8_0 under 1B parameters)."),
    n_ctx: int = typer.Option(2048, "--n-ctx", help="Context length written to the Cactus config and used by validation."),
    validate_only: bool = typer.Option(False, "--validate-only", help="Validate the data and the current model; no training."),
    incremental: Optional[bool] = typer.Option(None, "--incremental/--full", help="Continue from the app's model on the new scenarios plus a replay of the old (default: when scenarios were only added)."),
    force: bool = typer.Option(False, "--force", help="Train even when no scenario changed since the app's model."),
    vision: bool = VISION_OPTION,
) -> None:
    """The whole job: scenarios → dataset → LoRA training → GGUF in assets/models with the Cactus config."""
    from .model.hub import resolve_base

    explicit = _train_overrides(epochs, max_steps, batch_size, learning_rate, max_seq_length, lora_rank, seed)
    config = _config(train=explicit, model={"base_model": base, "vision": vision or None}, validate={"n_ctx": n_ctx})
    if dev:
        apply_dev_profile(config, explicit)
    config_table = Table(title="configuration", show_header=False)
    config_table.add_row("base model", config.model.base_model)
    for key in ("epochs", "max_steps", "batch_size", "max_seq_length", "learning_rate", "lora_rank", "compute_dtype"):
        config_table.add_row(key, str(getattr(config.train, key)))
    console.print(config_table)
    console.print("[bold]1/4 data[/bold]")
    dataset, dataset_dir = build_dataset_from_config(config)
    s = dataset.summary
    console.print(f"{s.accepted} scenarios ({s.train} train, {s.valid} validation), {len(s.rejected)} rejected, "
                  f"{s.warnings} warnings; report {dataset_dir / 'report.md'}")
    if validate_only:
        current = _current_model(config)
        if current is None:
            console.print("no model in assets/models yet: data validated only")
            return
        gguf = config.path(current["gguf_path"])
        adapter_dir, base_path = _run_of_model(config, current)
        from .runs import new_run

        run_validation_stage(config, gguf, adapter_dir, base_path, new_run(config.path(config.runs_dir), "validate").path,
                             _previous_model(config, gguf))
        return
    plan = plan_retraining(config, dataset_dir, incremental, force)
    if plan is None:
        return
    dataset_dir = plan
    base_path = resolve_base(config.model.base_model, Path(config.project_dir), config.path(config.data.scenarios_dir))
    resumed = finished_run_to_resume(config, dataset_dir, base_path) if resume is not False else None
    if resumed is not None:
        from .runs import attach_log_file

        attach_log_file(resumed.run_dir / "run.log")
        console.print(f"training already finished in {resumed.run_dir}; resuming at {resumed.stage}")
        adapter_dir = resumed.adapter_dir
    else:
        console.print(f"[bold]2/4 train[/bold] on {base_path}")
        adapter_dir = run_training(config, dataset_dir, base_path, resume).adapter_dir
    if resumed is None or resumed.stage == "export":
        console.print("[bold]3/4 export[/bold]")
        placed = run_export(config, base_path, adapter_dir, quant or default_quant(base_path), n_ctx,
                            vision=config.model.vision).placed
    else:
        from .export.place import placed_from_entry

        placed = placed_from_entry(resumed.version)
        console.print(f"[bold]3/4 export[/bold] done earlier: {placed.version} ({placed.gguf_path})")
    console.print("[bold]4/4 validate[/bold]")
    validate_and_promote(config, placed, adapter_dir, base_path, adapter_dir.parent / "validation",
                         validated=resumed is not None and resumed.stage == "promotion")


def finished_run_to_resume(config: Config, dataset_dir: Path, base_path: Path):
    """A finished training of this exact configuration and data whose model has not reached the app."""
    from .pipeline.resume import finished_training
    from .train.trainer import run_key

    settle_memory_savings(config, base_path)  # as training would: the run key covers these settings
    key = run_key(config, base_path, (dataset_dir / "fingerprint.txt").read_text().strip())
    return finished_training(config.path(config.runs_dir), key, Path(config.project_dir))


def plan_retraining(config: Config, dataset_dir: Path, incremental: Optional[bool], force: bool) -> Optional[Path]:
    """Compare the scenarios with those the app's model saw: stop, train incrementally, or train in full.

    Returns the dataset folder to train on, or None when there is nothing to do."""
    import json as _json

    from .errors import ConfigError
    from .export.place import find_version
    from .incremental import data_changes, incremental_dataset

    current = _current_model(config)
    same_base = current is not None and current["base_model"] == config.model.base_model
    stored = config.path(find_version(Path(config.project_dir), current["version"])["gguf_path"]).parent if current else None
    seen_file = stored / "data-files.json" if stored else None
    if not same_base or seen_file is None or not seen_file.exists():
        if incremental:
            raise ConfigError("--incremental needs an app model trained on this base with its adapter and data record",
                              "run without --incremental (a full training)")
        return dataset_dir
    changes = data_changes(_json.loads(seen_file.read_text()), _json.loads((dataset_dir / "files.json").read_text()))
    console.print(f"data: {changes.summary()} ({current['version']})")
    for label, paths in (("new", changes.new), ("changed", changes.changed), ("removed", changes.removed)):
        for path in paths[:20]:
            console.print(f"  {label}: {path}")
    if changes.unchanged and not force:
        console.print(f"[green]{current['version']} was trained on exactly these scenarios: nothing to do[/green] "
                      "(--force trains again)")
        return None
    adapter = stored / "adapters"
    if incremental is None:
        incremental = changes.additions_only and (adapter / "adapters.safetensors").exists()
    if not incremental:
        return dataset_dir
    if not (adapter / "adapters.safetensors").exists():
        raise ConfigError(f"{current['version']} has no stored adapter to continue from", "train in full: --full")
    config.train.init_adapter = str(adapter)
    out = incremental_dataset(dataset_dir, dataset_dir.parent / "dataset-incremental", changes.new,
                              config.train.replay_fraction, config.data.seed)
    plan = _json.loads((out / "incremental.json").read_text())
    console.print(f"incremental: continuing from {current['version']}'s adapter on {len(plan['new'])} new scenarios "
                  f"+ {len(plan['replayed'])} replayed")
    return out


def _previous_model(config: Config, gguf: Path) -> Optional[Path]:
    """What `gguf` is compared with: the app's current model, or for the current one the one promoted before it."""
    from .export.place import load_manifest, models_dir_of

    manifest = load_manifest(models_dir_of(Path(config.project_dir)))
    current = manifest["current"]
    if current is None:
        return None
    if config.path(current["gguf_path"]) != gguf.resolve():
        return config.path(current["gguf_path"])
    earlier = [v for v in manifest["versions"] if len(manifest["history"]) > 1 and v["version"] == manifest["history"][-2]]
    return config.path(earlier[0]["gguf_path"]) if earlier and config.path(earlier[0]["gguf_path"]).is_file() else None


def run_validation_stage(config: Config, gguf: Path, adapter_dir: Optional[Path], base_path: Optional[Path],
                         out_dir: Path, previous: Optional[Path] = None):
    """Score the GGUF (beside the tuned and base MLX models and the previous version) and check it for the app."""
    import json as _json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .chat import MlxBackend
    from .evaluate.cases import suite_cases, validation_cases
    from .evaluate.validate import BASE_MLX, TUNED_MLX, raise_if_failed, run_validation, write_report

    settings = config.validate
    dataset_dir = config.path(config.data.dataset_dir)
    cases = validation_cases(dataset_dir) + suite_cases()
    vocabulary = set(_json.loads((dataset_dir / "vocabulary.json").read_text())) if (dataset_dir / "vocabulary.json").exists() else set()
    from .dice import DICE_TOOLS

    vocabulary |= set(DICE_TOOLS) | {t.lower() for t in config.data.agent_tools}
    training_texts = [m["content"] for name in ("train.jsonl", "valid.jsonl") if (dataset_dir / name).exists()
                      for line in (dataset_dir / name).read_text(encoding="utf-8").splitlines()
                      for m in _json.loads(line)["messages"] if m["role"] == "assistant"]
    backends = []
    if adapter_dir is not None and base_path is not None:
        backends.append((TUNED_MLX, lambda: MlxBackend(base_path, adapter_dir)))
        if settings.compare_base:
            backends.append((BASE_MLX, lambda: MlxBackend(base_path)))
    columns = [TextColumn("[bold]validate[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        report = run_validation(gguf, cases, vocabulary, list(config.data.agent_tools), training_texts, settings,
                                backends, previous, progress)
    path = write_report(report, out_dir)
    table = Table(title=f"validation of {gguf.name}")
    for column in ("check", "result", "value", "threshold"):
        table.add_column(column)
    for check in report.checks:
        value = f"{check.value:.3f}" if isinstance(check.value, float) else str(check.value if check.value is not None else "")
        threshold = f"{check.threshold:.3f}" if isinstance(check.threshold, float) else str(check.threshold if check.threshold is not None else "")
        table.add_row(check.name, "[green]pass[/green]" if check.passed else "[red]FAIL[/red]", value, threshold)
    console.print(table)
    for evaluation in report.evaluations:
        o = evaluation.overall
        console.print(f"{evaluation.label}: tool F1 {o['tool_f1'] if o['tool_f1'] is None else round(o['tool_f1'], 3)}, "
                      f"format {o['format_compliance']:.3f}, context recall "
                      f"{'n/a' if o['context_recall'] is None else round(o['context_recall'], 3)} ({evaluation.seconds:.0f} s)")
    for note in report.notes:
        console.print(f"[yellow]note[/yellow] {note}")
    console.print(f"report: {path}")
    raise_if_failed(report, path)
    return report


def _run_of_model(config: Config, entry: dict) -> tuple[Optional[Path], Optional[Path]]:
    """The adapter (stored with the version, else in its run) and the base a model came from."""
    from .model.hub import resolve_base

    if not entry.get("gguf_path") or not entry.get("base_model"):
        return None, None
    stored = config.path(entry["gguf_path"]).parent / "adapters"
    if entry.get("version"):
        from .export.place import find_version

        try:
            stored = config.path(find_version(Path(config.project_dir), entry["version"])["gguf_path"]).parent / "adapters"
        except MlxDmError:
            pass
    adapter = stored if (stored / "adapters.safetensors").exists() else config.path(config.runs_dir) / entry.get("run", "") / "adapters"
    if not (adapter / "adapters.safetensors").exists():
        return None, None
    try:
        return adapter, resolve_base(entry["base_model"], Path(config.project_dir), config.path(config.data.scenarios_dir))
    except MlxDmError:
        return None, None


@app.command("validate")
@writes_project("validate")
def validate_command(
    model: Optional[Path] = typer.Option(None, "--model", help="The GGUF to validate (default: the current model in assets/models)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="Its run's adapters/ folder, to score the MLX models beside it (default: from the manifest)."),
    max_cases: Optional[int] = typer.Option(None, "--max-cases", min=0, help="Score only this many cases (0: all)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Most tokens generated per DM reply (validate.max_tokens)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", help="Context length the app uses."),
    phone_ram_gb: Optional[float] = typer.Option(None, "--phone-ram-gb", help="RAM of the smallest phone to support."),
    no_base: bool = typer.Option(False, "--no-base", help="Do not score the base model."),
    dev: bool = typer.Option(False, "--dev", help="Tiny dev model: report scores without quality thresholds."),
) -> None:
    """Score a GGUF on the validation split and the D&D suite, and check it against the app (Cactus)."""
    from .errors import ModelError
    from .runs import new_run

    config = _config(validate={"max_cases": max_cases, "max_tokens": max_tokens, "n_ctx": n_ctx,
                               "phone_ram_gb": phone_ram_gb, "compare_base": False if no_base else None})
    if dev:
        apply_dev_validation(config)
    build_dataset_from_config(config)
    current = _current_model(config)
    if model is None:
        if current is None:
            raise ModelError("no model given and none in assets/models", "pass --model FILE.gguf, or train first (`npm run train`)")
        model = config.path(current["gguf_path"])
    if not model.is_file():
        raise ModelError(f"no GGUF file at {model}", "pass --model with a .gguf from assets/models (see manifest.json)")
    if current is not None and config.path(current["gguf_path"]) == model.resolve():
        entry = current
    else:
        from .export.place import load_manifest, models_dir_of

        versions = load_manifest(models_dir_of(Path(config.project_dir)))["versions"]
        entry = next((v for v in versions if config.path(v["gguf_path"]) == model.resolve()), {})
    if adapter is not None:
        adapter_dir, base_path = adapter, _base_for_adapter(config, adapter, None)
    else:
        adapter_dir, base_path = _run_of_model(config, entry)
    out = new_run(config.path(config.runs_dir), "validate").path
    run_validation_stage(config, model, adapter_dir, base_path, out, _previous_model(config, model))


@models_app.command("list")
def models_list() -> None:
    """Every stored version, its status and scores; the app's current one is marked."""
    from .export.place import load_manifest, models_dir_of

    config = _config()
    manifest = load_manifest(models_dir_of(Path(config.project_dir)))
    if not manifest["versions"]:
        console.print("no model versions yet: train first (`npm run train`)")
        return
    current = manifest["current"]["version"] if manifest["current"] else None
    table = Table(title="assets/models")
    for column in ("", "version", "status", "quant", "size", "tool F1", "created"):
        table.add_column(column, no_wrap=True)
    for entry in manifest["versions"]:
        f1 = (entry.get("scores") or {}).get("tool_f1")
        table.add_row("*" if entry["version"] == current else "", entry["version"], entry.get("status", ""), entry["quant"],
                      f"{entry['size_bytes'] / 1e6:.1f} MB", "" if f1 is None else f"{f1:.3f}", entry["created"][:16])
    console.print(table)


@models_app.command("show")
def models_show(version: str = typer.Argument(..., help="e.g. v2")) -> None:
    """One version's manifest entry (paths, sha256, data fingerprint, validation report)."""
    import json as _json

    from .export.place import find_version

    config = _config()
    console.print_json(_json.dumps(find_version(Path(config.project_dir), version)))


@models_app.command("promote")
@writes_project("models promote")
def models_promote(version: str = typer.Argument(..., help="The version to put in the app, e.g. v2."),
                   force: bool = typer.Option(False, "--force", help="Promote a version that has not passed validation.")) -> None:
    """Make a stored version the app's model (GGUF, manifest and Cactus config, each replaced atomically)."""
    from .errors import ValidationFailed
    from .export.place import find_version, promote

    config = _config()
    entry = find_version(Path(config.project_dir), version)
    if entry.get("status") not in ("validated", "promoted", "rolled back") and not force:
        raise ValidationFailed(f"{entry['version']} is '{entry.get('status')}', not validated",
                               f"run `mlx-dm validate --model {entry['gguf_path']}`, or pass --force")
    placed = promote(Path(config.project_dir), entry["version"])
    console.print(f"[green]{placed.version}[/green] is the app's model: {placed.gguf_path}")


@models_app.command("rollback")
@writes_project("models rollback")
def models_rollback() -> None:
    """Back to the version promoted before the current one."""
    from .export.place import rollback

    config = _config()
    placed = rollback(Path(config.project_dir))
    console.print(f"[green]rolled back[/green] to {placed.version}: {placed.gguf_path}")


@app.command("bench")
@writes_project("bench")
def bench_command(
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the current model's base, else 'tiny')."),
    steps: int = typer.Option(6, "--steps", min=1, help="Optimizer steps per training run."),
    seq: int = typer.Option(256, "--seq", min=32, help="Training sequence length."),
    batch: int = typer.Option(2, "--batch", min=1, help="Rows per training step, the same for both trainers."),
    repetitions: int = typer.Option(3, "--repetitions", min=1, help="Measured runs (after a warm-up for generation)."),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, help="Generated tokens per generation run."),
    no_train: bool = typer.Option(False, "--no-train", help="Skip the training comparison."),
    compare_to: Optional[Path] = typer.Option(None, "--compare", help="An earlier bench.json: flag regressions."),
    tolerance: float = typer.Option(0.15, "--tolerance", help="Allowed regression, as a fraction, for --compare."),
    ratios_only: bool = typer.Option(False, "--ratios-only", help="With --compare: only the ratios measured within each run (for a baseline from another machine or a busy one)."),
) -> None:
    """Training tokens/s and memory against mlx_lm.lora; generation speed of MLX against the GGUFs."""
    import json as _json
    import tempfile

    from . import bench
    from .errors import ConfigError, ValidationFailed
    from .export.place import find_version
    from .model.hub import resolve_base
    from .runs import new_run

    baseline = None
    if compare_to is not None:  # checked before minutes of measuring
        try:
            baseline = _json.loads(Path(compare_to).read_text())
            baseline["measurements"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{compare_to} is not a bench report ({exc.__class__.__name__}: {exc})",
                              "pass the bench.json of an earlier `mlx-dm bench` run, e.g. benchmarks/baselines/bench-tiny.json")
    config = _config()
    current = _current_model(config)
    config.model.base_model = base or (current["base_model"] if current else "tiny")
    _, dataset_dir = build_dataset_from_config(config)
    base_path = resolve_base(config.model.base_model, Path(config.project_dir), config.path(config.data.scenarios_dir))
    measurements, ratios = [], {}
    if not no_train:
        stock_runs, our_runs = [], []
        with tempfile.TemporaryDirectory() as tmp:
            data = bench.stock_lora_data(dataset_dir, Path(tmp) / "stock-data")
            for index in range(repetitions):
                console.print(f"bench: training run {index + 1}/{repetitions} (mlx_lm.lora, then mlx-dm)")
                work = Path(tmp) / f"run{index}"
                work.mkdir()
                stock_runs.append(bench.train_stock(base_path, data, work, steps, seq, batch, 1e-4))
                our_runs.append(bench.train_ours(config.model.base_model, config.path(config.data.scenarios_dir), work,
                                                 steps, seq, batch, 1e-4))
        for name, runs in (("mlx_lm.lora train", stock_runs), ("mlx-dm train", our_runs)):
            measurements.append(bench.Measurement(name, "train", {
                "tokens_per_second": [r["tokens_per_second"] for r in runs],
                "peak_memory_gb": [r["peak_memory_gb"] for r in runs], "loss": [r["loss"] for r in runs]}))
        ratios["train tokens/s (mlx-dm / mlx_lm.lora)"] = measurements[-1].median("tokens_per_second") / measurements[-2].median("tokens_per_second")
        ratios["train peak memory (mlx-dm / mlx_lm.lora)"] = measurements[-1].median("peak_memory_gb") / measurements[-2].median("peak_memory_gb")
    if current is not None:
        from .evaluate.cases import suite_cases

        prompt = suite_cases()[0].prompt
        entry = find_version(Path(config.project_dir), current["version"])
        adapter = config.path(entry["gguf_path"]).parent / "adapters"
        console.print("bench: generation (MLX with the adapter, MLX 4-bit, GGUF files)")
        mlx = bench.bench_mlx_generation("MLX + adapter", base_path, adapter if adapter.exists() else None, prompt,
                                         max_tokens, repetitions)
        measurements.append(mlx)
        fused = config.path(config.runs_dir) / current["run"] / "export" / "fused"
        if (fused / "config.json").exists():
            measurements.append(bench.bench_mlx_generation("MLX fused", fused, None, prompt, max_tokens, repetitions))
        try:
            measurements.append(bench.bench_mlx_generation("MLX 4-bit + adapter", base_path, adapter if adapter.exists() else None,
                                                           prompt, max_tokens, repetitions, quantize_4bit=True))
        except Exception as exc:  # noqa: BLE001 - a base whose shapes do not quantise is reported, not fatal
            console.print(f"[yellow]MLX 4-bit skipped: {escape(str(exc))}[/yellow]")
        f16 = sorted(config.path(config.runs_dir).glob(f"{current['run']}/export/*-f16.gguf"))
        for name, path in ((f"GGUF f16", f16[0] if f16 else None), (f"GGUF {current['quant']}", config.path(current["gguf_path"]))):
            if path is not None and path.exists():
                measurements.append(bench.bench_gguf_generation(name, path, prompt, max_tokens, repetitions))
        quantised = measurements[-1]
        if quantised.name.startswith("GGUF"):
            ratios[f"decode tokens/s (GGUF {current['quant']} / MLX + adapter)"] = quantised.median("decode_tps") / mlx.median("decode_tps")
        by_name = {m.name: m for m in measurements}
        if "MLX fused" in by_name:
            ratios["decode tokens/s (MLX fused / MLX + adapter)"] = by_name["MLX fused"].median("decode_tps") / mlx.median("decode_tps")
    else:
        console.print("[yellow]no model in assets/models: generation not measured (train and export first)[/yellow]")
    out = new_run(config.path(config.runs_dir), "bench").path
    report = bench.write_bench_report(measurements, ratios, out, {"base": config.model.base_model, "device": detect().device,
                                                                  "machine": bench.machine_id(),
                                                                  "steps": steps, "seq": seq, "batch": batch,
                                                                  "repetitions": repetitions, "max_tokens": max_tokens})
    table = Table(title=f"bench ({config.model.base_model}, median ± half-range of {repetitions})")
    for column in ("what", "metric", "median", "±"):
        table.add_column(column)
    for m in measurements:
        for metric in m.values:
            table.add_row(m.name, metric, f"{m.median(metric):.3g}", f"{m.spread(metric):.2g}")
    console.print(table)
    for key, value in ratios.items():
        console.print(f"{key}: [bold]{value:.2f}[/bold]")
    console.print(f"report: {out / 'bench.md'}")
    if compare_to is not None:
        problems, notes = bench.compare(report, baseline, tolerance, ratios_only)
        for note in notes:
            console.print(f"[dim]{escape(note)}[/dim]")
        for problem in problems:
            console.print(f"[red]regression[/red] {problem}")
        if problems:
            raise ValidationFailed(f"{len(problems)} regressions beyond {tolerance:.0%} against {compare_to}",
                                   "see the lines above; rerun to rule out noise (--repetitions 5)")
        console.print(f"no regression beyond {tolerance:.0%} against {compare_to}")


CHAT_HELP = "/roll 1d20+3 · /tools · /save file.md · /reset · /quit"


@app.command("chat")
def chat_command(
    model: Optional[Path] = typer.Option(None, "--model", help="A .gguf file, or a run's adapters/ folder (MLX). Default: the current model in assets/models."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model for an adapter folder (default: from the run)."),
    scenario: Optional[Path] = typer.Option(None, "--scenario", help="Take world, location, party and player sheet from a scenario file."),
    world: str = typer.Option("", "--world", help="World of the scene, as a scenario's 'World:' key."),
    location: str = typer.Option("", "--location", help="Where the scene starts, as a scenario's 'Location:' key."),
    party: list[str] = typer.Option([], "--party", help="A party member, e.g. 'Wren (Gnome Artificer, Level 2)'; repeat it."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Play one action and exit (non-interactive)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the dice."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy, the same answer every time."),
    max_tokens: int = typer.Option(200, "--max-tokens", min=1, help="Most tokens per DM reply."),
) -> None:
    """Talk to the model as the game would; dice calls are rolled and fed back."""
    from .chat import ChatSession, GgufBackend, MlxBackend
    from .data.parse import parse_member, parse_text
    from .data.render import context_text
    from .data.scenario import Scenario
    from .dice import DICE_TOOLS, DiceError, DiceRoller, modifiers_from_sheet

    config = _config()
    if model is None:
        current = _current_model(config)
        if current is None:
            from .errors import ModelError

            raise ModelError("no model given and none in assets/models", "pass --model FILE.gguf, or train first (`npm run train`)")
        model = config.path(current["gguf_path"])
    if model.suffix == ".gguf":
        backend = GgufBackend(model, temperature=temperature, seed=seed)
    else:
        backend = MlxBackend(_base_for_adapter(config, model, base), model, temperature=temperature)
    if scenario is not None:
        parsed = parse_text(scenario.read_text(encoding="utf-8"), scenario.name)
        if parsed.scenario is None:
            from .errors import DataError

            raise DataError(f"{scenario} is not a usable scenario: {parsed.problems[0] if parsed.problems else parsed.skipped_reason}",
                            "fix it (see `mlx-dm data validate`) or use --world/--location/--party")
        setting = parsed.scenario
        setting.turns = []
    else:
        setting = Scenario(path="chat", role="Dungeon Master", world=world, location=location,
                           party=[member for member in (parse_member(p, 0) for p in party) if member])
    roller = DiceRoller(seed=seed, modifiers=modifiers_from_sheet(setting.player), actor=setting.player_name)
    session = ChatSession(backend, context_text(setting), roller, max_tokens=max_tokens)
    party_lines = [f"{m.name} ({m.description})" if m.description else m.name for m in setting.party]

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def play(text: str) -> None:
        emit("DM: ")
        session.turn(text, emit)
        emit("\n")

    if prompt is not None:
        play(prompt)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401 - arrow keys and history for input()

        console.print(f"[bold]mlx-dm chat[/bold] with {model.name} — {CHAT_HELP}")
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            break
        if not interactive and line == "":
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            session.reset()
            emit("(conversation reset)\n")
        elif line.startswith("/roll"):
            try:
                result = roller.roll(line[5:].strip() or "1d20")
                emit(f"{result.expression} = {result.detail} = {result.total}\n")
            except DiceError as exc:
                emit(f"{exc}\n")
        elif line == "/tools":
            emit(f"dice: {', '.join(DICE_TOOLS)}; the app's agent acts on: {', '.join(config.data.agent_tools)}\n")
        elif line.startswith("/save"):
            target = Path(line[5:].strip() or "chat-scenario.md")
            if target.exists():
                emit(f"{target} exists; choose another name (nothing you wrote is overwritten)\n")
                continue
            target.write_text(session.to_markdown(setting.world, setting.location, party_lines), encoding="utf-8")
            emit(f"saved {target}\n")
        elif line.startswith("/"):
            emit(f"unknown command {line}; {CHAT_HELP}\n")
        else:
            play(line)


def print_error(exc: MlxDmError) -> None:
    err_console.print(f"[bold red]{exc.kind}:[/bold red] {escape(exc.message)}")
    if exc.hint:
        err_console.print(f"[bold]hint:[/bold] {escape(exc.hint)}")


def main() -> None:
    """Entry point: errors print as message + hint, without a traceback unless --debug.

    The command itself runs in a worker process (supervise.py), so a native crash is reported too."""
    if supervise.wanted():
        code, crash = supervise.supervise(sys.argv[1:])
        if crash is not None:
            print_error(crash)
        sys.exit(code)
    if supervise.in_worker():
        supervise.start_worker_side()
    try:
        app(prog_name="mlx-dm")  # standalone: click reports usage errors (bad flags) itself, with exit code 2
    except MlxDmError as exc:
        log.debug("failure", exc_info=True)
        print_error(exc)
        if _state["debug"]:
            err_console.print_exception()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
