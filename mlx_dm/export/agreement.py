"""How closely a quantised file follows the f16 file, teacher-forced on held-out DM replies.

Greedy tool-call F1 on a few dozen held-out cases is a coarse yardstick: on the real Gemma 3 270M
tuned on the starter corpus (held-out F1 0.18) Q8_0 scored 5 points under f16 and Q6_K level with
it, differences of two or three calls. Fed the same reference reply, the two files' next-token
distributions can be compared at every reply position instead: the share where both put the same
token first, and the mean KL divergence of the quantised file from f16 (what llama.cpp's
`llama-perplexity --kl-divergence` reports). Hundreds of positions, one forward pass each file,
no generation: the figures that show what the importance matrix keeps (docs/real-model/quantisation/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.render import END
from ..evaluate.cases import EvalCase
from ..llama.runtime import captured_llama_logs, open_gguf


@dataclass
class Agreement:
    same_top1: float  # share of reply positions where the file's first choice is f16's
    mean_kl: float  # KL(f16 || file) in nats, averaged over those positions
    positions: int


@dataclass
class Reference:
    """The f16 file's log-probabilities at each reply position (float16: E2B's vocabulary is 262k)."""
    sequences: list[tuple[list[int], int]]  # (token ids, first reply position)
    log_probs: list[np.ndarray]
    n_ctx: int


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _reply_log_probs(llm, ids: list[int], start: int) -> np.ndarray:
    """Log-probabilities that predict each reply token (the positions start-1 .. len-2)."""
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[max(start - 1, 0): len(ids) - 1], dtype=np.float32)
    return _log_softmax(logits)


def _sequences(f16: Path, cases: list[EvalCase], max_reply_tokens: int, max_cases: int,
               max_tokens: int) -> list[tuple[list[int], int]]:
    """(ids, reply start) of the first `max_cases` cases whose prompt and reply prefix fit `max_tokens`
    (llama-cpp-python keeps a row of logits per context position: 262k floats each for Gemma)."""
    from llama_cpp import Llama

    with captured_llama_logs():
        vocab = Llama(str(f16), vocab_only=True, verbose=False)
    sequences = []
    try:
        for case in cases:
            start = len(vocab.tokenize(case.prompt.encode(), add_bos=False, special=True))
            full = (case.prompt + case.reference + END).encode()
            ids = vocab.tokenize(full, add_bos=False, special=True)[: start + max_reply_tokens]
            if start < len(ids) <= max_tokens:
                sequences.append((ids, start))
            if len(sequences) == max_cases:
                break
    finally:
        vocab.close()
    return sequences


def f16_reference(f16: Path, cases: list[EvalCase], max_reply_tokens: int = 48, max_cases: int = 12,
                  max_tokens: int = 768) -> Reference:
    """The f16 file's log-probabilities over the first reply tokens of up to `max_cases` cases."""
    sequences = _sequences(f16, cases, max_reply_tokens, max_cases, max_tokens)
    n_ctx = max((len(ids) for ids, _ in sequences), default=0) + 8
    if not sequences:
        return Reference([], [], n_ctx)
    with captured_llama_logs():
        llm = open_gguf(f16, n_ctx, logits_all=True)
    try:
        log_probs = [_reply_log_probs(llm, ids, start).astype(np.float16) for ids, start in sequences]
    finally:
        llm.close()
    return Reference(sequences, log_probs, n_ctx)


def agreement(path: Path, reference: Reference) -> Agreement:
    """`path` against the f16 reference, position by position."""
    if not reference.sequences:
        return Agreement(1.0, 0.0, 0)
    with captured_llama_logs():
        llm = open_gguf(path, reference.n_ctx, logits_all=True)
    same, kl, positions = 0, 0.0, 0
    try:
        for (ids, start), expected in zip(reference.sequences, reference.log_probs):
            expected = expected.astype(np.float32)
            got = _reply_log_probs(llm, ids, start)[:, : expected.shape[-1]]
            same += int((got.argmax(-1) == expected.argmax(-1)).sum())
            kl += float((np.exp(expected) * (expected - got)).sum(-1).sum())
            positions += expected.shape[0]
    finally:
        llm.close()
    return Agreement(same / positions, kl / positions, positions)
