"""The tiny Gemma 3n, the load path, and every fix in mlx_dm/model/patches.py against a reference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_dm.model import patches
from mlx_dm.model.hub import resolve_base
from mlx_dm.model.load import load_model
from mlx_dm.model.tiny import SPECIAL_TOKENS, TinySpec, build_tiny_model
from mlx_dm.errors import ModelError
from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-gemma3n", STARTER_DIR)


@pytest.fixture(scope="session")
def reference_tiny_dir(tmp_path_factory) -> Path:
    """TinySpec() with seed 0; the tokenizer does not matter to the reference (it holds token ids)."""
    return build_tiny_model(tmp_path_factory.mktemp("reference") / "tiny-gemma3n", None)


@pytest.fixture
def upstream():
    """Run a test against mlx-lm without our fixes, then put them back."""
    patches.remove()
    try:
        yield
    finally:
        patches.apply()


def _float32(path: Path):
    loaded = load_model(path)
    loaded.model.set_dtype(mx.float32)
    return loaded


def test_tiny_checkpoint_layout_and_tokenizer(tiny_dir):
    import sentencepiece as spm

    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= names
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3n" and {"vision_config", "audio_config"} <= set(config)
    text = config["text_config"]
    # llama.cpp's hard-coded Gemma 3n sizes.
    assert text["hidden_size_per_layer_input"] == 256 and text["laurel_rank"] == 64 and text["altup_num_inputs"] == 4
    assert text["num_hidden_layers"] - text["num_kv_shared_layers"] == 20
    assert text["activation_sparsity_pattern"] == [0.95] * 10 + [0.0] * (text["num_hidden_layers"] - 10)
    assert [i for i, t in enumerate(text["layer_types"]) if t == "full_attention"] == [4, 9, 14, 19]
    assert (tiny_dir / "model.safetensors").stat().st_size < 16 * 1024 * 1024
    processor = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    assert [processor.id_to_piece(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)
    weights = mx.load(str(tiny_dir / "model.safetensors"))
    assert all(v.dtype == mx.bfloat16 for v in weights.values())
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in weights
    assert "model.language_model.embed_tokens_per_layer.weight" in weights


def test_tiny_builder_is_deterministic_and_cached(tmp_path, tiny_dir):
    again = build_tiny_model(tmp_path / "again", STARTER_DIR)
    for name in ("model.safetensors", "tokenizer.model", "config.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes()
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(tmp_path / "again", STARTER_DIR)
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_hf_tokenizer_matches_sentencepiece(tiny_dir):
    import sentencepiece as spm

    loaded = load_model(tiny_dir)
    processor = spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))
    text = "<start_of_turn>model\nRoll for initiative!  [roll: 1d20+3]\n\nTool results:\nperception: 15<end_of_turn>\n"
    assert loaded.tokenizer.encode(text, add_special_tokens=False) == processor.encode(text)
    assert loaded.tokenizer.encode("hi")[0] == 2  # <bos> added, as Gemma does
    assert set(loaded.tokenizer.eos_token_ids) == {1, 6}


def test_forward_matches_transformers_reference(reference_tiny_dir):
    """Tiny model against Hugging Face transformers' Gemma 3n (tests/reference/), float32."""
    inputs = json.loads((FIXTURES / "gemma3n_reference_inputs.json").read_text())
    reference = np.load(FIXTURES / "gemma3n_reference.npz")
    path = reference_tiny_dir
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == inputs["weights_sha256"], \
        "the tiny model's weights changed: regenerate tests/fixtures/gemma3n_reference.npz"
    model = _float32(path).model
    from mlx_lm.models.cache import make_prompt_cache

    for index, ids in enumerate(inputs["prompts"]):
        expected = reference[f"logits_{index}"]
        no_cache = np.array(model(mx.array([ids]))[0])  # as the trainer runs it
        assert np.abs(no_cache - expected).max() < 1e-3
        cache = make_prompt_cache(model)
        logits = model(mx.array([ids]), cache=cache)
        assert np.abs(np.array(logits[0]) - expected).max() < 1e-3
        tokens = []
        for _ in range(8):
            tokens.append(int(logits[0, -1].argmax()))
            logits = model(mx.array([[tokens[-1]]]), cache=cache)
        assert tokens == reference["greedy"][index].tolist()


def test_kv_sharing_fix_is_needed(reference_tiny_dir, upstream):
    inputs = json.loads((FIXTURES / "gemma3n_reference_inputs.json").read_text())
    reference = np.load(FIXTURES / "gemma3n_reference.npz")
    from mlx_lm.utils import load  # stock mlx-lm: load_model() would re-apply the fixes

    model, _ = load(str(reference_tiny_dir))
    model.set_dtype(mx.float32)
    ids = inputs["prompts"][2]
    assert np.abs(np.array(model(mx.array([ids]))[0]) - reference["logits_2"]).max() > 0.05


def _zero_pad_row(model):
    embed = model.model.language_model.embed_tokens
    embed.weight = mx.concatenate([mx.zeros_like(embed.weight[:1]), embed.weight[1:]])


