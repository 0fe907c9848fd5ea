"""llama.cpp as every stage uses it: open a GGUF, and hold its log lines while it works."""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path


def open_gguf(path: Path, n_ctx: int = 2048, logits_all: bool = False, seed: int = 0):
    """A llama_cpp.Llama on `path`, quiet, with llama.cpp's own choice of threads."""
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False, n_threads=None, seed=seed)


@contextlib.contextmanager
def captured_llama_logs(lines: list[str] | None = None):
    """Send llama.cpp's log lines to `lines` (or nowhere) while the block runs, then give them back
    to llama-cpp-python's own callback (which honours verbose=False)."""
    import llama_cpp
    from llama_cpp import _logger, mtmd_cpp

    def collect(level, text, user_data):
        if lines is not None:
            lines.append(text.decode("utf-8", "replace"))

    callback = llama_cpp.llama_log_callback(collect)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_log_set(callback, ctypes.c_void_p(0))  # the multimodal library logs on its own
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        mtmd_cpp.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


