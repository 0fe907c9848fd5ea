"""HF checkpoint → f16 GGUF (llama.cpp's own converter) → quantised GGUF (llama.cpp's llama-quantize).

The converter comes from the llama-cpp-python sdist of exactly the version we install, with its
own gguf-py (llama/source.py; a different PyPI `gguf` fails to convert Gemma 3n). It runs as a
subprocess so its imports never mix with ours.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ExportError
from ..llama.source import converter_dir
from ..llama.tools import run_tool
from ..files import atomic_path

# The llama-quantize types an export may ask for (by name: llama-quantize takes the name).
QUANT_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
               "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_XS")


def convert_to_gguf(hf_dir: Path, out_file: Path, outtype: str = "f16", log_file: Path | None = None,
                    mmproj: bool = False, model_name: str | None = None) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py (``mmproj``: its projector mode); writes ``out_file`` atomically.

    ``model_name`` becomes the file's general.name (the converter's own guess is the folder's
    name, "Fused"); quantising keeps it."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    out_file = Path(out_file)
    needed = sum(p.stat().st_size for p in Path(hf_dir).glob("*.safetensors"))
    ensure_disk(out_file.parent, needed * (2 if outtype == "f32" else 1.1))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py
    with atomic_path(out_file) as tmp:
        result = subprocess.run([sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", outtype]
                                + (["--mmproj"] if mmproj else []) + (["--model-name", model_name] if model_name else []), capture_output=True, text=True, env=env)
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


def check_quant(quant: str) -> str:
    quant = quant.upper()
    if quant not in QUANT_TYPES:
        raise ExportError(f"unknown quantisation type {quant}", f"choose one of {', '.join(QUANT_TYPES)}")
    return quant


def check_export_types(quant: str, candidates: list[str]) -> None:
    """Every type [export] names (a forced one, or the candidates of "auto") is one llama-quantize
    writes: checked before a run trains or an export converts, not after."""
    for name in [*candidates] if quant.lower() == "auto" else [quant]:
        check_quant(name)


def quantize(in_file: Path, out_file: Path, quant: str = "Q4_K_M", threads: int = 0,
             tensor_types: dict[str, str] | None = None, imatrix: Path | None = None) -> Path:
    """Quantise ``in_file`` to ``quant``; writes ``out_file`` atomically.

    ``tensor_types`` maps a tensor-name regex to a ggml type name (as llama-quantize's
    --tensor-type), e.g. {"per_layer_token_embd": "Q2_K"}. ``imatrix`` (an importance matrix from
    llama-imatrix) weighs each weight column by the activations it saw. llama.cpp's own
    llama-quantize does the work (llama/tools.py): the library's llama_model_quantize takes the
    matrix as a C++ map, which Python cannot hand it.
    """
    quant = check_quant(quant)
    for type_name in (tensor_types or {}).values():
        _ggml_type(type_name)
    ensure_disk(Path(out_file).parent, Path(in_file).stat().st_size * 0.6)
    threads = threads or (os.cpu_count() or 1)
    with atomic_path(Path(out_file)) as tmp:
        args = _tensor_type_args(tensor_types) + (["--imatrix", str(imatrix)] if imatrix else [])
        code, tail = run_tool("llama-quantize", [*args, str(in_file), str(tmp), quant, str(threads)],
                              Path(out_file).with_suffix(".quantize.log"))
        if code != 0:
            raise ExportError(f"llama.cpp could not quantise {in_file} to {quant} (exit {code}):\n{tail}",
                              "try another type with --quant (e.g. Q8_0), and check the f16 GGUF loads")
    return Path(out_file)


def estimated_size(in_file: Path, quant: str, tensor_types: dict[str, str] | None = None) -> int:
    """Bytes of ``in_file`` quantised to ``quant`` with ``tensor_types``, from llama-quantize --dry-run
    (it sizes every tensor without writing one): the tensors' new size plus the unchanged metadata."""
    args = _tensor_type_args(tensor_types)
    log = Path(in_file).with_name(f".{Path(in_file).name}.dry-run.log")
    code, tail = run_tool("llama-quantize", ["--dry-run", *args, str(in_file), check_quant(quant)], log)
    text = log.read_text(errors="replace")
    log.unlink(missing_ok=True)
    found = {key: float(value) for key, value in re.findall(r"(model|quant) size\s*=\s*([0-9.]+) MiB", text)}
    if code != 0 or set(found) != {"model", "quant"}:
        raise ExportError(f"llama-quantize --dry-run could not size {in_file} as {quant}:\n{tail}",
                          "check the f16 GGUF loads (`mlx-dm chat --model` on it)")
    return int(Path(in_file).stat().st_size + (found["quant"] - found["model"]) * 2**20)


def _tensor_type_args(tensor_types: dict[str, str] | None) -> list[str]:
    return [item for pattern, type_name in (tensor_types or {}).items()
            for item in ("--tensor-type", f"{pattern}={type_name.lower()}")]


def _ggml_type(type_name: str) -> int:
    from gguf import GGMLQuantizationType

    try:
        return int(GGMLQuantizationType[type_name.upper()])
    except KeyError:
        raise ExportError(f"unknown tensor type {type_name}",
                          "use a ggml type name such as Q2_K, Q3_K, Q4_K, Q6_K, Q8_0, F16") from None


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
