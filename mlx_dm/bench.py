"""`mlx-dm bench`: throughput on this machine, measured in one run so the ratios are fair.

- training: `mlx-dm train` against stock `mlx_lm.lora` (same data, LoRA config, length, steps),
  each in its own process with the same BLAS;
- generation: prompt and decode tokens/s and peak memory of the MLX model (base + adapter, and
  4-bit) against the exported GGUFs in llama.cpp (f16 and Q4_K_M), same prompts and lengths.
Each measurement has a warm-up, then `repetitions` runs; the report gives median and spread.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write_json, atomic_write_text

LORA_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@dataclass
class Measurement:
    name: str
    kind: str  # "train" or "generate"
    values: dict[str, list[float]] = field(default_factory=dict)  # metric -> one value per repetition

    def median(self, metric: str) -> float:
        return statistics.median(self.values[metric])

    def spread(self, metric: str) -> float:
        values = self.values[metric]
        return (max(values) - min(values)) / 2 if len(values) > 1 else 0.0

    def summary(self) -> dict:
        return {metric: {"median": self.median(metric), "spread": self.spread(metric), "runs": values}
                for metric, values in self.values.items()}


def stock_lora_data(dataset_dir: Path, out: Path) -> Path:
    """mlx_lm.lora's `{"text": ...}` JSONL of the same rendered scenarios."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        rows = [json.loads(line) for line in (dataset_dir / f"{split}.jsonl").read_text().splitlines()]
        (out / f"{split}.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    return out


def warmup_steps(steps: int) -> int:
    """Steps left out of the training tokens/s (compilation, first allocations): the first half of
    a run of 4 steps or more. mlx_lm.lora reports its last window, mlx-dm its per-step figures."""
    return steps // 2 if steps >= 4 else 0


def train_stock(base_path: Path, data: Path, work: Path, steps: int, seq: int, batch: int, lr: float) -> dict:
    """Stock `mlx_lm.lora` in its own process, its own report callback patched to print JSON. Its
    learning rate follows mlx-dm's schedule (cosine decay from ``lr``, no warm-up: train_ours), so
    the two adapters' losses compare trainers, not schedules."""
    from .train.setup import FINAL_LR_FRACTION

    config = work / "lora.yaml"
    config.write_text("lora_parameters:\n  rank: 8\n  scale: 2.0\n  dropout: 0.0\n  keys: [" + ", ".join(LORA_KEYS) + "]\n"
                      f"lr_schedule:\n  name: cosine_decay\n  arguments: [{lr}, {steps}, {lr * FINAL_LR_FRACTION}]\n")
    code = (
        "import json, sys, mlx_dm\n"
        "import mlx_lm.lora as lora\n"
        "from mlx_lm.tuner.trainer import TrainingCallback\n"
        "class Report(TrainingCallback):\n"
        "    def on_train_loss_report(self, info):\n"
        "        print('MLXDM_REPORT ' + json.dumps(info), flush=True)\n"
        "lora.get_reporting_callbacks = lambda *args, **kwargs: Report()\n"
        "sys.argv = ['mlx_lm.lora'] + sys.argv[1:]\n"
        "lora.main()\n")
    args = [sys.executable, "-c", code, "--model", str(base_path), "--train", "--data", str(data), "--iters", str(steps),
            "--batch-size", str(batch), "--max-seq-length", str(seq), "--num-layers", "-1", "--learning-rate", str(lr),
            "--steps-per-report", str(steps - warmup_steps(steps)), "--steps-per-eval", str(10 * steps), "--adapter-path",
            str(work / "stock-adapters"), "-c", str(config), "--save-every", str(10 * steps)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=work)
    text = out.stdout + out.stderr
    reports = [json.loads(line.split(" ", 1)[1]) for line in text.splitlines() if line.startswith("MLXDM_REPORT ")]
    if out.returncode != 0 or not reports:
        raise RuntimeError(f"mlx_lm.lora failed:\n{text[-3000:]}")
    report = reports[-1]
    return {"loss": report["train_loss"], "final_learning_rate": report["learning_rate"],
            "tokens_per_second": report["tokens_per_second"], "peak_memory_gb": report["peak_memory"],
            "trained_tokens": report["trained_tokens"], "adapter_dir": str(work / "stock-adapters")}


def train_ours(base: str, scenarios: Path, work: Path, steps: int, seq: int, batch: int, lr: float,
               grad_checkpoint: bool = False) -> dict:
    """`mlx-dm train` in its own process on the same scenarios and LoRA shape (rank 8, scale 2)."""
    project = work / "project"
    project.mkdir(parents=True, exist_ok=True)
    if not (project / "ai-training").exists():
        (project / "ai-training").symlink_to(Path(scenarios).resolve(), target_is_directory=True)
    (project / "mlx-dm.toml").write_text(
        f"[train]\nsteps_per_eval = {10 * steps}\nsteps_per_checkpoint = {10 * steps}\nlora_dropout = 0.0\n"
        f"lora_rank = 8\nlora_alpha = 16.0\nwarmup_fraction = 0.0\ngrad_checkpoint = {str(grad_checkpoint).lower()}\n")
    args = [sys.executable, "-m", "mlx_dm", "-C", str(project), "train", "--base", base, "--epochs", "100",
            "--max-steps", str(steps), "--max-seq-length", str(seq), "--batch-size", str(batch),
            "--learning-rate", str(lr), "--no-resume"]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"mlx-dm train failed:\n{(out.stdout + out.stderr)[-3000:]}")
    run = sorted((project / "runs").glob("*-train"))[-1]
    result = json.loads((run / "train_state.json").read_text())["result"]
    rows = [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "step" in row]
    return {"loss": result["last_train_loss"], "final_learning_rate": rows[-1]["learning_rate"],
            "tokens_per_second": _steady_tokens_per_second(rows, steps),
            "peak_memory_gb": result["peak_memory_bytes"] / 1e9, "trained_tokens": result["trained_tokens"],
            "padding_fraction": result["padding_fraction"], "adapter_dir": result["adapter_dir"]}


