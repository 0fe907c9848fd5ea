"""Training throughput and peak memory: `mlx-dm train` against stock `mlx_lm.lora`, same run.

    python benchmarks/train_throughput.py [--steps 12] [--seq 256] [--batch 2] [--base tiny]

Both train LoRA (rank 8, scale 2, attention + MLP projections of every layer) on the same
rendered scenarios, same sequence length, batch size and learning rate, for the same number of
optimizer steps, each in its own process. Both processes get OpenBLAS (mlx_dm/cpu_blas.py), so
the difference is the trainers'. tokens/s counts real (non-padding) tokens.

Note for reading the loss column: mlx_lm.lora computes it over every token of the text;
mlx-dm over the Dungeon Master's tokens only (completion-only), so the two are not the same
quantity. The benchmark prints both as reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORA_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def prepare(base: str, work: Path) -> tuple[Path, Path]:
    from mlx_dm.config import load_config
    from mlx_dm.cli import build_dataset_from_config
    from mlx_dm.model.hub import resolve_base

    config = load_config(ROOT)
    config.data.dataset_dir = str(work / "dataset")
    _, dataset_dir = build_dataset_from_config(config)
    base_path = resolve_base(base, ROOT, ROOT / "ai-training")
    stock = work / "stock-data"
    stock.mkdir()
    for split in ("train", "valid"):
        rows = [json.loads(line) for line in (dataset_dir / f"{split}.jsonl").read_text().splitlines()]
        (stock / f"{split}.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    return dataset_dir, base_path, stock


def run_stock(base_path: Path, data: Path, work: Path, steps: int, seq: int, batch: int, lr: float) -> dict:
    config = work / "lora.yaml"
    config.write_text("lora_parameters:\n  rank: 8\n  scale: 2.0\n  dropout: 0.0\n  keys: [" + ", ".join(LORA_KEYS) + "]\n")
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
            "--steps-per-report", str(steps), "--steps-per-eval", str(10 * steps), "--adapter-path",
            str(work / "stock-adapters"), "-c", str(config), "--save-every", str(10 * steps)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=work)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise SystemExit(f"mlx_lm.lora failed:\n{text[-3000:]}")
    reports = [json.loads(line.split(" ", 1)[1]) for line in text.splitlines() if line.startswith("MLXDM_REPORT ")]
    if not reports:
        raise SystemExit(f"no training report from mlx_lm.lora:\n{text[-3000:]}")
    report = reports[-1]
    return {"loss": report["train_loss"], "tokens_per_second": report["tokens_per_second"],
            "peak_memory_gb": report["peak_memory"], "trained_tokens": report["trained_tokens"]}


def run_ours(base: str, work: Path, steps: int, seq: int, batch: int, lr: float) -> dict:
    project = work / "project"
    project.mkdir()
    (project / "ai-training").symlink_to(ROOT / "ai-training", target_is_directory=True)
    (project / "mlx-dm.toml").write_text(
        f"[train]\nsteps_per_eval = {10 * steps}\nsteps_per_checkpoint = {10 * steps}\nlora_dropout = 0.0\n"
        f"lora_rank = 8\nlora_alpha = 16.0\nwarmup_fraction = 0.0\n")
    args = [sys.executable, "-m", "mlx_dm", "-C", str(project), "train", "--base", base, "--epochs", "100",
            "--max-steps", str(steps), "--max-seq-length", str(seq), "--batch-size", str(batch),
            "--learning-rate", str(lr), "--no-resume"]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"mlx-dm train failed:\n{(out.stdout + out.stderr)[-3000:]}")
    run = next((project / "runs").iterdir())
    result = json.loads((run / "train_state.json").read_text())["result"]
    return {"loss": result["last_train_loss"], "tokens_per_second": result["tokens_per_second"],
            "peak_memory_gb": result["peak_memory_bytes"] / 1e9, "trained_tokens": result["trained_tokens"],
            "padding_fraction": result["padding_fraction"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--base", default="tiny")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, base_path, stock_data = prepare(args.base, work)
        stock = run_stock(base_path, stock_data, work, args.steps, args.seq, args.batch, args.lr)
        ours = run_ours(args.base, work, args.steps, args.seq, args.batch, args.lr)
    print(f"base {args.base}, {args.steps} steps, batch {args.batch}, sequence {args.seq}")
    print(f"{'':14}{'tokens/s':>10}{'peak GB':>10}{'tokens':>10}{'loss':>8}")
    for name, row in (("mlx_lm.lora", stock), ("mlx-dm train", ours)):
        print(f"{name:14}{row['tokens_per_second']:>10.1f}{row['peak_memory_gb']:>10.3f}{row['trained_tokens']:>10}{row['loss']:>8.3f}")
    print(f"tokens/s ratio (mlx-dm / mlx_lm.lora): {ours['tokens_per_second'] / stock['tokens_per_second']:.2f}  (target >= 1.5)")
    print(f"peak memory ratio (mlx-dm / mlx_lm.lora): {ours['peak_memory_gb'] / stock['peak_memory_gb']:.2f}  (target <= 0.8)")
    print(f"mlx-dm padding fraction: {ours['padding_fraction']:.1%}")
    print(json.dumps({"stock": stock, "mlx_dm": ours}))


if __name__ == "__main__":
    main()
