"""How close is a GGUF to the MLX model it came from? Teacher-forced logits and greedy continuations,
compared position by position (export parity) or prompt by prompt (a Gemma 3 GGUF imported back)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..llama.runtime import open_gguf
from .diagnostics import llama_cpp_sparsity_std


@dataclass
class Parity:
    gguf: str
    sequences: int
    positions: int
    argmax_agreement: float  # teacher-forced, over reply positions
    max_logit_diff: float
    mean_logit_diff: float
    greedy_equal: int  # free-running greedy continuations identical to MLX's
    greedy_total: int
    llama_cpp_std_max_logit_diff: float | None = None  # MLX with llama.cpp's sample-std sparsity
    # Where a greedy continuation left MLX's: sequence, token index, and MLX's top-1 minus top-2
    # logit there (a margin under max_logit_diff is a near tie that any rounding may flip).
    greedy_divergences: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def gguf_logits_and_greedy(llm, ids: list[int], greedy_from: int, greedy_tokens: int) -> tuple[np.ndarray, list[int]]:
    """Teacher-forced logits of `ids` through a loaded llama.cpp model, then its free-running greedy
    continuation of `ids[:greedy_from]`."""
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.reset()
    greedy: list[int] = []
    for token in llm.generate(ids[:greedy_from], temp=0.0, top_k=1):
        greedy.append(int(token))
        if len(greedy) == greedy_tokens:
            break
    return logits, greedy


@dataclass
class MlxReference:
    """What the MLX model says for each sequence, computed once and compared with every GGUF."""

    sequences: list[tuple[list[int], int]]  # (token ids, index where the reply starts)
    logits: list[np.ndarray]
    sample_std_logits: list[np.ndarray]  # with llama.cpp's sparsity convention
    greedy: list[list[int]]
    greedy_margins: list[list[float]]  # top-1 minus top-2 logit at each greedy step

    @property
    def greedy_tokens(self) -> int:
        return len(self.greedy[0]) if self.greedy else 0


def mlx_reference(model, sequences: list[tuple[list[int], int]], greedy_tokens: int = 12) -> MlxReference:
    """Teacher-forced logits and free-running greedy continuations of the MLX model."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    logits, sample_std_logits, greedy, margins = [], [], [], []
    for ids, reply_start in sequences:
        logits.append(np.array(model(mx.array([ids]))[0], dtype=np.float32))
        with llama_cpp_sparsity_std():
            sample_std_logits.append(np.array(model(mx.array([ids]))[0], dtype=np.float32))
        cache = make_prompt_cache(model)
        step = model(mx.array([ids[:reply_start]]), cache=cache)
        tokens: list[int] = []
        gaps: list[float] = []
        for _ in range(greedy_tokens):
            row = np.array(step[0, -1], dtype=np.float32)
            second, first = np.partition(row, -2)[-2:]
            tokens.append(int(row.argmax()))
            gaps.append(float(first - second))
            step = model(mx.array([[tokens[-1]]]), cache=cache)
        greedy.append(tokens)
        margins.append(gaps)
    return MlxReference(sequences, logits, sample_std_logits, greedy, margins)


def parity(reference: MlxReference, gguf: Path) -> Parity:
    """Compare a GGUF with the MLX reference position by position (teacher-forced) and by greedy output."""
    sequences = reference.sequences
    greedy_tokens = reference.greedy_tokens
    n_ctx = max(len(ids) for ids, _ in sequences) + greedy_tokens + 8
    llm = open_gguf(gguf, n_ctx=n_ctx, logits_all=True)
    diffs, agree, positions, greedy_equal = [], 0, 0, 0
    sample_std_diffs, divergences = [], []
    for index, (ids, reply_start) in enumerate(sequences):
        ours, matched, mine = reference.logits[index], reference.sample_std_logits[index], reference.greedy[index]
        theirs, theirs_greedy = gguf_logits_and_greedy(llm, ids, reply_start, greedy_tokens)
        theirs = theirs[:, : ours.shape[-1]]
        window = slice(max(reply_start - 1, 0), len(ids) - 1)
        diff = np.abs(ours[window] - theirs[window])
        diffs.append(diff.max(axis=-1))
        agree += int((ours[window].argmax(-1) == theirs[window].argmax(-1)).sum())
        positions += diff.shape[0]
        sample_std_diffs.append(float(np.abs(matched[window] - theirs[window]).max()))
        greedy_equal += int(mine == theirs_greedy)
        if mine != theirs_greedy:
            at = next(i for i, (a, b) in enumerate(zip(mine, theirs_greedy + [-1] * len(mine))) if a != b)
            divergences.append({"sequence": index, "token": at, "mlx_margin": reference.greedy_margins[index][at]})
    llm.close()
    all_diffs = np.concatenate(diffs) if diffs else np.zeros(1)
    return Parity(str(gguf), len(sequences), positions, agree / max(positions, 1), float(all_diffs.max()),
                  float(all_diffs.mean()), greedy_equal, len(sequences), max(sample_std_diffs, default=None),
                  divergences)


VERIFY_PROMPTS = (
    "<bos>The dragon opened its eyes and",
    "<bos><start_of_turn>user\nI search the room for traps.<end_of_turn>\n<start_of_turn>model\n",
    "<bos>Roll for initiative! The goblins",
)


def verify_import(original_gguf: Path, checkpoint: Path, f16_gguf: Path, greedy_tokens: int = 16) -> dict:
    """Does MLX on the imported checkpoint compute what llama.cpp computes on the original GGUF?

    llama.cpp quantises activations for its quantised matrix products, so even the exact weights
    cannot match the Q4_K_M file bit for bit. The yardstick is llama.cpp itself: the same weights
    as an f16 GGUF (converted from the checkpoint) against the original. MLX should sit as close to
    the original as that, and very close to the f16 file.
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from ..model.load import load_model

    loaded = load_model(checkpoint)
    out: dict = {"prompts": []}
    original, exact = open_gguf(original_gguf, 512, logits_all=True), open_gguf(f16_gguf, 512, logits_all=True)

    for prompt in VERIFY_PROMPTS:
        ids = original.tokenize(prompt.encode(), add_bos=False, special=True)
        q_logits, q_greedy = gguf_logits_and_greedy(original, ids, len(ids), greedy_tokens)
        f_logits, f_greedy = gguf_logits_and_greedy(exact, ids, len(ids), greedy_tokens)
        m_logits = np.array(loaded.model(mx.array([ids]))[0].astype(mx.float32))
        m_greedy = [int(t) for t, _ in generate_step(mx.array(ids), loaded.model, max_tokens=greedy_tokens)]
        out["prompts"].append({
            "prompt": prompt,
            "mlx_vs_original_max": float(np.abs(m_logits - q_logits).max()),
            "f16_vs_original_max": float(np.abs(f_logits - q_logits).max()),
            "mlx_vs_f16_max": float(np.abs(m_logits - f_logits).max()),
            "argmax_agreement_original": float((m_logits.argmax(-1) == q_logits.argmax(-1)).mean()),
            "greedy_equal_f16": m_greedy == f_greedy,
            "greedy_equal_original": m_greedy == q_greedy,
            "f16_greedy_equal_original": f_greedy == q_greedy,
            "mlx_text": loaded.tokenizer.decode(m_greedy),
        })
    original.close()
    exact.close()
    return out