def _steady_tokens_per_second(rows: list[dict], steps: int) -> float:
    """Training tokens/s after the warm-up steps, from the step rows of metrics.jsonl (each step's
    figure is cumulative and excludes evaluation time)."""
    tokens = list(itertools.accumulate(row["tokens"] for row in rows))
    seconds = [total / row["tokens_per_second"] for total, row in zip(tokens, rows)]
    warm = warmup_steps(steps)
    if not warm:
        return rows[-1]["tokens_per_second"]
    return (tokens[-1] - tokens[warm - 1]) / (seconds[-1] - seconds[warm - 1])


def validation_losses(base_path: Path, adapter_dir: Path | None, dataset_dir: Path, seq: int) -> dict[str, float]:
    """An adapter (None: the base alone) scored on the validation split the same way whichever
    trainer made it: mean loss over the Dungeon Master's tokens (what the model is for) and over
    every token (what stock mlx_lm.lora trains on), float32, windows of ``seq`` tokens."""
    import dataclasses

    import mlx.core as mx

    from .model import per_layer_embeddings
    from .model.load import load_model
    from .train import batching
    from .train.step import evaluate_loss

    loaded = load_model(base_path, adapter_path=Path(adapter_dir) if adapter_dir else None, dtype="float32", lazy=True)
    examples = batching.load_examples(Path(dataset_dir) / "valid.jsonl", loaded.tokenizer, seq)
    per_layer_embeddings.keep_rows(loaded.model, base_path, (i for e in examples for i in e.ids))
    mx.eval(loaded.model.parameters())
    every_token = [dataclasses.replace(e, loss_mask=[0] + [1] * (len(e.ids) - 1)) for e in examples]
    return {"dm_tokens": evaluate_loss(loaded.model, batching.pack(examples, seq), seq, 1),
            "all_tokens": evaluate_loss(loaded.model, batching.pack(every_token, seq), seq, 1)}


def bench_mlx_generation(name: str, base: Path, adapter: Path | None, prompt: str, max_tokens: int,
                         repetitions: int, quantize_4bit: bool = False) -> Measurement:
    import mlx.core as mx
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from .model.load import load_model

    loaded = load_model(base, quantize_4bit=quantize_4bit, adapter_path=adapter, dtype="auto")
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=False)
    measurement = Measurement(name, "generate", {"prompt_tps": [], "decode_tps": [], "peak_memory_gb": []})
    for repetition in range(repetitions + 1):  # the first is a warm-up
        mx.reset_peak_memory()
        last = None
        for last in stream_generate(loaded.model, loaded.tokenizer, ids, max_tokens=max_tokens,
                                    sampler=make_sampler(temp=0.0)):
            pass
        if repetition and last is not None:
            measurement.values["prompt_tps"].append(last.prompt_tps)
            measurement.values["decode_tps"].append(last.generation_tps)
            measurement.values["peak_memory_gb"].append(mx.get_peak_memory() / 1e9)
    return measurement


