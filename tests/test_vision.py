"""Vision projector (mmproj) export on the tiny model with real Gemma 3n vision and audio towers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_dm.errors import ExportError
from mlx_dm.export.gguf import VISION_PREFIXES, convert_to_gguf, has_vision_tower, tensor_names
from mlx_dm.model.tiny import TINY_VISION_SPEC, TinySpec, build_tiny_model, multimodal_config, tower_weights, towers_manifest

from .conftest import ROOT


def test_tower_weights_follow_the_manifest_and_the_text_width():
    manifest = towers_manifest()
    weights = tower_weights(TINY_VISION_SPEC)
    assert set(weights) == set(manifest["tensors"])
    assert weights["model.embed_vision.embedding_projection.weight"].shape == (2048, 2048)
    stem = weights["model.vision_tower.timm_model.conv_stem.conv.weight"]
    assert list(stem.shape) == manifest["tensors"]["model.vision_tower.timm_model.conv_stem.conv.weight"]
    assert 0.1 < float(np.std(stem)) * (27 ** 0.5) < 10  # scaled by fan-in
    assert np.all(weights["model.vision_tower.timm_model.msfa.norm.weight"] == 1.0)
    config = multimodal_config(TINY_VISION_SPEC)
    assert config["vision_config"]["model_args"] == {"channel_multiplier": 0.0625}
    assert config["vision_config"]["vocab_offset"] == TINY_VISION_SPEC.vocab
    assert multimodal_config(TinySpec())["vision_config"]["architecture"] == "mobilenetv5_300m_enc"


def test_vision_export_of_a_base_without_towers_names_one_that_has_them(tmp_path):
    from mlx_dm.export.pipeline import ExportSpec, export_model

    base = build_tiny_model(tmp_path / "tiny", None)
    assert not has_vision_tower(base)
    with pytest.raises(ExportError, match="no vision tower") as error:
        export_model(ExportSpec(base, tmp_path / "adapter", tmp_path / "work", tmp_path, tmp_path, "dm", "tiny", "run",
                                vision=True))
    assert "tiny-vision" in error.value.hint and "E2B" in error.value.hint
    assert not (tmp_path / "work").exists()  # refused before any work


@pytest.fixture(scope="module")
def vision_export(tmp_path_factory):
    """An untrained (zero-B) LoRA adapter on tiny-vision, exported with --vision into a project."""
    from mlx_dm.config import load_config
    from mlx_dm.config import ExportConfig
    from mlx_dm.export.pipeline import ExportSpec, export_model
    from mlx_dm.model.hub import resolve_base
    from mlx_dm.model.load import load_model
    from mlx_dm.train.checkpoint import save_adapter
    from mlx_dm.train.setup import apply_lora

    from .test_train import make_project

    project = make_project(tmp_path_factory.mktemp("vision"), n_files=6)
    base = resolve_base("tiny-vision", project, project / "ai-training")
    config = load_config(project)
    loaded = load_model(base)
    adapter = project / "adapter"
    adapter.mkdir()
    save_adapter(adapter, loaded.model, apply_lora(loaded.model, config))
    from mlx_dm.pipeline.data import build

    dataset_dir = build(config).path
    quant = ExportConfig(quant="Q4_K_M", imatrix=False)  # the choice and the matrix are test_quantise's
    result = export_model(ExportSpec(base, adapter, project / "work", project, dataset_dir, "dm-tiny-gemma3n-vision",
                                     "tiny-vision", "run0", quant=quant, vision=True), say=lambda _: None)
    return project, base, result


@pytest.mark.slow
def test_vision_export_writes_an_mmproj_that_encodes_an_image(vision_export):
    project, base, result = vision_export
    check = result.mmproj_check
    assert check.ok and check.loads and check.finite
    assert check.image_tokens == 256 and check.embedding_width == 2048
    from gguf import GGUFReader

    from mlx_dm.export.gguf import gguf_metadata

    meta = gguf_metadata(result.mmproj)
    assert meta["clip.vision.projector_type"] == "gemma3nv" and meta["clip.has_vision_encoder"]
    tensors = GGUFReader(str(result.mmproj)).tensors
    assert len(tensors) > 500 and not any(t.name.startswith("a.") for t in tensors)  # no audio weights
    gammas = [t for t in tensors if t.name.endswith("layer_scale.gamma")]
    assert gammas and all(list(t.shape[:2]) == [1, 1] for t in gammas)  # [1, C, 1, 1]: broadcast over W, H
    report = (project / "work" / "export-report.md").read_text()
    assert "## Vision projector (mmproj)" in report and "256 tokens" in report
    assert json.loads((project / "work" / "export-report.json").read_text())["mmproj_check"]["image_tokens"] == 256


@pytest.mark.slow
def test_vision_export_places_the_mmproj_and_a_cactus_vlm_config(vision_export):
    from mlx_dm.registry import promote

    project, _, result = vision_export
    placed = result.placed
    assert placed.mmproj_path and (project / placed.mmproj_path).is_file()
    assert placed.mmproj_size_bytes == result.mmproj.stat().st_size and len(placed.mmproj_sha256) == 64
    promoted = promote(project, placed.version)
    models = project / "assets" / "models"
    manifest = json.loads((models / "manifest.json").read_text())["current"]
    assert manifest["mmproj_sha256"] == placed.mmproj_sha256 and manifest["mmproj_size_bytes"] > 0
    config = json.loads((models / "cactus-config.json").read_text())
    assert config["loader"] == "CactusVLM" and config["mmprojPath"].endswith("dm-tiny-gemma3n-vision-v1-mmproj.gguf")
    assert (models / Path(promoted.mmproj_path).name).is_file() and (project / config["mmprojAsset"]).is_file()
    assert "CactusVLM.init" in (models / "cactus-config.ts").read_text()


def _vision_view(base: Path, out: Path, with_audio: bool) -> Path:
    """The base's config and tower tensors as stored (no workaround applied)."""
    import mlx.core as mx

    out.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy2(base / name, out / name)
    prefixes = VISION_PREFIXES + (("model.audio_tower.", "model.embed_audio.") if with_audio else ())
    weights = {k: v for k, v in mx.load(str(base / "model.safetensors")).items() if k.startswith(prefixes)}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "pt"})
    return out


