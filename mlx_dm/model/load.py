"""Load a base checkpoint into mlx-lm with the Gemma 3n fixes applied, optionally with a 4-bit base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from . import patches


@dataclass
class LoadedModel:
    model: Any  # mlx_lm model (nn.Module)
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict
    path: Path
    quantized: bool

    @property
    def family(self) -> str:
        return "gemma3n" if self.config.get("model_type") == "gemma3n" else "gemma3"


def _quantizable(path: str, module: Any) -> bool:
    """4-bit only where the shapes allow it and the model code reads weights plainly.

    AltUp's coefficient layers reassign `.weight` inside their forward pass, and per-layer
    embeddings are sliced per layer: both stay in full precision.
    """
    import mlx.nn as nn

    if not isinstance(module, (nn.Linear, nn.Embedding)):
        return False
    if any(part in path for part in ("altup", "correction_coefs", "prediction_coefs", "modality_router")):
        return False
    return module.weight.shape[-1] % 64 == 0


def compute_dtype(name: str = "auto"):
    """bfloat16 on a GPU; float32 on the CPU, where MLX's bfloat16 matrix products are far slower."""
    import mlx.core as mx

    if name == "auto":
        return mx.float32 if mx.default_device() == mx.cpu else mx.bfloat16
    return {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[name]


def load_model(path: Path, quantize_4bit: bool = False, adapter_path: Path | None = None,
               dtype: str | None = None, lazy: bool = False) -> LoadedModel:
    """``dtype``: None keeps the checkpoint's, "auto" picks per device (compute_dtype). ``lazy``:
    no weight is read yet (the caller may still replace some, see per_layer_embeddings.keep_rows)."""
    import mlx.core as mx
    from mlx_lm.utils import load, quantize_model

    patches.apply()
    path = Path(path)
    try:
        model, tokenizer, config = load(str(path), adapter_path=str(adapter_path) if adapter_path else None,
                                        return_config=True, lazy=True)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise ModelError(f"mlx-lm could not load {path}: {exc}",
                         "check that the folder is a complete Gemma 3n/Gemma 3 checkpoint (config.json, *.safetensors, tokenizer files)") from exc
    except RuntimeError as exc:  # MLX's safetensors reader: truncated or corrupt files
        raise ModelError(f"mlx-lm could not read the weights in {path}: {exc}",
                         "the checkpoint looks incomplete or corrupt: download it again (for a Hugging Face repo, "
                         "`hf download <repo>` resumes and repairs it) or point --base at a complete copy") from exc
    if dtype is not None and not config.get("quantization"):
        model.set_dtype(compute_dtype(dtype))
    if quantize_4bit and not config.get("quantization"):
        model, config = quantize_model(model, config, group_size=64, bits=4, quant_predicate=_quantizable)
    if not lazy:
        mx.eval(model.parameters())
    return LoadedModel(model, tokenizer, config, path, bool(config.get("quantization")))
