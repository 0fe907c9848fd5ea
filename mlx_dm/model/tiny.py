"""An offline tiny Gemma 3n: real architecture and file layout, random weights, a real tokenizer.

Written as a Hugging Face checkpoint (`config.json` with text/vision/audio configs, bf16
`model.safetensors` under the standard weight names, SentencePiece `tokenizer.model` with Gemma's
special ids, `tokenizer_config.json` with Gemma 3n's chat template), deterministic from a seed.

The sizes respect what llama.cpp hard-codes for Gemma 3n (src/models/gemma3n.cpp, models.h), or it
will not load the converted GGUF: per-layer input width 256, LAuReL rank 64, 4 AltUp inputs,
KV sharing from layer 20 (so 22 layers, the last 2 shared), every 5th layer full attention,
activation sparsity 0.95 on exactly the first 10 layers.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..data.render import GEMMA_CHAT_TEMPLATE
from ..errors import ModelError
from ..files import write_dir_atomically

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
BUILDER_VERSION = 2  # bump when the checkpoint layout or sizes change: invalidates the cache


@dataclass(frozen=True)
class TinySpec:
    vocab: int = 640  # SentencePiece pieces (text vocabulary; per-layer-input vocabulary)
    hidden_size: int = 64
    # Wide enough that llama.cpp's sample std in the sparsity cut-off (n-1, where the reference
    # divides by n) moves the cut-off by 0.16% of a std, not 0.64%: see random_weights.
    intermediate_size: int = 512
    num_layers: int = 22
    num_kv_shared_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32
    sliding_window: int = 32
    seed: int = 0
    extra_vocab: int = 0  # vision/audio soft-token ids above the text vocabulary (real models: 256)
    max_position_embeddings: int = 4096
    towers: bool = False  # add small vision and audio towers (for the mmproj export)
    # Rows of the per-layer embedding table when not the text vocabulary (E2B: 262,144, above its
    # tokenizer's pieces in a tiny model, as in benchmarks of its memory); within vocab + extra_vocab.
    per_layer_vocab: int = 0


# The tiny model with vision and audio towers. llama.cpp 0.3.36's mtmd compares the projector's
# input width (MobileNetV5's 2048 features, fixed in timm) with the text model's width and refuses a
# mismatch (clip_n_mmproj_embd reads the wrong axis for Gemma 3n), so the text width is 2048, as in E2B.
TINY_VISION_SPEC = TinySpec(hidden_size=2048, intermediate_size=128, towers=True)

# google/gemma-3n-E2B-it's text part (see ../shared/notes): used for memory estimates and size
# benchmarks with random weights. Never built by default: its weights are about 9 GB in bf16.
E2B_SPEC = TinySpec(vocab=262_144, hidden_size=2048, intermediate_size=8192, num_layers=30, num_kv_shared_layers=10,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=256, sliding_window=512,
                    extra_vocab=256, max_position_embeddings=32_768)


def text_config(spec: TinySpec) -> dict:
    layer_types = ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(spec.num_layers)]
    return {
        "model_type": "gemma3n_text",
        "architectures": ["Gemma3nForCausalLM"],
        # The real model has 256 vision/audio soft-token ids above the text vocabulary; they only
        # come from the towers, which the tiny model has none of. Implementations disagree on the
        # per-layer input of such ids (mlx-lm: row 0, llama.cpp: zeros), so the tiny model has none.
        "vocab_size": spec.vocab + spec.extra_vocab,
        "vocab_size_per_layer_input": spec.per_layer_vocab or spec.vocab,
        "hidden_size": spec.hidden_size,
        "hidden_size_per_layer_input": 256,
        "intermediate_size": [spec.intermediate_size] * spec.num_layers,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "sliding_window": spec.sliding_window,
        "layer_types": layer_types,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        "rope_scaling": None,
        "final_logit_softcapping": 30.0,
        "altup_active_idx": 0,
        "altup_coef_clip": 120.0,
        "altup_correct_scale": True,
        "altup_num_inputs": 4,
        "num_kv_shared_layers": spec.num_kv_shared_layers,
        "laurel_rank": 64,
        "activation_sparsity_pattern": [0.95] * 10 + [0.0] * (spec.num_layers - 10),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "torch_dtype": "bfloat16",
    }


def multimodal_config(spec: TinySpec) -> dict:
    """The `gemma3n` layout mlx-lm and llama.cpp expect (the text-only layout is rejected)."""
    text = text_config(spec)
    if spec.towers:
        manifest = towers_manifest()
        vision = {**manifest["vision_config"], "vocab_offset": spec.vocab}
        audio = {**manifest["audio_config"], "vocab_offset": spec.vocab + 128}
    else:  # E2B's tower configs; the text-only tiny model has no tower weights
        vision = {"model_type": "gemma3n_vision", "architecture": "mobilenetv5_300m_enc", "hidden_size": 2048,
                  "vocab_size": 128, "vocab_offset": spec.vocab, "rms_norm_eps": 1e-6, "do_pooling": False}
        audio = {"model_type": "gemma3n_audio", "vocab_size": 128, "vocab_offset": spec.vocab + 128, "input_feat_size": 128,
                 "hidden_size": 1536, "conf_num_attention_heads": 8, "conf_num_hidden_layers": 12, "rms_norm_eps": 1e-6}
    return {
        "architectures": ["Gemma3nForConditionalGeneration"],
        "model_type": "gemma3n",
        "text_config": text,
        "vision_config": vision,
        "audio_config": audio,
        "audio_soft_tokens_per_image": 188,
        "vision_soft_tokens_per_image": 256,
        "boi_token_id": spec.vocab + 1,
        "eoi_token_id": spec.vocab + 2,
        "image_token_id": spec.vocab + 3,
        "boa_token_id": spec.vocab + 129,
        "eoa_token_id": spec.vocab + 130,
        "audio_token_id": spec.vocab + 131,
        "eos_token_id": [1, 6],  # <eos>, <end_of_turn>
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.53.0",
    }


TOWERS_MANIFEST = Path(__file__).with_name("tiny_towers.json")
# The image processor settings of google/gemma-3n-E2B-it (llama.cpp's converter reads the size).
PREPROCESSOR_CONFIG = {
    "processor_class": "Gemma3nProcessor", "image_processor_type": "SiglipImageProcessorFast",
    "size": {"height": 768, "width": 768}, "image_seq_length": 256, "do_resize": True, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": False, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "resample": 2, "do_convert_rgb": None,
}


def towers_manifest() -> dict:
    """Names and shapes of small but real Gemma 3n vision and audio towers (see tiny_towers.json)."""
    return json.loads(TOWERS_MANIFEST.read_text())


def tower_weights(spec: TinySpec) -> dict:
    """Random tower weights under transformers' names: norms at 1, biases at 0, the rest scaled by
    fan-in, so a forward pass stays finite. The projections into the text model take its width."""
    import numpy as np

    rng = np.random.default_rng(spec.seed + 7)
    weights = {}
    for name, shape in towers_manifest()["tensors"].items():
        if name.endswith("embedding_projection.weight"):
            shape = [spec.hidden_size, shape[1]]
        leaf = name.rsplit(".", 2)
        if name.endswith(".bias") or name.endswith("running_mean"):
            array = np.zeros(shape, np.float32)
        elif (len(shape) == 1 and ("norm" in name or "bn" in leaf[-2] or name.endswith(("running_var", ".gamma",
                                                                                           "per_dim_scale")))):
            array = np.ones(shape, np.float32) * (0.1 if name.endswith(".gamma") else 1.0)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            array = rng.standard_normal(shape, dtype=np.float32) * fan_in ** -0.5
        weights[name] = array
    return weights


def parameter_count(spec: TinySpec) -> int:
    """Parameters of the text model with this spec, from MLX's lazily created (unevaluated) weights."""
    from mlx.utils import tree_flatten
    from mlx_lm.models.gemma3n import Model, ModelArgs

    model = Model(ModelArgs.from_dict(multimodal_config(spec)))
    return sum(value.size for _, value in tree_flatten(model.parameters()))


