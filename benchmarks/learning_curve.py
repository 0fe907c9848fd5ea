"""The learning curve: held-out tool-call F1, calls where none belong and right argument against
the number of training scenarios, each point read over seeds.

    python benchmarks/learning_curve.py --sizes 32,64,128,0 --seeds 0,1,2 [--label tools --data tools_in_prompt=true]
                                        [--parallel 6] [--out docs/real-model/learning-curve]
    python benchmarks/learning_curve.py --summarise [--out docs/real-model/learning-curve]

Runs one benchmarks/quality_arm.py per (size, seed) pair (other options are passed to it),
`--parallel` of them at once (each given an equal share of the device's memory, so one runner per
device; on a CPU keep 1), in work folders under `--arms`; an arm whose result is
already in `--out` is not run again, so a curve grows over sessions and survives a stopped machine.
Each finished arm's quality.json (and its replies; with --keep-adapters its shipped adapter, to
export and score as a GGUF where llama.cpp runs) is copied to `--out/arms/` at once. Then, and
alone with --summarise, it writes learning-curve.{json,md,png} over every arm in `--out/arms`:
per label, size and source the mean [min-max] over seeds, and the mean of the arms' 90% intervals.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from quality_real_model import ROOT, has_real_model, machine

FIGURES = ("tool_f1", "false_call_rate", "tool_argument_accuracy")
ARM = Path(__file__).with_name("quality_arm.py")


def arm_name(label: str, size: int, seed: int) -> str:
    return f"{label}-n{size or 'all'}-s{seed}"


def memory_share(args: argparse.Namespace) -> list[str]:
    """Several arms on one device, no limit given: each arm's MLX gets an equal share of what MLX may
    use (train.memory_limit_gb binds MLX itself: train/setup.limit_mlx_memory). Without it six
    arms on an H200 ran out of memory in their first validation pass."""
    if args.parallel < 2 or any(item.startswith("memory_limit_gb") for item in args.train):
        return []
    import mlx.core as mx

    return [f"memory_limit_gb={0.9 * mx.get_memory_limit() / args.parallel / 1e9:.1f}"]


def run_arms(args: argparse.Namespace) -> None:
    """Every (size, seed) arm not yet in `--out/arms`, `--parallel` at a time, copied there as each ends."""
    from mlx_dm.model.gguf_import import gemma3_270m_base

    gemma3_270m_base(ROOT / ".mlx-dm" / "models")  # imported once here: the arms would race to build it
    done_dir = args.out / "arms"
    done_dir.mkdir(parents=True, exist_ok=True)
    pending = [(size, seed) for size in args.sizes for seed in args.seeds
               if not (done_dir / arm_name(args.label, size, seed) / "quality.json").exists()]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    print(f"{len(pending)} arms to run, {args.parallel} at a time, on {machine()}", flush=True)
    while pending or running:
        while pending and len(running) < args.parallel:
            size, seed = pending.pop(0)
            name = arm_name(args.label, size, seed)
            work = args.arms / name
            work.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, str(ARM), "--scenarios", str(size), "--seed", str(seed), "--out", str(work)]
            command += [f"--train={item}" for item in args.train + memory_share(args)]
            command += [f"--data={item}" for item in args.data] + args.arm
            running[name] = (subprocess.Popen(command, stdout=(work / "arm.log").open("w"), stderr=subprocess.STDOUT),
                             time.perf_counter())
        time.sleep(5)
        for name, (process, started) in list(running.items()):
            if process.poll() is None:
                continue
            del running[name]
            work = args.arms / name
            minutes = (time.perf_counter() - started) / 60
            if process.returncode == 0 and (work / "quality.json").exists():
                (done_dir / name).mkdir(exist_ok=True)
                for file in ("quality.json", "examples.json", "arm.log"):
                    shutil.copyfile(work / file, done_dir / name / file)
                shipped = sorted((work / "project" / "runs").glob("*-train/adapters"))
                first_seed = name.endswith(f"-s{args.seeds[0]}")  # one per point: 7 MB each for the 270M
                if args.keep_adapters and first_seed and shipped:  # to export and score as a GGUF elsewhere
                    shutil.copytree(shipped[-1], done_dir / name / "adapters", dirs_exist_ok=True)
                print(f"{name}: done in {minutes:.1f} min ({len(running)} running, {len(pending)} waiting)", flush=True)
            else:
                tail = (work / "arm.log").read_text(errors="replace")[-600:]
                print(f"{name}: failed (exit {process.returncode}) after {minutes:.1f} min\n{tail}", flush=True)


def mean_range(values: list[float]) -> dict:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)} if values else {}


def summarise(out: Path) -> dict:
    """Group every arm of `out/arms` by (label, size) and source: each figure's mean [min-max] over seeds."""
    arms = [json.loads(path.read_text()) | {"name": path.parent.name} for path in sorted(out.glob("arms/*/quality.json"))]
    points: dict[tuple[str, int], list[dict]] = {}
    for arm in arms:
        points.setdefault((arm["name"].rsplit("-n", 1)[0], arm["scenarios"]), []).append(arm)
    curve = []
    for (label, size), group in sorted(points.items()):
        sources: dict[str, dict] = {}
        for source in sorted({s for arm in group for s in arm["by_source"]["tuned MLX"]}):
            rows = [arm["by_source"]["tuned MLX"][source] for arm in group if source in arm["by_source"]["tuned MLX"]]
            sources[source] = {figure: mean_range([r[figure] for r in rows if r[figure] is not None]) for figure in FIGURES}
            intervals = [r["tool_f1_interval"] for r in rows if r.get("tool_f1_interval")]
            sources[source]["f1_interval_mean"] = ([sum(i[0] for i in intervals) / len(intervals),
                                                    sum(i[1] for i in intervals) / len(intervals)] if intervals else None)
            sources[source]["cases"] = rows[0]["examples"]
        curve.append({"label": label, "scenarios": size, "seeds": sorted(arm["seed"] for arm in group),
                      "device": group[0].get("device"), "machine": group[0].get("machine"),
                      "minutes": mean_range([(arm["run_seconds"] + arm["score_seconds"]) / 60 for arm in group]),
                      "sources": sources})
    report = {"points": curve}
    (out / "learning-curve.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "learning-curve.md").write_text(markdown(curve))
    plot(curve, out / "learning-curve.png")
    return report


def cell(figure: dict) -> str:
    return f"{figure['mean']:.2f} [{figure['min']:.2f}-{figure['max']:.2f}]" if figure else "n/a"


def markdown(curve: list[dict]) -> str:
    lines = ["# Learning curve", "", "Each figure: mean [min-max] over the seeds; F1's 90% interval is the mean of the "
             "arms' own (scenarios drawn with replacement).", ""]
    for point in curve:
        lines += [f"## {point['label']}, {point['scenarios']} scenarios, seeds {point['seeds']}", "",
                  f"{point['device']} on {point['machine']}; {point['minutes'].get('mean', 0):.1f} min an arm", "",
                  "| source | cases | tool F1 | 90% interval | calls where none belong | right argument |",
                  "|---|---|---|---|---|---|"]
        for source, figures in point["sources"].items():
            interval = figures["f1_interval_mean"]
            lines.append(f"| {source} | {figures['cases']} | {cell(figures['tool_f1'])} | "
                         f"{f'{interval[0]:.2f}-{interval[1]:.2f}' if interval else 'n/a'} | "
                         f"{cell(figures['false_call_rate'])} | {cell(figures['tool_argument_accuracy'])} |")
        lines.append("")
    return "\n".join(lines)


def plot(curve: list[dict], path: Path) -> None:
    """F1 and calls where none belong against the training scenarios, per source and label; bars: min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for point in curve:
        for source, figures in point["sources"].items():
            series.setdefault((point["label"], source), []).append((point["scenarios"], figures))
    for axis, figure_name, title in ((axes[0], "tool_f1", "held-out tool-call F1"),
                                     (axes[1], "false_call_rate", "calls where none belong")):
        for (label, source), values in sorted(series.items()):
            values = [(size, f[figure_name]) for size, f in sorted(values, key=lambda v: v[0]) if f[figure_name]]
            if not values:
                continue
            sizes = [size for size, _ in values]
            means = [f["mean"] for _, f in values]
            spread = [[f["mean"] - f["min"] for _, f in values], [f["max"] - f["mean"] for _, f in values]]
            axis.errorbar(sizes, means, yerr=spread, marker="o", capsize=3, label=f"{label}: {source}")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("training scenarios")
        axis.set_title(title)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="32,64,128,0", help="training scenarios per point (0: the whole corpus)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--label", default="default", help="names this setting's arms (e.g. tools, lr1e-3)")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--arms", type=Path, default=ROOT / ".mlx-dm" / "arms", help="the arms' work folders")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "real-model" / "learning-curve")
    parser.add_argument("--summarise", action="store_true", help="only summarise the arms already in --out/arms")
    parser.add_argument("--keep-adapters", action="store_true",
                        help="copy the shipped adapter of each point's first seed beside its results (7 MB for the "
                             "270M; to export and score as a GGUF elsewhere)")
    args, args.arm = parser.parse_known_args()  # the rest goes to every arm (e.g. --max-cases 40)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not args.summarise:
        if not has_real_model():
            return 2
        run_arms(args)
    report = summarise(args.out)
    print((args.out / "learning-curve.md").read_text())
    return 0 if report["points"] else 1


if __name__ == "__main__":
    sys.exit(main())
