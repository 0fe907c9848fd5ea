"""A llama.cpp load-and-generate in a child process, for `mlx-dm doctor`.

The model is a small random Llama written here with gguf-py, its matrices in Q8_0 so the quantised
matrix products run (where a CPU that refuses an instruction of the build dies). A child process
keeps a crash of the library out of the caller: it comes back as the signal that ended the child.

    python -m mlx_dm.llama.smoke FILE.gguf      # what the child runs; prints one JSON line
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WIDTH, LAYERS, HEADS, FFN, CONTEXT = 256, 2, 4, 512, 128
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
TOKENS = ["<unk>", "<s>", "</s>", *BYTE_TOKENS, "\u2581"]


def write_smoke_gguf(path: Path, seed: int = 0, output: np.ndarray | None = None) -> Path:
    """A two-layer Llama with a byte-level SentencePiece vocabulary and random Q8_0 weights
    (`output`: the output head's rows instead, vocabulary x width, to steer what it writes)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens = TOKENS
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
             *[gguf.TokenType.BYTE] * 256, gguf.TokenType.NORMAL]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("mlx-dm smoke test")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def matrix(name: str, rows: int, cols: int, values: np.ndarray | None = None) -> None:
        if values is None:
            values = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
        writer.add_tensor(name, gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def norm(name: str) -> None:
        writer.add_tensor(name, np.ones(WIDTH, dtype=np.float32))

    matrix("token_embd.weight", len(tokens), WIDTH)
    for layer in range(LAYERS):
        norm(f"blk.{layer}.attn_norm.weight")
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            matrix(f"blk.{layer}.{part}.weight", WIDTH, WIDTH)
        norm(f"blk.{layer}.ffn_norm.weight")
        matrix(f"blk.{layer}.ffn_gate.weight", FFN, WIDTH)
        matrix(f"blk.{layer}.ffn_up.weight", FFN, WIDTH)
        matrix(f"blk.{layer}.ffn_down.weight", WIDTH, FFN)
    norm("output_norm.weight")
    matrix("output.weight", len(tokens), WIDTH, None if output is None else np.asarray(output, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


@dataclass
class SmokeResult:
    passed: bool
    detail: str  # tokens generated and the build's CPU features, or what went wrong
    signal_name: str | None = None


def run_smoke(gguf_file: Path, timeout: float = 120) -> SmokeResult:
    """Load `gguf_file` and generate a few tokens in a child process."""
    try:
        done = subprocess.run([sys.executable, "-m", "mlx_dm.llama.smoke", str(gguf_file)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return SmokeResult(False, f"no answer in {timeout:.0f} s")
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return SmokeResult(False, f"killed by {name} while loading and generating", name)
    if done.returncode != 0:
        return SmokeResult(False, (done.stderr.strip().splitlines() or ["failed"])[-1])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return SmokeResult(True, f"generated {report['tokens']} tokens; CPU features in use: {report['features']}")


def smoke_test() -> SmokeResult:
    """The whole check: a smoke model written to a temporary folder, loaded and run in a child."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mlx-dm-doctor-") as tmp:
        return run_smoke(write_smoke_gguf(Path(tmp) / "smoke.gguf"))


def _child(gguf_file: str) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(gguf_file, n_ctx=CONTEXT, verbose=False, seed=0)
    out = llm.create_completion("The dungeon", max_tokens=4, temperature=0.0)
    info = llama_cpp.llama_print_system_info().decode()
    features = " ".join(part.split("=")[0].strip() for part in info.replace("|", " | ").split("|")
                        if part.strip().endswith("= 1"))
    llm.close()
    print(json.dumps({"tokens": out["usage"]["completion_tokens"], "features": features}))


if __name__ == "__main__":
    _child(sys.argv[1])