def bench_gguf_generation(name: str, gguf: Path, prompt: str, max_tokens: int, repetitions: int,
                          n_ctx: int = 2048) -> Measurement:
    from .evaluate.compat import measure_speed, memory_from_logs
    from .llama.runtime import captured_llama_logs, open_gguf

    lines: list[str] = []
    with captured_llama_logs(lines):
        llm = open_gguf(gguf, n_ctx)
    kv, buffers = memory_from_logs(lines)
    memory = (Path(gguf).stat().st_size + kv + buffers) / 1e9
    measurement = Measurement(name, "generate", {"prompt_tps": [], "decode_tps": [], "peak_memory_gb": []})
    for repetition in range(repetitions + 1):
        prompt_tps, decode_tps = measure_speed(llm, prompt, max_tokens)
        if repetition:
            measurement.values["prompt_tps"].append(prompt_tps)
            measurement.values["decode_tps"].append(decode_tps)
            measurement.values["peak_memory_gb"].append(memory)
    llm.close()
    return measurement


# Ratios where a smaller value is better; every other ratio is a speed-up.
LOWER_IS_BETTER = ("memory",)


def compare(current: dict, previous: dict, tolerance: float, ratios_only: bool = False) -> tuple[list[str], list[str]]:
    """Regressions beyond `tolerance` (a fraction) between two bench JSON reports, and notes.

    Ratios (both sides measured in the same run) are compared always, so a baseline stored from
    another machine still means something. Absolute figures are compared only when both reports
    come from the same machine and settings; otherwise a note says why they were left out.
    """
    problems, notes = [], []
    for key, before in previous.get("ratios", {}).items():
        now = current.get("ratios", {}).get(key)
        if now is None or not before:
            notes.append(f"ratio '{key}' is in the baseline but was not measured now")
            continue
        change = (now - before) / before
        worse = change > tolerance if any(word in key for word in LOWER_IS_BETTER) else change < -tolerance
        if worse:
            problems.append(f"ratio {key}: {before:.3g} -> {now:.3g} ({change:+.1%})")
    if ratios_only:
        notes.append("absolute figures not compared (--ratios-only)")
        return problems, notes
    settings = ("machine", "base", "steps", "seq", "batch", "max_tokens")
    differing = [key for key in settings if previous.get(key) != current.get(key)]
    if differing:
        notes.append("absolute figures not compared: the baseline differs in "
                     + ", ".join(f"{key} ({previous.get(key)!r} vs {current.get(key)!r})" for key in differing))
        return problems, notes
    old = {(m["name"], metric): values["median"] for m in previous["measurements"] for metric, values in m["summary"].items()}
    for entry in current["measurements"]:
        for metric, values in entry["summary"].items():
            before = old.get((entry["name"], metric))
            if before is None or before == 0 or metric == "loss":
                continue
            change = (values["median"] - before) / before
            worse = change > tolerance if metric == "peak_memory_gb" else change < -tolerance
            if worse:
                problems.append(f"{entry['name']} {metric}: {before:.3g} -> {values['median']:.3g} ({change:+.1%})")
    return problems, notes


def machine_id() -> str:
    """What makes absolute figures comparable: OS, architecture, CPU/chip and core count."""
    import os
    import platform

    from .hardware import _chip

    return f"{platform.system()} {platform.machine()}, {_chip()}, {os.cpu_count()} cores"


def write_bench_report(measurements: list[Measurement], ratios: dict, out_dir: Path, meta: dict) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**meta, "ratios": ratios,
              "measurements": [{"name": m.name, "kind": m.kind, "summary": m.summary()} for m in measurements]}
    atomic_write_json(out_dir / "bench.json", report)
    lines = [f"# mlx-dm bench ({meta.get('base')}, {meta.get('device')})", "",
             "| what | metric | median | ± | runs |", "|---|---|---|---|---|"]
    for m in measurements:
        for metric in m.values:
            lines.append(f"| {m.name} | {metric} | {m.median(metric):.3g} | {m.spread(metric):.2g} | {len(m.values[metric])} |")
    lines += ["", "## Ratios", ""] + [f"- {key}: {value:.2f}" for key, value in ratios.items()] + ["", "![bench](bench.png)"]
    atomic_write_text(out_dir / "bench.md", "\n".join(lines) + "\n")
    plot_bench(measurements, out_dir / "bench.png")
    return report