@pytest.mark.slow
def test_upstream_converter_fails_on_the_audio_tower_without_the_workaround(vision_export, tmp_path):
    _, base, _ = vision_export
    assert any(name.startswith("model.audio_tower.") for name in tensor_names(base))
    view = _vision_view(base, tmp_path / "view", with_audio=True)
    with pytest.raises(ExportError, match="Can not map tensor 'model.audio_tower.subsample_conv_projection"):
        convert_to_gguf(view, tmp_path / "mmproj.gguf", "f16", mmproj=True)
    assert not (tmp_path / "mmproj.gguf").exists()


@pytest.mark.slow
def test_upstream_mmproj_with_vector_layer_scales_aborts_at_the_first_image(vision_export, tmp_path):
    _, base, result = vision_export
    view = _vision_view(base, tmp_path / "view", with_audio=False)
    mmproj = convert_to_gguf(view, tmp_path / "mmproj.gguf", "f16", mmproj=True)
    code = ("import sys; from mlx_dm.evaluate.gguf_checks import check_mmproj; "
            "print(check_mmproj(sys.argv[1], sys.argv[2]))")
    crashed = subprocess.run([sys.executable, "-c", code, str(result.gguf), str(mmproj)], capture_output=True,
                             text=True, cwd=ROOT, timeout=300)
    assert crashed.returncode != 0 and "ggml_can_repeat" in crashed.stdout + crashed.stderr


def vision_weights_digest(base: Path) -> str:
    """As tests/reference/make_vision_reference.py computes it: float32 bytes in name order."""
    import hashlib

    import mlx.core as mx

    weights = {k: v for k, v in mx.load(str(base / "model.safetensors")).items() if k.startswith(VISION_PREFIXES)}
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode() + np.array(weights[name].astype(mx.float32)).tobytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_mmproj_image_embeddings_match_transformers(vision_export):
    """llama.cpp's encoding of a 768x768 image against transformers + timm (tests/reference/)."""
    from mlx_dm.evaluate.gguf_checks import encode_image, test_image

    _, base, result = vision_export
    reference = np.load(ROOT / "tests" / "fixtures" / "gemma3n_vision_reference.npz")
    assert vision_weights_digest(base) == str(reference["weights_sha256"]), \
        "the tiny-vision towers changed: regenerate tests/fixtures/gemma3n_vision_reference.npz"
    embeddings, _ = encode_image(result.gguf, result.mmproj, test_image(768))
    assert list(embeddings.shape) == list(reference["shape"])
    ours = embeddings[reference["rows"]]
    theirs = reference["embeddings"]
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.9999  # measured: 0.999999 (f16 weights in the mmproj)
    assert np.abs(ours - theirs).max() < 0.05  # measured: 0.005, values of about 0.8 on average
    assert abs(float(np.abs(embeddings).mean()) - float(reference["mean_abs"])) < 1e-3


@pytest.mark.slow
def test_mmproj_beside_a_text_model_of_another_width_fails_the_check_with_llama_cpps_reason(vision_export, tmp_path):
    from mlx_dm.evaluate.gguf_checks import check_mmproj

    _, _, result = vision_export
    narrow = convert_to_gguf(build_tiny_model(tmp_path / "tiny", None), tmp_path / "tiny-f16.gguf")
    check = check_mmproj(narrow, result.mmproj)
    assert not check.ok and not check.loads
    assert "could not load the projector" in check.problems[0] and "n_embd = 64" in check.problems[0]
