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
    # Where a greedy continuation left MLX's: sequence, token index, and MLX's top-1 minus top-2
    # logit there (a margin under max_logit_diff is a near tie that any rounding may flip).
    greedy_divergences: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MmprojCheck:
    """The projector loaded by llama.cpp's multimodal library (mtmd) beside the text GGUF, and one
    test image encoded into the text model's embedding space."""

    path: str
    loads: bool
    image_tokens: int = 0
    embedding_width: int = 0
    finite: bool = False
    encode_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.loads and not self.problems


def test_image(size: int = 96) -> np.ndarray:
    """A deterministic RGB test card (gradients and a checkerboard), height x width x 3, uint8."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 255 // (size - 1), y * 255 // (size - 1), ((x // 12 + y // 12) % 2) * 255], -1).astype(np.uint8)


class MmprojError(Exception):
    """mtmd refused the projector or the image; the message says which step."""

    def __init__(self, message: str, loaded: bool = False):
        super().__init__(message)
        self.loaded = loaded


def encode_image(text_gguf: Path, mmproj: Path, image: np.ndarray) -> tuple[np.ndarray, float]:
    """The embeddings (image tokens x text width) llama.cpp's mtmd gives ``image`` (H x W x 3, uint8)
    with this projector beside this text model, as the app's CactusVLM loads them; and the seconds
    the encoding took."""
    import ctypes
    import time

    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd

    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(str(text_gguf).encode(), llama_cpp.llama_model_default_params())
    if not model:
        raise MmprojError(f"llama.cpp could not load the text model {Path(text_gguf).name}")
    context = chunks = bitmap = None
    try:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.warmup = False, False
        context = mtmd.mtmd_init_from_file(str(mmproj).encode(), model, params)
        if not context:
            raise MmprojError("mtmd could not load the projector beside the text model (see the llama.cpp log)")
        if not mtmd.mtmd_support_vision(context):
            raise MmprojError("the projector loads but reports no vision support", loaded=True)
        image = np.ascontiguousarray(image, dtype=np.uint8)
        bitmap = mtmd.mtmd_bitmap_init(image.shape[1], image.shape[0], (ctypes.c_uint8 * image.size).from_buffer(image))
        prompt = b"<start_of_turn>user\n" + mtmd.mtmd_default_marker() + b"What do you see?<end_of_turn>\n"
        text = mtmd.mtmd_input_text(prompt, len(prompt), True, True)
        chunks = mtmd.mtmd_input_chunks_init()
        if mtmd.mtmd_tokenize(context, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) != 0:
            raise MmprojError("mtmd could not tokenize a prompt with an image", loaded=True)
        width = llama_cpp.llama_model_n_embd(model)
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            start = time.perf_counter()
            if mtmd.mtmd_encode_chunk(context, chunk) != 0:
                raise MmprojError("mtmd failed to encode the test image", loaded=True)
            seconds = time.perf_counter() - start
            embeddings = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(context), shape=(tokens * width,))
            return embeddings.reshape(tokens, width).copy(), seconds
        raise MmprojError("mtmd made no image chunk of the prompt", loaded=True)
    finally:
        if chunks:
            mtmd.mtmd_input_chunks_free(chunks)
        if bitmap:
            mtmd.mtmd_bitmap_free(bitmap)
        if context:
            mtmd.mtmd_free(context)
        llama_cpp.llama_model_free(model)


def check_mmproj(text_gguf: Path, mmproj: Path, expected_tokens: int = 256) -> MmprojCheck:
    """Load ``mmproj`` with mtmd beside the text model and encode :func:`test_image`."""
    from .gguf import captured_llama_logs

    check = MmprojCheck(str(mmproj), False)
    log: list[str] = []
    try:
        with captured_llama_logs(log):
            embeddings, check.encode_seconds = encode_image(text_gguf, mmproj, test_image())
    except MmprojError as exc:
        check.loads = exc.loaded
        errors = [line.strip() for line in log if "error" in line.lower()][-3:]
        check.problems.append(str(exc) + (f" ({' / '.join(errors)})" if errors else ""))
        return check
    check.loads = True
    check.image_tokens, check.embedding_width = embeddings.shape
    check.finite = bool(np.isfinite(embeddings).all())
    if check.image_tokens != expected_tokens:
        check.problems.append(f"the image became {check.image_tokens} tokens, not Gemma 3n's {expected_tokens}")
    elif not check.finite:
        check.problems.append("the image embeddings are not finite")
    return check


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


@contextlib.contextmanager
def llama_cpp_gelu_table():
    """Diagnosis only: GELU as llama.cpp's CPU backend computes it, from a table indexed by the
    input rounded to f16, giving an f16 value (ggml-cpu/vec.h, GGML_GELU_FP16); exact outside
    [-10, 10]."""
    import mlx.core as mx
    import mlx.nn as nn

    original = nn.gelu_approx

    def table_gelu(inputs):
        rounded = original(inputs.astype(mx.float16).astype(inputs.dtype)).astype(mx.float16).astype(inputs.dtype)
        return mx.where(inputs <= -10, 0, mx.where(inputs >= 10, inputs, rounded))

    nn.gelu_approx = table_gelu
    try:
        yield
    finally:
        nn.gelu_approx = original


@contextlib.contextmanager
def llama_cpp_numerics():
    """Both of llama.cpp's deliberate numeric differences from the reference, for checking that a
    GGUF computes the trained graph: with them, an f32 GGUF must match MLX to float32 rounding."""
    with llama_cpp_sparsity_std(), llama_cpp_gelu_table():
        yield


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
        if mine != theirs_greedy:
            at = next(i for i, (a, b) in enumerate(zip(mine, theirs_greedy + [-1] * len(mine))) if a != b)
            divergences.append({"sequence": index, "token": at, "mlx_margin": reference.greedy_margins[index][at]})
    llm.close()
    all_diffs = np.concatenate(diffs) if diffs else np.zeros(1)
    return Parity(str(gguf), len(sequences), positions, agree / max(positions, 1), float(all_diffs.max()),
                  float(all_diffs.mean()), greedy_equal, len(sequences), max(sample_std_diffs, default=None),
                  divergences)
