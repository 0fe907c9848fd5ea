"""Gemma 3n's training forward and LoRA gradients at E2B scale: mlx-dm (MLX, here) against Hugging
Face transformers (torch, on the GPU machine).

The E2B-shaped random model (4.5B parameters, 9 GB in bf16) cannot travel, so both machines build
it from a seed with the numpy code of this file: one generator per tensor, in a fixed order, values
rounded to bf16. `prepare` writes what does travel (a few MB): the tensor names and shapes, the token
ids of two rendered scenarios longer than Gemma's 512-token sliding window with their DM positions,
and the LoRA adapter's initial weights (B is not zero, so both factors get gradients).

    python tests/reference/e2b_training.py prepare DIR         # here (mlx-lm, the tiny tokenizer)
    python tests/reference/e2b_training.py reference DIR OUT   # GPU machine: transformers, float32 and bf16
    python tests/reference/e2b_training.py mlx DIR             # here: mlx-dm's training forward and gradients
    python tests/reference/e2b_training.py report DIR OUT      # the comparison against BOUNDS -> DIR/report.md

The reference runs every sequence on its own (batch 1); mlx-dm runs them as its trainer does: one
padded batch with the block-diagonal mask, the output head and the KV-shared layers at the DM
positions only, the per-layer table cut to the ids of the data.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

SEED = 20261201
LORA_RANK, LORA_SCALE = 8, 2.0  # mlx-dm's defaults: rank 8, alpha 16
LORA_KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
GRADIENT_LAYERS = (0, 1, 9, 10, 14, 19, 20, 25, 29)  # sparsity ends after 9, KV sharing starts at 20
FULL_LOGIT_POSITIONS = 12  # positions whose whole 262,400-wide logit row comes back
TOP = 64  # elsewhere: the reference's top-64 logits
CHUNK = 1 << 24
RESIDUAL_BRANCH_NORMS = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight",
                         "post_per_layer_input_norm.weight", "post_laurel_norm.weight")
# Written before the first run. float32: the same graph in two frameworks and two devices
# (TF32 off); bf16: transformers in bf16 against float32, where the rounding of 30 layers shows.
BOUNDS = {
    "float32": {"max_logit_diff": 0.05, "mean_logit_diff": 0.005, "argmax": 0.99, "loss_rel": 1e-4,
                "grad_cosine": 0.999, "grad_norm_rel": 0.01},
    "bfloat16": {"max_logit_diff": 2.0, "mean_logit_diff": 0.2, "argmax": 0.90, "loss_rel": 0.02,
                 "grad_cosine": 0.95, "grad_norm_rel": 0.10},
}


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even), as the raw 16 bits."""
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def scale_rule(name: str, shape: tuple[int, ...]):
    """The tiny builder's rules (mlx_dm/model/tiny.py: random_weights) as a function of a normal draw."""
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        return lambda n: shape[-1] ** -0.25 * (1.0 + 0.1 * n)
    if name.endswith(RESIDUAL_BRANCH_NORMS):
        return lambda n: 0.6 * (1.0 + 0.1 * n)
    if name.endswith("norm.weight") or name.endswith("correct_output_scale"):
        return lambda n: 1.0 + 0.1 * n
    if "embed_tokens" in name:
        return lambda n: 0.15 * n
    if name.endswith("_coefs.weight"):
        return lambda n: 0.1 * n
    return lambda n: n * np.float32(shape[-1] ** -0.5)


def weight(index: int, name: str, shape: list[int]) -> np.ndarray:
    """One tensor of the random model, bf16 bits, the same on every machine."""
    rng = np.random.default_rng([SEED, index])
    rule = scale_rule(name, tuple(shape))
    size = int(np.prod(shape))
    out = np.empty(size, np.uint16)
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        out[start:start + n] = to_bf16_bits(rule(rng.standard_normal(n, dtype=np.float32)).astype(np.float32))
    return out.reshape(shape)


