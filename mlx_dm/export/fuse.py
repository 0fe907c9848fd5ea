"""Fuse LoRA adapters into the base weights and write a Hugging Face checkpoint llama.cpp accepts.

mlx-lm's own fuse drops `vision_config`/`audio_config`, the vision/audio tower weights and
`tokenizer.model`; llama.cpp's converter then fails. Here the base checkpoint's config, tokenizer
files and tower tensors are carried over unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_unflatten

from ..errors import ExportError
from ..model.load import load_model

CARRIED_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                 "chat_template.jinja", "generation_config.json", "preprocessor_config.json",
                 "processor_config.json")
TOWER_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")


def check_adapter(adapter_dir: Path, base_dir: Path) -> dict:
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapters.safetensors").exists() or not (adapter_dir / "adapter_config.json").exists():
        raise ExportError(f"no adapter in {adapter_dir} (adapters.safetensors and adapter_config.json expected)",
                          "train first (`mlx-dm train`), or pass --adapter with a run's adapters/ folder")
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base_config = json.loads((Path(base_dir) / "config.json").read_text())
    weights = mx.load(str(adapter_dir / "adapters.safetensors"))
    hidden = base_config.get("text_config", base_config).get("hidden_size")
    for name, value in weights.items():
        if name.endswith("lora_a") and "q_proj" in name and value.shape[0] != hidden:
            raise ExportError(f"adapter {adapter_dir} was trained on a model of width {value.shape[0]}, "
                              f"the base {base_dir} has width {hidden}",
                              "export with the base model the adapter was trained on (see the run's config.json)")
    return adapter_config


def fuse(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Write base + adapter as one bf16/fp16 checkpoint in ``out_dir`` (replaced atomically)."""
    from mlx_lm.utils import dequantize_model, save_model

    from ..files import write_dir_atomically

    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    check_adapter(adapter_dir, base_dir)
    loaded = load_model(base_dir, adapter_path=adapter_dir)
    model = loaded.model
    fused = [(name, module.fuse(dequantize=True)) for name, module in model.named_modules() if hasattr(module, "fuse")]
    if not fused:
        raise ExportError(f"{adapter_dir} added no LoRA layers to {base_dir}", "check the adapter's adapter_config.json")
    model.update_modules(tree_unflatten(fused))
    if loaded.quantized:
        model = dequantize_model(model)

    def write(tmp: Path) -> None:
        save_model(tmp, model, donate_model=False)
        _carry_base_files(base_dir, tmp)

    return write_dir_atomically(Path(out_dir), write)


def _carry_base_files(base_dir: Path, out: Path) -> None:
    config = json.loads((base_dir / "config.json").read_text())
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    # Gemma 3n lists two end tokens ([<eos>, <end_of_turn>]); gguf-py's SpecialVocab takes only an
    # int and, without a tokenizer.json to fall back on, writes no EOS at all (llama.cpp then uses
    # <bos>). The GGUF gets <eos>; <end_of_turn> is an end-of-generation token in llama.cpp anyway.
    if isinstance(config.get("eos_token_id"), list) and config["eos_token_id"]:
        config["eos_token_id"] = config["eos_token_id"][0]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in CARRIED_FILES:
        if (base_dir / name).exists():
            shutil.copy2(base_dir / name, out / name)
    towers = {}
    for shard in sorted(base_dir.glob("*.safetensors")):
        for name, value in mx.load(str(shard)).items():
            if name.startswith(TOWER_PREFIXES):
                towers[name] = value
    if towers:
        mx.save_safetensors(str(out / "model-towers.safetensors"), towers, metadata={"format": "pt"})
        _add_to_index(out, "model-towers.safetensors", list(towers))


def _add_to_index(out: Path, filename: str, names: list[str]) -> None:
    index_path = out / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:
        shards = [p.name for p in out.glob("*.safetensors") if p.name != filename]
        index = {"metadata": {}, "weight_map": {}}
        for shard in shards:
            for name in mx.load(str(out / shard)):
                index["weight_map"][name] = shard
    for name in names:
        index["weight_map"][name] = filename
    index_path.write_text(json.dumps(index, indent=2) + "\n")
