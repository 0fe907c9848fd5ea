"""Does the GGUF load, carry the right metadata, and answer as the trained MLX model does?"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.render import GEMMA_CHAT_TEMPLATE


@dataclass
class GgufCheck:
    path: str
    loads: bool
    architecture: str
    chat_template_matches: bool
    has_end_of_turn: bool
    context_length: int
    sample: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.loads and not self.problems


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

    def to_dict(self) -> dict:
        return asdict(self)


def open_gguf(path: Path, n_ctx: int = 2048, logits_all: bool = False, seed: int = 0):
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False, n_threads=None, seed=seed)


def check_gguf(path: Path, prompt: str, n_ctx: int = 1024) -> GgufCheck:
    problems = []
    try:
        llm = open_gguf(path, n_ctx)
    except Exception as exc:  # noqa: BLE001 - llama.cpp reports load failures as ValueError/RuntimeError
        return GgufCheck(str(path), False, "", False, False, 0, "", [f"llama.cpp could not load it: {exc}"])
    meta = llm.metadata
    architecture = meta.get("general.architecture", "")
    template = meta.get("tokenizer.chat_template", "")
    template_ok = template == GEMMA_CHAT_TEMPLATE
    if not template_ok:
        problems.append("the embedded chat template is not Gemma's (the app would render turns differently)")
    eot = llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)
    has_eot = len(eot) == 1
    if not has_eot:
        problems.append("<end_of_turn> is not a single special token")
    context = int(meta.get(f"{architecture}.context_length", 0) or 0)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        if token == llm.token_eos() or (has_eot and token == eot[0]) or len(out) >= 24:
            break
        out.append(token)
    sample = llm.detokenize(out).decode("utf-8", errors="replace")
    llm.close()
    return GgufCheck(str(path), True, architecture, template_ok, has_eot, context, sample, problems)


@contextlib.contextmanager
def llama_cpp_sparsity_std():
    """Diagnosis only: compute Gemma 3n's activation sparsity with llama.cpp's sample standard
    deviation (n-1, src/models/gemma3n.cpp) instead of the reference's population one (n)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm.models.gemma3n as gemma3n

    original = gemma3n.gelu_topk

    def sample_std_topk(inputs, std_multiplier):
        mean = mx.mean(inputs, axis=-1, keepdims=True)
        std = mx.sqrt(mx.sum((inputs - mean) ** 2, axis=-1, keepdims=True) / (inputs.shape[-1] - 1))
        return nn.gelu_approx(mx.maximum(0, inputs - (mean + std * std_multiplier.astype(std.dtype))))

    gemma3n.gelu_topk = sample_std_topk
    try:
        yield
    finally:
        gemma3n.gelu_topk = original


@dataclass
class MlxReference:
    """What the MLX model says for each sequence, computed once and compared with every GGUF."""

    sequences: list[tuple[list[int], int]]  # (token ids, index where the reply starts)
    logits: list[np.ndarray]
    sample_std_logits: list[np.ndarray]  # with llama.cpp's sparsity convention
    greedy: list[list[int]]

    @property
    def greedy_tokens(self) -> int:
        return len(self.greedy[0]) if self.greedy else 0


def mlx_reference(model, sequences: list[tuple[list[int], int]], greedy_tokens: int = 12) -> MlxReference:
    """Teacher-forced logits and free-running greedy continuations of the MLX model."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    logits, sample_std_logits, greedy = [], [], []
    for ids, reply_start in sequences:
        logits.append(np.array(model(mx.array([ids]))[0], dtype=np.float32))
        with llama_cpp_sparsity_std():
            sample_std_logits.append(np.array(model(mx.array([ids]))[0], dtype=np.float32))
        cache = make_prompt_cache(model)
        step = model(mx.array([ids[:reply_start]]), cache=cache)
        tokens: list[int] = []
        for _ in range(greedy_tokens):
            tokens.append(int(step[0, -1].argmax()))
            step = model(mx.array([[tokens[-1]]]), cache=cache)
        greedy.append(tokens)
    return MlxReference(sequences, logits, sample_std_logits, greedy)


def parity(reference: MlxReference, gguf: Path) -> Parity:
    """Compare a GGUF with the MLX reference position by position (teacher-forced) and by greedy output."""
    sequences = reference.sequences
    greedy_tokens = reference.greedy_tokens
    n_ctx = max(len(ids) for ids, _ in sequences) + greedy_tokens + 8
    llm = open_gguf(gguf, n_ctx=n_ctx, logits_all=True)
    diffs, agree, positions, greedy_equal = [], 0, 0, 0
    sample_std_diffs = []
    for (ids, reply_start), ours, matched, mine in zip(sequences, reference.logits, reference.sample_std_logits,
                                                       reference.greedy):
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)[:, : ours.shape[-1]]
        window = slice(max(reply_start - 1, 0), len(ids) - 1)
        diff = np.abs(ours[window] - theirs[window])
        diffs.append(diff.max(axis=-1))
        agree += int((ours[window].argmax(-1) == theirs[window].argmax(-1)).sum())
        positions += diff.shape[0]
        sample_std_diffs.append(float(np.abs(matched[window] - theirs[window]).max()))
        llm.reset()
        theirs_greedy = []
        for token in llm.generate(ids[:reply_start], temp=0.0, top_k=1):
            theirs_greedy.append(int(token))
            if len(theirs_greedy) == greedy_tokens:
                break
        greedy_equal += int(mine == theirs_greedy)
    llm.close()
    all_diffs = np.concatenate(diffs) if diffs else np.zeros(1)
    return Parity(str(gguf), len(sequences), positions, agree / max(positions, 1), float(all_diffs.max()),
                  float(all_diffs.mean()), greedy_equal, len(sequences), max(sample_std_diffs, default=None))
