"""The MLX half of e2b_training.py: mlx-dm's training forward and gradients on the same weights and
inputs, and the report against transformers' figures (see that file's docstring)."""

from __future__ import annotations

import json
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np

from e2b_training import BOUNDS, GRADIENT_LAYERS, LORA_KEYS, digest, dm_positions, lora_init, weights

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def write_checkpoint(spec: dict, folder: Path) -> Path:
    """The E2B-shaped model as a bf16 safetensors checkpoint (streamed: never held whole in memory)."""
    checkpoint = folder / "checkpoint"
    stamp = checkpoint / "digest.txt"
    if stamp.exists() and stamp.read_text() == spec["digest"]:
        return checkpoint
    shutil.rmtree(checkpoint, ignore_errors=True)
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text(json.dumps(spec["config"], indent=2))
    tiny = ROOT / ".mlx-dm" / "models" / "tiny-gemma3n"  # a tokenizer for the loader; ids come from inputs.npz
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny / name, checkpoint / name)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in spec["tensors"]:
        size = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    start = time.time()
    with open(checkpoint / "model.safetensors", "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        for _, bits in weights(spec):
            handle.write(bits.tobytes())
    print(f"checkpoint written in {time.time() - start:.0f} s ({offset / 1e9:.1f} GB)", flush=True)
    stamp.write_text(spec["digest"])
    return checkpoint


def main_mlx(folder: Path) -> None:
    import mlx_dm  # noqa: F401 - loads OpenBLAS before mlx.core (cpu_blas.py)
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_dm.config import Config
    from mlx_dm.model import patches, per_layer_embeddings
    from mlx_dm.model.load import load_model
    from mlx_dm.train import batching
    from mlx_dm.train.setup import apply_lora, enable_grad_checkpoint
    from mlx_dm.train.step import attention_mask, loss_fn

    spec = json.loads((folder / "spec.json").read_text())
    assert digest(spec) == spec["digest"]
    checkpoint = write_checkpoint(spec, folder)
    inputs = np.load(folder / "inputs.npz")
    lora = lora_init(spec)
    count = len([k for k in inputs.files if k.startswith("ids_")])
    rows = [batching.PackedRow(inputs[f"ids_{i}"], inputs[f"mask_{i}"], np.ones(len(inputs[f"ids_{i}"]), np.int32), [i])
            for i in range(count)]
    batch = batching.make_batch(rows, max(len(r.ids) for r in rows))
    positions, weights_ = batch.loss_positions()
    real = int(weights_.sum())
    expected = sum(len(dm_positions(inputs[f"ids_{i}"], inputs[f"mask_{i}"])) for i in range(count))
    assert real == expected, (real, expected)
    start = time.time()
    loaded = load_model(checkpoint, dtype="float32", lazy=True)
    model = loaded.model
    per_layer_embeddings.keep_rows(model, checkpoint, np.concatenate([inputs[f"ids_{i}"] for i in range(count)]))
    mx.eval(model.parameters())
    apply_lora(model, Config())
    # E2B's activations for two 700-token rows do not fit 24 GB beside the float32 weights: recompute
    # them in the backward pass, as the trainer does when a row does not fit (exact: tests/test_model.py).
    enable_grad_checkpoint(model)
    updates = []
    for name, module in model.named_modules():
        for key in LORA_KEYS:
            marker = "layers."
            if name.endswith(key) and marker in name:
                layer = int(name.split(marker)[1].split(".")[0])
                updates += [(f"{name}.lora_a", mx.array(lora[f"{layer}.{key}.a"])),
                            (f"{name}.lora_b", mx.array(lora[f"{layer}.{key}.b"]))]
    model.load_weights(updates, strict=False)
    print(f"model loaded in {time.time() - start:.0f} s; {len(updates)} LoRA tensors set", flush=True)
    arrays = [mx.array(batch.inputs), mx.array(batch.targets), mx.array(positions), mx.array(weights_),
              mx.array(batch.segments)]
    start = time.time()
    (loss, _), grads = nn.value_and_grad(model, loss_fn)(model, *arrays)
    mx.eval(loss, grads)
    seconds = time.time() - start
    selected = patches.hidden_states(model, arrays[0], mask=attention_mask(arrays[4]), positions=arrays[2])
    logits = np.array(patches.output_logits(model, selected).astype(mx.float32))[:real]
    out = {"loss": np.array(loss.item()), "argmax": logits.argmax(-1), "logits": logits}
    for name, value in tree_flatten(grads):
        if ".lora_" not in name:
            continue
        layer = int(name.split("layers.")[1].split(".")[0])
        key = next(k for k in LORA_KEYS if f".{k}." in name)
        if layer in GRADIENT_LAYERS:
            out[f"grad.{layer}.{key}.{'a' if name.endswith('lora_a') else 'b'}"] = np.array(value)
    print(f"mlx-dm float32: loss {out['loss']:.6f}, forward+backward {seconds:.0f} s, peak "
          f"{mx.get_peak_memory() / 2**30:.1f} GiB", flush=True)
    np.savez(folder / "mlx-f32.npz", **out)


def compare(ours: dict, theirs: dict, bounds: dict) -> dict:
    """Logits (full rows at sampled positions, the reference's top 64 everywhere), argmax, loss, gradients."""
    sample = theirs["sample_positions"]
    if "logits" in ours:  # every DM position's row
        full = np.abs(ours["logits"][sample] - theirs["sample_logits"])
        top = np.abs(np.take_along_axis(ours["logits"], theirs["top_ids"].astype(np.int64), -1) - theirs["top_values"])
    else:  # transformers against itself: the rows both runs sent back
        full = np.abs(ours["sample_logits"] - theirs["sample_logits"])
        top = full
    cosines, norms, zero = {}, {}, []
    for name in sorted(k for k in theirs if k.startswith("grad.")):
        a, b = ours[name].reshape(-1).astype(np.float64), theirs[name].reshape(-1).astype(np.float64)
        if not np.any(b) and not np.any(a):
            zero.append(name)
            continue
        cosines[name] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
        norms[name] = float(np.linalg.norm(a) / (np.linalg.norm(b) + 1e-30) - 1)
    result = {
        "loss_ours": float(ours["loss"]), "loss_theirs": float(theirs["loss"]),
        "loss_rel": abs(float(ours["loss"]) - float(theirs["loss"])) / abs(float(theirs["loss"])),
        "argmax": float((ours["argmax"] == theirs["argmax"]).mean()), "positions": int(len(theirs["argmax"])),
        "max_logit_diff": float(max(full.max(), top.max())), "mean_logit_diff": float(full.mean()),
        "top64_mean_logit_diff": float(top.mean()),
        "grad_cosine": min(cosines.values()), "grad_norm_rel": max(abs(v) for v in norms.values()),
        "grad_tensors": len(cosines), "grad_both_zero": zero,
        "worst_cosine": min(cosines, key=cosines.get), "worst_norm": max(norms, key=lambda k: abs(norms[k])),
    }
    result["passed"] = {key: (result[key] >= bound if key in ("argmax", "grad_cosine") else result[key] <= bound)
                        for key, bound in bounds.items()}
    return result


def main_report(folder: Path, out: Path) -> None:
    ours = dict(np.load(folder / "mlx-f32.npz"))
    rows = {}
    for tag, theirs_tag, bounds in (("mlx-dm float32 vs transformers float32", "f32", "float32"),
                                    ("transformers bf16 vs transformers float32", None, "bfloat16"),
                                    ("mlx-dm float32 vs transformers bf16", "bf16", "bfloat16")):
        if theirs_tag is None:
            f32 = {**dict(np.load(out / "logits-f32.npz")), **dict(np.load(out / "grads-f32.npz"))}
            bf16 = {**dict(np.load(out / "logits-bf16.npz")), **dict(np.load(out / "grads-bf16.npz"))}
            rows[tag] = compare(f32, bf16, BOUNDS[bounds])
            continue
        theirs = {**dict(np.load(out / f"logits-{theirs_tag}.npz")), **dict(np.load(out / f"grads-{theirs_tag}.npz"))}
        rows[tag] = compare(ours, theirs, BOUNDS[bounds])
    (folder / "report.json").write_text(json.dumps({"bounds": BOUNDS, "results": rows}, indent=2))
    lines = ["| comparison | loss (ours / theirs) | argmax | max / mean logit diff | top-64 mean diff | "
             "min grad cosine | max grad norm diff | pass |", "|---|---|---|---|---|---|---|---|"]
    for tag, r in rows.items():
        lines.append(f"| {tag} | {r['loss_ours']:.5f} / {r['loss_theirs']:.5f} | {r['argmax']:.4f} of {r['positions']} | "
                     f"{r['max_logit_diff']:.4f} / {r['mean_logit_diff']:.5f} | {r['top64_mean_logit_diff']:.5f} | "
                     f"{r['grad_cosine']:.6f} | {r['grad_norm_rel']:.2e} | {all(r['passed'].values())} |")
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for tag, r in rows.items():
        failed = [k for k, ok in r["passed"].items() if not ok]
        print(f"{tag}: {'pass' if not failed else 'FAIL ' + ', '.join(failed)}; {r['grad_tensors']} gradient tensors, "
              f"{len(r['grad_both_zero'])} zero on both sides; worst cosine {r['worst_cosine']}")
