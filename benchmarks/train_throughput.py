"""Training throughput and peak memory: `mlx-dm train` against stock `mlx_lm.lora`, same run.

    python benchmarks/train_throughput.py [--steps 12] [--seq 256] [--batch 2] [--base tiny]

--base: tiny (float32 for both trainers, as the mid-size ones), gemma3n-mid (a mid-size Gemma 3n
with random weights, built here: the tiny model's real tokenizer, E2B's head width, 1024 wide,
MLP 4096, 22 layers; 0.37B parameters; float32 for both trainers), gemma3n-mid-e2b-vocab (the same with E2B's vocabularies: 262,400 entries in the
output head and 262,144 rows in the per-layer embedding table, of which the tokenizer uses 640.
In a real E2B the head is a large share of a training step and the per-layer table the largest
tensor; the 640-entry model hides both. 2.1B parameters, 8.4 GB in float32),
gemma3-270m (real weights), or any base `mlx-dm train --base` takes.

Both train LoRA (rank 8, scale 2, attention + MLP projections of every layer) on the same
rendered scenarios, same sequence length, batch size and learning-rate schedule (cosine decay
from --lr, no warm-up), for the same number of
optimizer steps, each in its own process. Both processes get OpenBLAS (mlx_dm/cpu_blas.py), so
the difference is the trainers'. tokens/s counts real (non-padding) tokens, over the second half
of the steps (the first half compiles and warms up: bench.warmup_steps). In the same number of
steps mlx-dm trains more tokens (packed rows); tokens/s and memory are compared, not step counts.

The loss column is each trainer's own training loss: mlx_lm.lora's over every token of the text,
mlx-dm's over the Dungeon Master's tokens only, so they are not the same quantity. The "val"
columns score both final adapters the same way on the validation split (bench.validation_losses):
over the DM tokens and over every token.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from mlx_dm.bench import train_ours, train_stock, validation_losses
from mlx_dm.data.starter import STARTER_DIR

ROOT = Path(__file__).resolve().parents[1]


TINY = "tiny"
MID_SIZE = "gemma3n-mid"
MID_SIZE_E2B_VOCAB = "gemma3n-mid-e2b-vocab"
E2B_VOCAB = 262_400
E2B_PER_LAYER_VOCAB = 262_144


def mid_size_spec(e2b_vocab: bool = False):
    from mlx_dm.model.tiny import TinySpec

    spec = TinySpec(hidden_size=1024, intermediate_size=4096, num_attention_heads=4, num_key_value_heads=1,
                    head_dim=256, sliding_window=512)
    return replace(spec, extra_vocab=E2B_VOCAB - spec.vocab, per_layer_vocab=E2B_PER_LAYER_VOCAB) if e2b_vocab else spec


def float32_copy(checkpoint: Path, out: Path) -> Path:
    """The checkpoint with float32 weights. mlx_lm.lora computes in the checkpoint's dtype, and
    MLX's bfloat16 matrix products on the CPU are about 14x slower than float32 (OpenBLAS); mlx-dm
    computes in float32 on the CPU whatever the file holds. Same weights, same arithmetic for both."""
    import json
    import shutil

    import mlx.core as mx

    shutil.copytree(checkpoint, out)
    weights = mx.load(str(out / "model.safetensors"))
    mx.save_safetensors(str(out / "model.safetensors"), {k: v.astype(mx.float32) for k, v in weights.items()},
                        metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["torch_dtype"] = config["text_config"]["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def prepare(base: str, work: Path) -> tuple[Path, Path, Path]:
    from mlx_dm.bench import stock_lora_data
    from mlx_dm.config import load_config
    from mlx_dm.pipeline.data import build
    from mlx_dm.model.hub import resolve_base
    from mlx_dm.model.tiny import build_tiny_model

    config = load_config(ROOT).override(data={"dataset_dir": str(work / "dataset")})
    dataset_dir = build(config, STARTER_DIR).path
    if base in (MID_SIZE, MID_SIZE_E2B_VOCAB):
        base_path = float32_copy(build_tiny_model(ROOT / ".mlx-dm" / "models" / base, STARTER_DIR,
                                                  mid_size_spec(base == MID_SIZE_E2B_VOCAB)), work / f"{base}-f32")
    elif base == TINY:
        base_path = float32_copy(resolve_base(base, ROOT, STARTER_DIR), work / "tiny-f32")
    else:
        base_path = resolve_base(base, ROOT, STARTER_DIR)
    return dataset_dir, base_path, stock_lora_data(dataset_dir, work / "stock-data")


def main() -> None:
    from mlx_dm.cpu_blas import warn_if_slow

    warn_if_slow()  # before a run that the reference BLAS would make many times slower
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--base", default="tiny")
    parser.add_argument("--grad-checkpoint", action="store_true",
                        help="mlx-dm recomputes activations in the backward pass (train.grad_checkpoint)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset_dir, base_path, stock_data = prepare(args.base, work)
        stock = train_stock(base_path, stock_data, work, args.steps, args.seq, args.batch, args.lr)
        # mlx-dm trains the float32 copy made for this run where there is one, else the base by name.
        ours_base = str(base_path) if base_path.is_relative_to(work) else args.base
        ours = train_ours(ours_base, STARTER_DIR, work, args.steps, args.seq, args.batch, args.lr,
                          args.grad_checkpoint)
        for row in (stock, ours):
            row["validation"] = validation_losses(base_path, Path(row["adapter_dir"]), dataset_dir, args.seq)
        base_validation = validation_losses(base_path, None, dataset_dir, args.seq)
    print(f"base {args.base}, {args.steps} steps, batch {args.batch}, sequence {args.seq}"
          f"{', mlx-dm with gradient checkpointing' if args.grad_checkpoint else ''}")
    print(f"{'':14}{'tokens/s':>10}{'peak GB':>10}{'tokens':>10}{'loss':>8}{'val DM':>9}{'val all':>9}{'last lr':>10}")
    for name, row in (("mlx_lm.lora", stock), ("mlx-dm train", ours)):
        val = row["validation"]
        print(f"{name:14}{row['tokens_per_second']:>10.1f}{row['peak_memory_gb']:>10.3f}{row['trained_tokens']:>10}"
              f"{row['loss']:>8.3f}{val['dm_tokens']:>9.3f}{val['all_tokens']:>9.3f}{row['final_learning_rate']:>10.2e}")
    print(f"validation loss of the base (no adapter): DM tokens {base_validation['dm_tokens']:.3f}, "
          f"all tokens {base_validation['all_tokens']:.3f}")
    print(f"tokens/s ratio (mlx-dm / mlx_lm.lora): {ours['tokens_per_second'] / stock['tokens_per_second']:.2f}  (target >= 1.5)")
    print(f"peak memory ratio (mlx-dm / mlx_lm.lora): {ours['peak_memory_gb'] / stock['peak_memory_gb']:.2f}  (target <= 0.8)")
    print(f"validation loss on DM tokens, mlx-dm - mlx_lm.lora: {ours['validation']['dm_tokens'] - stock['validation']['dm_tokens']:+.3f}"
          f"  (target <= 0: not worse); on all tokens: {ours['validation']['all_tokens'] - stock['validation']['all_tokens']:+.3f}")
    print(f"mlx-dm padding fraction: {ours['padding_fraction']:.1%}")
    print(json.dumps({"stock": stock, "mlx_dm": ours, "base_validation": base_validation}))


if __name__ == "__main__":
    main()
