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
import tempfile
from pathlib import Path

from mlx_dm.bench import train_ours, train_stock

ROOT = Path(__file__).resolve().parents[1]


def prepare(base: str, work: Path) -> tuple[Path, Path, Path]:
    from mlx_dm.bench import stock_lora_data
    from mlx_dm.cli import build_dataset_from_config
    from mlx_dm.config import load_config
    from mlx_dm.model.hub import resolve_base

    config = load_config(ROOT)
    config.data.dataset_dir = str(work / "dataset")
    _, dataset_dir = build_dataset_from_config(config, ROOT / "ai-training")
    base_path = resolve_base(base, ROOT, ROOT / "ai-training")
    return dataset_dir, base_path, stock_lora_data(dataset_dir, work / "stock-data")


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
        stock = train_stock(base_path, stock_data, work, args.steps, args.seq, args.batch, args.lr)
        ours = train_ours(args.base, ROOT / "ai-training", work, args.steps, args.seq, args.batch, args.lr)
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
