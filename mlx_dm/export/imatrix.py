"""An importance matrix from the user's own scenarios, for every quantisation of one export.

llama-imatrix runs the trained (fused, f16) model over calibration text and records, for each
weight matrix, the mean square of the activations entering each of its columns; llama-quantize
then spends its rounding error where those activations are small. Calibrating on the rendered
training conversations, chat template included, weighs the columns a DM reply actually uses: on
the real Gemma 3 270M that is what keeps Q4_K_M's tool calls (docs/real-model/quantisation/).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.render import BOS, render_messages
from ..errors import ExportError
from ..files import atomic_path, atomic_write_text
from ..llama.tools import run_tool

MIN_CHUNK = 128  # tokens; llama-imatrix needs two chunks of text at least
CHARS_PER_TOKEN = 3  # a low estimate for English under Gemma's tokenizer: errs towards more text


def calibration_text(dataset_dir: Path) -> str:
    """The training split's conversations as the model saw them in training, one after another.

    The <bos> each rendering starts with is left out: llama-imatrix puts one at the start of every
    chunk itself, and one in the middle of a chunk is a token the app never sends there."""
    path = Path(dataset_dir) / "train.jsonl"
    if not path.exists() or not path.read_text(encoding="utf-8").strip():
        raise ExportError(f"no training conversations at {path} to calibrate the quantisation on",
                          "build the dataset first (`mlx-dm data build`), or export with --no-imatrix")
    texts = [render_messages(json.loads(line)["messages"]).text.removeprefix(BOS)
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return "\n".join(texts)


def compute_imatrix(gguf: Path, text: str, out_file: Path, chunks: int = 64, n_ctx: int = 512) -> Path:
    """Run llama-imatrix on `gguf` over `text` (at most `chunks` chunks of `n_ctx` tokens); writes
    `out_file` (llama.cpp's GGUF imatrix format) atomically. Short text is repeated to two chunks."""
    out_file = Path(out_file)
    n_ctx = max(MIN_CHUNK, n_ctx)
    needed = 2 * n_ctx * CHARS_PER_TOKEN
    repeated = text * (1 + needed // max(len(text), 1)) if len(text) < needed else text
    calibration = out_file.with_name("calibration.txt")
    atomic_write_text(calibration, repeated)
    with atomic_path(out_file) as tmp:
        code, tail = run_tool("llama-imatrix", [
            "-m", str(gguf), "-f", str(calibration), "-o", str(tmp), "--output-format", "gguf",
            "-c", str(n_ctx), "--chunks", str(chunks), "--parse-special", "--no-ppl"],
            out_file.with_suffix(".log"))
        if code != 0 or not tmp.exists() or not tmp.stat().st_size:
            raise ExportError(f"llama-imatrix failed on {gguf} (exit {code}):\n{tail}",
                              f"see {out_file.with_suffix('.log')}; export without the matrix: --no-imatrix")
    return out_file