def plot_bench(measurements: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("tokens_per_second", "training tokens/s"), ("decode_tps", "decode tokens/s"),
               ("prompt_tps", "prompt tokens/s"), ("peak_memory_gb", "peak memory GB")]
    metrics = [(k, t) for k, t in metrics if any(k in m.values for m in measurements)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4))
    axes = [axes] if len(metrics) == 1 else axes
    for axis, (metric, title) in zip(axes, metrics):
        rows = [m for m in measurements if metric in m.values]
        axis.barh([m.name for m in rows], [m.median(metric) for m in rows], xerr=[m.spread(metric) for m in rows])
        axis.set_title(title, fontsize=9)
        axis.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)




def compare_training(base_model: str, base_path: Path, scenarios: Path, dataset_dir: Path, steps: int, seq: int,
                     batch: int, repetitions: int, say) -> tuple[list[Measurement], dict[str, float]]:
    """mlx_lm.lora and mlx-dm trained `repetitions` times each on the same data, rows and schedule."""
    import tempfile

    stock_runs, our_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = stock_lora_data(dataset_dir, Path(tmp) / "stock-data")
        for index in range(repetitions):
            say(f"bench: training run {index + 1}/{repetitions} (mlx_lm.lora, then mlx-dm)")
            work = Path(tmp) / f"run{index}"
            work.mkdir()
            stock_runs.append(train_stock(base_path, data, work, steps, seq, batch, 1e-4))
            our_runs.append(train_ours(base_model, scenarios, work, steps, seq, batch, 1e-4))
    measurements = [Measurement(name, "train", {
        "tokens_per_second": [r["tokens_per_second"] for r in runs],
        "peak_memory_gb": [r["peak_memory_gb"] for r in runs], "loss": [r["loss"] for r in runs]})
        for name, runs in (("mlx_lm.lora train", stock_runs), ("mlx-dm train", our_runs))]
    stock, ours = measurements
    return measurements, {
        "train tokens/s (mlx-dm / mlx_lm.lora)": ours.median("tokens_per_second") / stock.median("tokens_per_second"),
        "train peak memory (mlx-dm / mlx_lm.lora)": ours.median("peak_memory_gb") / stock.median("peak_memory_gb")}


def compare_generation(project, current: dict, base_path: Path, prompt: str, max_tokens: int, repetitions: int,
                       say) -> tuple[list[Measurement], dict[str, float]]:
    """Decode speed of the app's model: MLX with its adapter, fused, 4-bit; its f16 and quantised GGUFs."""
    from .registry import find_version

    entry = find_version(project.root, current["version"])
    adapter = project.path(entry["gguf_path"]).parent / "adapters"
    adapter = adapter if adapter.exists() else None
    say("bench: generation (MLX with the adapter, MLX 4-bit, GGUF files)")
    mlx = bench_mlx_generation("MLX + adapter", base_path, adapter, prompt, max_tokens, repetitions)
    measurements = [mlx]
    fused = project.runs_dir / current["run"] / "export" / "fused"
    if (fused / "config.json").exists():
        measurements.append(bench_mlx_generation("MLX fused", fused, None, prompt, max_tokens, repetitions))
    try:
        measurements.append(bench_mlx_generation("MLX 4-bit + adapter", base_path, adapter, prompt, max_tokens,
                                                 repetitions, quantize_4bit=True))
    except Exception as exc:  # noqa: BLE001 - a base whose shapes do not quantise is reported, not fatal
        say(f"MLX 4-bit skipped: {exc}")
    f16 = sorted(project.runs_dir.glob(f"{current['run']}/export/*-f16.gguf"))
    for name, path in (("GGUF f16", f16[0] if f16 else None), (f"GGUF {current['quant']}", project.path(current["gguf_path"]))):
        if path is not None and path.exists():
            measurements.append(bench_gguf_generation(name, path, prompt, max_tokens, repetitions))
    ratios = {}
    if measurements[-1].name.startswith("GGUF"):
        ratios[f"decode tokens/s (GGUF {current['quant']} / MLX + adapter)"] = (
            measurements[-1].median("decode_tps") / mlx.median("decode_tps"))
    by_name = {m.name: m for m in measurements}
    if "MLX fused" in by_name:
        ratios["decode tokens/s (MLX fused / MLX + adapter)"] = by_name["MLX fused"].median("decode_tps") / mlx.median("decode_tps")
    return measurements, ratios