def test_altup_epsilon_fix(tiny_dir):
    model = load_model(tiny_dir).model
    _zero_pad_row(model)
    assert bool(mx.all(mx.isfinite(model(mx.array([[2, 0, 0, 5]])))))


def test_altup_epsilon_fix_is_needed(tiny_dir, upstream):
    from mlx_lm.utils import load

    model, _ = load(str(tiny_dir))
    _zero_pad_row(model)
    assert not bool(mx.all(mx.isfinite(model(mx.array([[2, 0, 0, 5]])))))


def _lora_forward(model, keys):
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": keys})
    return model(mx.array([[2, 5, 40, 41]]))


def test_lora_keys_fix(tiny_dir):
    out = _lora_forward(load_model(tiny_dir).model, list(patches.GEMMA3N_LORA_KEYS))
    assert bool(mx.all(mx.isfinite(out)))


def test_lora_default_keys_crash(tiny_dir):
    with pytest.raises(AttributeError, match="weight"):
        _lora_forward(load_model(tiny_dir).model, None)


def test_four_bit_base_loads_and_runs(tiny_dir):
    loaded = load_model(tiny_dir, quantize_4bit=True)
    assert loaded.quantized
    assert bool(mx.all(mx.isfinite(loaded.model(mx.array([[2, 5, 40, 41]])))))


def test_resolve_base_errors(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ModelError, match="not a folder"):
        resolve_base(str(tmp_path / "x.txt"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a Hugging Face checkpoint"):
        resolve_base(str(tmp_path / "empty"), tmp_path)


def test_download_offline_error_is_actionable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as info:
        resolve_base("google/gemma-3n-E2B-it", tmp_path)
    assert "hf download google/gemma-3n-E2B-it" in info.value.hint and "--base tiny" in info.value.hint


def test_e2b_shaped_config_has_the_real_size():
    from mlx_dm.model.tiny import E2B_SPEC, multimodal_config, parameter_count

    text = multimodal_config(E2B_SPEC)["text_config"]
    assert (text["vocab_size"], text["vocab_size_per_layer_input"], text["num_hidden_layers"]) == (262_400, 262_144, 30)
    assert text["num_hidden_layers"] - text["num_kv_shared_layers"] == 20
    assert [i for i, t in enumerate(text["layer_types"]) if t == "full_attention"] == [4, 9, 14, 19, 24, 29]
    assert 4.40e9 < parameter_count(E2B_SPEC) < 4.52e9  # "about 4.46B text parameters incl. per-layer embeddings"


def _lora_gradients(model, arrays) -> tuple[float, dict]:
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_dm.train.step import loss_fn

    (loss, _), grads = nn.value_and_grad(model, loss_fn)(model, *arrays)
    return loss.item(), {name: np.array(value) for name, value in tree_flatten(grads)}


@pytest.fixture
def lora_tiny(tiny_dir):
    from mlx_dm.config import Config
    from mlx_dm.train import batching
    from mlx_dm.train.setup import apply_lora
    from mlx_dm.train.step import batch_arrays

    model = load_model(tiny_dir, dtype="float32").model
    apply_lora(model, Config())
    rng = np.random.default_rng(1)
    example = batching.TokenizedExample("a", list(rng.integers(7, 600, 90)), [1] * 90)
    return model, batch_arrays(batching.make_batch(batching.pack([example], 96), 97))


def test_gradient_checkpointing_keeps_gemma3n_gradients_exact(lora_tiny):
    """Fix 5: checkpointed layers, KV sharing included, give the same loss and LoRA gradients."""
    from mlx_dm.train.setup import enable_grad_checkpoint

    model, arrays = lora_tiny
    loss, plain = _lora_gradients(model, arrays)
    enable_grad_checkpoint(model)
    try:
        checkpointed_loss, checkpointed = _lora_gradients(model, arrays)
    finally:
        model.model.language_model.checkpoint_layers = False
    assert checkpointed_loss == loss and plain.keys() == checkpointed.keys()
    for name in plain:
        assert np.allclose(checkpointed[name], plain[name], rtol=1e-5, atol=1e-8), name


def test_gradient_checkpointing_fix_is_needed(lora_tiny):
    """mlx-lm's grad_checkpoint on Gemma 3n: the gradients into the layer whose K/V are shared are wrong."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    model, arrays = lora_tiny
    _, plain = _lora_gradients(model, arrays)
    layer_class = type(model.layers[0])
    original = layer_class.__call__
    grad_checkpoint(model.layers[0])
    try:
        _, upstream_grads = _lora_gradients(model, arrays)
    finally:
        layer_class.__call__ = original
    owner = model.model.language_model.first_kv_shared_layer_idx - 2  # the last sliding layer before sharing
    name = f"model.language_model.layers.{owner}.self_attn.k_proj.lora_b"
    error = np.abs(upstream_grads[name] - plain[name]).max() / np.abs(plain[name]).max()
    assert error > 0.1, error