def corpus_sentences(scenarios_dir: Path | None) -> list[str]:
    """Training text for the tokenizer: the rendered scenarios, so the vocabulary fits D&D text."""
    from ..data.discover import scan
    from ..data.render import render_scenario
    from ..data.starter import STARTER_DIR

    lines: list[str] = []
    # The starter corpus too: a new game's folder may be empty, and the build adds the starter then.
    folders = dict.fromkeys(Path(f).resolve() for f in (scenarios_dir, STARTER_DIR) if f is not None and Path(f).is_dir())
    for folder in folders:
        for result in scan(folder).accepted:
            text = render_scenario(result.scenario).text
            for special in SPECIAL_TOKENS:
                text = text.replace(special, "\n")
            lines += [line for line in text.split("\n") if line.strip()]
    # A fixed fallback so the builder works without any scenarios.
    lines += [
        "The Dungeon Master describes the scene and asks for a roll. [roll: perception]",
        "perception: Wren rolls 1d20+4 = 11+4 = 15",
        "Roll for initiative! [roll: initiative] [attack: goblin, longsword] [damage: 1d8+3]",
    ] * 4
    return lines


def train_tokenizer(sentences: list[str], vocab: int, seed: int) -> bytes:
    """A Gemma-style SentencePiece model (BPE, byte fallback) with Gemma's special-token ids."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=list(SPECIAL_TOKENS[4:]),
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,  # a small corpus may give fewer pieces; the model keeps its rows
        num_threads=1,
        minloglevel=2,
    )
    data = model.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=data)
    for index, piece in enumerate(SPECIAL_TOKENS):
        if processor.piece_to_id(piece) != index:
            raise ModelError(f"tokenizer special token {piece} got id {processor.piece_to_id(piece)}, not {index}",
                             "report this: the SentencePiece version may order special pieces differently")
    return data


RESIDUAL_BRANCH_NORMS = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight",
                         "post_per_layer_input_norm.weight", "post_laurel_norm.weight")
RESIDUAL_BRANCH_SCALE = 0.6


def random_weights(config: dict, seed: int) -> dict:
    """Deterministic random weights under the standard Gemma 3n names, as bf16 MLX arrays."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.gemma3n import Model, ModelArgs

    model = Model(ModelArgs.from_dict(config))
    weights = {}
    key = mx.random.key(seed)
    for index, (name, value) in enumerate(sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0])):
        k = mx.random.fold_in(key, index) if hasattr(mx.random, "fold_in") else mx.random.key(seed * 100_003 + index)
        # Evaluated one tensor at a time, and huge tensors drawn directly in bf16, so an E2B-shaped
        # model (4.5B parameters) never holds a float32 copy of its 2B-parameter per-layer table.
        draw_dtype = mx.bfloat16 if value.size > 100_000_000 else mx.float32
        normal = mx.random.normal(value.shape, dtype=draw_dtype, key=k)
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            # Gemma 3n attends with scale 1.0 and leaves the 1/sqrt(head_dim) to these learned
            # norms; a random model needs the same, or its softmax saturates.
            array = value.shape[-1] ** -0.25 * (1.0 + 0.1 * normal)
        elif name.endswith(RESIDUAL_BRANCH_NORMS):
            # Each block adds four branches to the residual stream through these norms. At scale 1 a
            # random 22-layer model is chaotic: llama.cpp's small numeric differences (sample std in
            # the sparsity cut-off, f16 GELU table and KV cache) grew to logit differences of 1.2, and
            # its f16 GGUF's greedy continuations left MLX's. At 0.6 with a 512-wide MLP: 0.04, and 8
            # of 8 equal (8 scenario prompts). Much smaller, the model mostly repeats its input token
            # (37% of positions at 0.3), which would test little.
            array = RESIDUAL_BRANCH_SCALE * (1.0 + 0.1 * normal)
        elif name.endswith("norm.weight") or name.endswith("correct_output_scale"):
            array = 1.0 + 0.1 * normal
        elif "embed_tokens" in name:
            # About the per-element scale of real Gemma embeddings once multiplied by sqrt(hidden).
            array = 0.15 * normal
        elif name.endswith("_coefs.weight"):
            array = 0.1 * normal
        else:
            array = normal * (value.shape[-1] ** -0.5)
        weights[name] = array.astype(mx.bfloat16)
        mx.eval(weights[name])
    mx.eval(weights)
    return weights