def weights(spec: dict):
    for index, (name, shape) in enumerate(spec["tensors"]):
        yield name, weight(index, name, shape)


def lora_init(spec: dict) -> dict[str, np.ndarray]:
    """The adapter's initial weights, A (in x r) and B (r x out) as mlx-lm's LoRALinear holds them."""
    rng = np.random.default_rng([SEED, 99])
    by_name = {name: shape for name, shape in spec["tensors"]}
    lora = {}
    for layer in range(spec["config"]["text_config"]["num_hidden_layers"]):
        for key in LORA_KEYS:
            out_dim, in_dim = by_name[f"model.language_model.layers.{layer}.{key}.weight"]
            lora[f"{layer}.{key}.a"] = rng.uniform(-in_dim ** -0.5, in_dim ** -0.5, (in_dim, LORA_RANK)).astype(np.float32)
            lora[f"{layer}.{key}.b"] = (0.01 * rng.standard_normal((LORA_RANK, out_dim))).astype(np.float32)
    return lora


def digest(spec: dict) -> str:
    """A fingerprint of the generator's output (a few tensors' first values): both machines must agree."""
    import hashlib

    h = hashlib.sha256()
    for index in (0, 1, len(spec["tensors"]) // 2, len(spec["tensors"]) - 1):
        name, shape = spec["tensors"][index]
        h.update(np.ascontiguousarray(weight(index, name, shape).reshape(-1)[:4096]).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- here: inputs


def prepare(folder: Path, shape: str = "e2b") -> None:
    """`shape` "tiny" runs the same check on the tiny model (TinySpec()), to try the scripts in minutes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from mlx.utils import tree_flatten
    from mlx_lm.models.gemma3n import Model, ModelArgs

    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import E2B_SPEC, TinySpec, multimodal_config
    from mlx_dm.train import batching

    root = Path(__file__).resolve().parents[2]
    config = multimodal_config(E2B_SPEC if shape == "e2b" else TinySpec())
    model = Model(ModelArgs.from_dict(config))  # lazy: shapes only
    tensors = sorted((name, list(value.shape)) for name, value in tree_flatten(model.parameters()))
    tokenizer = load_model(root / ".mlx-dm" / "models" / "tiny-gemma3n").tokenizer
    examples = batching.load_examples(root / ".mlx-dm" / "dataset" / "train.jsonl", tokenizer, 1024)
    long = sorted((e for e in examples if len(e.ids) > 600), key=lambda e: -len(e.ids))[:2]
    assert len(long) == 2, "need two rendered scenarios longer than the 512-token window"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"config": config, "tensors": tensors, "lengths": [len(e.ids) for e in long]}
    spec["digest"] = digest(spec)
    (folder / "spec.json").write_text(json.dumps(spec))
    arrays = {f"ids_{i}": np.array(e.ids, np.int32) for i, e in enumerate(long)}
    arrays.update({f"mask_{i}": np.array(e.loss_mask, np.float32) for i, e in enumerate(long)})
    np.savez(folder / "inputs.npz", **arrays)
    print(f"{len(tensors)} tensors, sequences of {spec['lengths']} tokens, weights digest {spec['digest']}")


def dm_positions(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Positions t whose target ids[t+1] is a DM token (the trainer's shift)."""
    return np.flatnonzero(mask[1:] > 0)


def sampled_positions(count: int) -> np.ndarray:
    """Which DM positions of the concatenated list get full logit rows: spread over both sequences."""
    return np.unique(np.linspace(0, count - 1, FULL_LOGIT_POSITIONS).round().astype(int))


# ---------------------------------------------------------------- GPU machine: transformers


def reference(folder: Path, out: Path) -> None:
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    spec = json.loads((folder / "spec.json").read_text())
    got = digest(spec)
    assert got == spec["digest"], f"this machine's numpy draws other weights ({got} != {spec['digest']})"
    text = {k: v for k, v in spec["config"]["text_config"].items() if k not in ("architectures", "torch_dtype")}
    config = Gemma3nTextConfig(**text)
    config._attn_implementation = "eager"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Gemma3nForCausalLM(config)
    start = time.time()
    state = {}
    for name, bits in weights(spec):
        state[name.replace("model.language_model.", "model.")] = torch.from_numpy(from_bf16_bits(bits))
    print(f"weights drawn in {time.time() - start:.0f} s", flush=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) <= {"lm_head.weight"}, missing
    print("not in transformers' model (KV-shared layers' K/V):", len(unexpected), flush=True)
    model.tie_weights()
    del state
    model = model.to(torch.float32).eval()
    inputs = np.load(folder / "inputs.npz")
    lora = lora_init(spec)
    out.mkdir(parents=True, exist_ok=True)
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        tag = "f32" if dtype == torch.float32 else "bf16"
        start = time.time()
        result = _reference_pass(model, inputs, lora, dtype, device)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        print(f"{tag}: loss {result['loss']:.6f}, {time.time() - start:.1f} s, peak {peak:.1f} GiB", flush=True)
        np.savez(out / f"logits-{tag}.npz", **{k: v for k, v in result.items() if not k.startswith("grad")})
        np.savez(out / f"grads-{tag}.npz", **{k: v for k, v in result.items() if k.startswith("grad")})


def _reference_pass(model, inputs, lora: dict, dtype, device: str) -> dict:
    import torch

    params = {k: torch.tensor(v, device=device, dtype=dtype, requires_grad=True) for k, v in lora.items()}
    hooks = []
    for layer_index, layer in enumerate(model.model.layers):
        for key in LORA_KEYS:
            try:
                module = layer.get_submodule(key)
            except AttributeError:  # KV-shared layers have no K/V projections here (mlx-dm's get zero gradients)
                continue
            a, b = params[f"{layer_index}.{key}.a"], params[f"{layer_index}.{key}.b"]
            hooks.append(module.register_forward_hook(
                lambda mod, args, output, a=a, b=b: output + LORA_SCALE * ((args[0] @ a) @ b)))
    losses, logits_rows, top_values, top_ids, argmax, total = [], [], [], [], [], 0
    for i in range(len([k for k in inputs.files if k.startswith("ids_")])):
        ids = torch.tensor(inputs[f"ids_{i}"], device=device, dtype=torch.long)[None]
        positions = torch.tensor(dm_positions(inputs[f"ids_{i}"], inputs[f"mask_{i}"]), device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0, positions].float()
        targets = ids[0, positions + 1]
        losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        total += len(positions)
        values, indices = logits.topk(TOP, dim=-1)
        top_values.append(values.detach().cpu().numpy())
        top_ids.append(indices.cpu().numpy())
        argmax.append(logits.argmax(-1).cpu().numpy())
        logits_rows.append(logits.detach())
    loss = sum(losses) / total
    loss.backward()
    for hook in hooks:
        hook.remove()
    everything = torch.cat(logits_rows)
    sample = torch.tensor(sampled_positions(everything.shape[0]), device=device)
    out = {"loss": np.array(float(loss)), "argmax": np.concatenate(argmax), "top_values": np.concatenate(top_values),
           "top_ids": np.concatenate(top_ids), "sample_positions": sample.cpu().numpy(),
           "sample_logits": everything[sample].cpu().numpy()}
    for layer in (layer for layer in GRADIENT_LAYERS if layer < len(model.model.layers)):
        for key in LORA_KEYS:
            for part in ("a", "b"):
                grad = params[f"{layer}.{key}.{part}"].grad
                out[f"grad.{layer}.{key}.{part}"] = (grad if grad is not None else torch.zeros(1)).float().cpu().numpy()
    return out


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "prepare":
        prepare(Path(args[0]), *args[1:])
    elif command == "reference":
        reference(Path(args[0]), Path(args[1]))
    elif command in ("mlx", "report"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from e2b_training_mlx import main_mlx, main_report

        (main_mlx if command == "mlx" else main_report)(*map(Path, args))
    else:
        raise SystemExit(__doc__)
