"""Does an exported GGUF load in llama.cpp with the metadata the app relies on, and does its vision
projector (mmproj) encode an image beside it?"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.render import GEMMA_CHAT_TEMPLATE
from ..llama.runtime import captured_llama_logs, open_gguf


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
