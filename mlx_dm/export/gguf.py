"""HF checkpoint → f16 GGUF (llama.cpp's own converter) → quantised GGUF (in-process, llama_cpp).

The converter comes from the llama-cpp-python sdist of exactly the version we install, with its
own gguf-py (llama/source.py; a different PyPI `gguf` fails to convert Gemma 3n). It runs as a
subprocess so its imports never mix with ours.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ExportError
from ..llama.runtime import quiet_llama_logs
from ..llama.source import converter_dir
from ..files import atomic_path

QUANT_TYPES = {
    "F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
    "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_XS": 30,
}


def convert_to_gguf(hf_dir: Path, out_file: Path, outtype: str = "f16", log_file: Path | None = None,
                    mmproj: bool = False) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py (``mmproj``: its projector mode); writes ``out_file`` atomically."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    out_file = Path(out_file)
    needed = sum(p.stat().st_size for p in Path(hf_dir).glob("*.safetensors"))
    ensure_disk(out_file.parent, needed * (2 if outtype == "f32" else 1.1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py
    with atomic_path(out_file) as tmp:
        result = subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", outtype]
                                + (["--mmproj"] if mmproj else []), capture_output=True, text=True, env=env)
        if log_file:
            Path(log_file).write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
            raise ExportError(f"llama.cpp's converter failed on {hf_dir}:\n{tail}",
                              "the full log is in the run folder; check that the checkpoint has tokenizer.model and config.json")
    return out_file


VISION_PREFIXES = ("model.vision_tower.", "model.embed_vision.")
MMPROJ_CARRIED_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.model",
                        "tokenizer_config.json", "special_tokens_map.json")


def tensor_names(checkpoint: Path) -> list[str]:
    """Tensor names of a safetensors checkpoint, read from the file headers (no weights loaded)."""
    from ..files import safetensors_headers

    return list(safetensors_headers(checkpoint))


def has_vision_tower(checkpoint: Path) -> bool:
    return any(name.startswith("model.vision_tower.") for name in tensor_names(checkpoint))


def convert_mmproj(hf_dir: Path, out_file: Path, log_file: Path | None = None) -> Path:
    """The vision projector (mmproj) GGUF of a Gemma 3n checkpoint, by llama.cpp's converter.

    Two workarounds for llama.cpp 0.3.36, both here, on a view of the checkpoint the converter reads:

    1. Its gguf-py has no name for Gemma 3n's audio `subsample_conv_projection.conv_N.norm` tensors,
       so `--mmproj` stops with "Can not map tensor" on every Gemma 3n checkpoint with its audio tower
       (the real E2B has one); and its runtime never runs Gemma 3n's audio encoder (mtmd skips audio
       for the gemma3nv projector). The view holds the vision tensors only, which also keeps unused
       audio weights out of the file the phone loads.
    2. The converter writes the MobileNetV5 blocks' `layer_scale.gamma` as a vector [C], but the
       runtime multiplies a [W, H, C] feature map by it, which needs [1, C, 1, 1] (the shape the
       converter does give the same tensor outside the blocks): image encoding aborts the process
       (GGML_ASSERT ggml_can_repeat) at the first image. The view stores the gammas as [1, C, 1, 1].
    """
    import tempfile

    import mlx.core as mx

    hf_dir = Path(hf_dir)
    with tempfile.TemporaryDirectory(prefix="mmproj-view-", dir=Path(out_file).parent) as tmp:
        view = Path(tmp)
        for name in MMPROJ_CARRIED_FILES:
            if (hf_dir / name).exists():
                shutil.copy2(hf_dir / name, view / name)
        vision = {}
        for shard in sorted(hf_dir.glob("*.safetensors")):
            vision.update({k: v for k, v in mx.load(str(shard)).items() if k.startswith(VISION_PREFIXES)})
        for name, value in vision.items():
            if name.endswith("layer_scale.gamma") and value.ndim == 1:
                vision[name] = value.reshape(1, -1, 1, 1)
        if not any(k.startswith("model.vision_tower.") for k in vision):
            raise ExportError(f"{hf_dir} has no vision tower weights (model.vision_tower.*), so there is no mmproj to write",
                              "export from a base that has them (google/gemma-3n-E2B-it does), or drop --vision")
        mx.save_safetensors(str(view / "model.safetensors"), vision, metadata={"format": "pt"})
        return convert_to_gguf(view, out_file, "f16", log_file=log_file, mmproj=True)


def quantize(in_file: Path, out_file: Path, quant: str = "Q4_K_M", threads: int = 0,
             tensor_types: dict[str, str] | None = None) -> Path:
    """Quantise in-process with llama_cpp.llama_model_quantize; writes ``out_file`` atomically.

    ``tensor_types`` maps a tensor-name regex to a ggml type name (as llama-quantize's
    --tensor-type), e.g. {"per_layer_token_embd": "Q2_K"}.
    """
    import llama_cpp
    from gguf import GGMLQuantizationType

    quant = quant.upper()
    if quant not in QUANT_TYPES:
        raise ExportError(f"unknown quantisation type {quant}", f"choose one of {', '.join(QUANT_TYPES)}")
    ensure_disk(Path(out_file).parent, Path(in_file).stat().st_size * 0.6)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.nthread = threads or (os.cpu_count() or 1)
    keep_alive = []
    if tensor_types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for index, (pattern, type_name) in enumerate(tensor_types.items()):
            try:
                ggml_type = GGMLQuantizationType[type_name.upper()]
            except KeyError:
                raise ExportError(f"unknown tensor type {type_name} for '{pattern}'",
                                  f"use a ggml type name such as Q2_K, Q3_K, Q4_K, Q6_K, Q8_0, F16") from None
            encoded = pattern.encode()
            keep_alive.append(encoded)
            overrides[index].pattern = encoded
            overrides[index].type = int(ggml_type)
        overrides[len(tensor_types)].pattern = None
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep_alive.append(overrides)
    with atomic_path(Path(out_file)) as tmp:
        with quiet_llama_logs():
            code = llama_cpp.llama_model_quantize(str(in_file).encode(), str(tmp).encode(), params)
        if code != 0:
            raise ExportError(f"llama.cpp could not quantise {in_file} to {quant} (code {code})",
                              "try another type with --quant (e.g. Q8_0), and check the f16 GGUF loads")
    return Path(out_file)


def ensure_disk(folder: Path, needed_bytes: float) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise ExportError(f"not enough disk in {folder}: {free / 1e9:.1f} GB free, about {needed_bytes / 1e9:.1f} GB needed",
                          "free some space (old runs in runs/ and old versions in assets/models/versions can go)")


def gguf_metadata(path: Path) -> dict:
    """Key/value metadata of a GGUF file, read with the gguf package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                                          "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
            out[key] = f"<{len(field.data)} entries>"
            continue
        try:
            value = field.contents()
        except Exception:  # noqa: BLE001 - a field gguf-py cannot render is reported as such
            value = "<unreadable>"
        out[key] = value
    out["_tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})
    return out