def _cache_key(spec: TinySpec, sentences: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([BUILDER_VERSION, spec.__dict__]).encode())
    for line in sentences:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def build_tiny_model(out_dir: Path, scenarios_dir: Path | None = None, spec: TinySpec = TinySpec(),
                     force: bool = False) -> Path:
    """Write the checkpoint to ``out_dir`` (atomically) and return it; reused when up to date."""
    import mlx.core as mx

    out_dir = Path(out_dir)
    sentences = corpus_sentences(scenarios_dir)
    key = _cache_key(spec, sentences)
    stamp = out_dir / "mlx-dm-tiny.json"
    if not force and stamp.exists():
        try:
            if json.loads(stamp.read_text())["key"] == key:
                return out_dir
        except (ValueError, KeyError):
            pass
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        config = multimodal_config(spec)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 2, "eos_token_id": [1, 6], "pad_token_id": 0, "do_sample": False}, indent=2) + "\n")
        (tmp / "tokenizer.model").write_bytes(train_tokenizer(sentences, spec.vocab, spec.seed))
        write_tokenizer_config(tmp)
        weights = random_weights(config, spec.seed)
        if spec.towers:
            weights.update({name: mx.array(value).astype(mx.bfloat16) for name, value in tower_weights(spec).items()})
            (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "pt"})
        (tmp / "mlx-dm-tiny.json").write_text(json.dumps({"key": key, "spec": spec.__dict__,
                                                          "builder_version": BUILDER_VERSION}, indent=2) + "\n")

    write_dir_atomically(out_dir, write)
    return out_dir


def write_tokenizer_config(folder: Path) -> None:
    """`tokenizer_config.json` and `special_tokens_map.json` as Gemma 3n ships them (text part)."""
    added = {
        str(i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for i, tok in enumerate(SPECIAL_TOKENS)
    }
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "chat_template": GEMMA_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "padding_side": "left",
        "spaces_between_special_tokens": False,
        "sp_model_kwargs": {},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
    }, indent=2) + "\n")
    (folder / "chat_template.jinja").write_text(GEMMA_CHAT_TEMPLATE)
