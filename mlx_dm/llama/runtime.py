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





class GrammarGate:
    """A GBNF grammar applied the way the app's runtime applies it, as a llama-cpp-python logits
    processor: the likeliest tokens are checked one by one against the grammar and the first that
    fits is kept (greedy), or every fitting one of the top `top_k` (sampling); only when none fits is
    the grammar run over the whole vocabulary.

    Why not llama-cpp-python's own `grammar=`: 0.3.36 runs the grammar over all 262,144 candidates
    of Gemma's vocabulary on every step (22 -> 7 tok/s on the real 270M here), where llama.cpp's
    common sampler, which llama.rn uses, checks the sampled token first. Greedy, the result is the
    same token. It also patches an upstream gap: a grammar that does not parse reaches llama.cpp only
    when sampling starts, as a null sampler added unchecked (a crash, or no grammar at all); here it
    is parsed at once and a bad one is an error that names its file (tests/test_grammar.py)."""

    def __init__(self, llm, text: str, source: str, top_k: int = 40) -> None:
        import llama_cpp

        from ..errors import ModelError

        lines: list[str] = []
        with captured_llama_logs(lines):
            self.sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, text.encode("utf-8"), b"root")
        if not self.sampler:
            reason = " ".join(line.strip() for line in lines if "pars" in line or "error" in line.lower())[:300]
            raise ModelError(f"llama.cpp could not parse the grammar {source}: {reason or 'no reason given'}",
                             "regenerate it (`mlx-dm export` writes it from data.agent_tools) or fix the rule named above")
        self.top_k, self.greedy = top_k, True
        self.prompt_length = self.accepted = 0
        self._free = llama_cpp.llama_sampler_free  # __del__ may run while Python shuts down

    def start(self, prompt_length: int, greedy: bool) -> None:
        """A new reply: the grammar starts again at its root after `prompt_length` prompt tokens."""
        import llama_cpp

        llama_cpp.llama_sampler_reset(self.sampler)
        self.prompt_length, self.accepted, self.greedy = prompt_length, 0, greedy

    def _apply(self, tokens, logits) -> "numpy.ndarray":
        """The grammar over these candidates: their logits, -inf where it refuses the token. The
        candidates are laid out as llama_token_data (id, logit, p) in one numpy buffer, so the whole
        vocabulary costs milliseconds, not a Python object per token."""
        import llama_cpp
        import numpy as np

        data = np.zeros(len(tokens), dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        data["id"], data["logit"] = tokens, logits
        array = llama_cpp.llama_token_data_array(data.ctypes.data_as(llama_cpp.llama_token_data_p), len(tokens), -1,
                                                 False)
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(array))
        return data["logit"].copy()

    def __call__(self, input_ids, scores):
        import llama_cpp
        import numpy as np

        generated = input_ids[self.prompt_length:]
        for token in generated[self.accepted:]:  # the tokens sampled since the last step
            llama_cpp.llama_sampler_accept(self.sampler, int(token))
        self.accepted = len(generated)
        best = int(np.argmax(scores))
        if self.greedy and np.isfinite(self._apply([best], [scores[best]])[0]):
            masked = np.full_like(scores, -np.inf)
            masked[best] = scores[best]
            return masked
        top = np.argpartition(-scores, self.top_k)[: self.top_k]
        kept = []
        for token in top[np.argsort(-scores[top])]:
            if np.isfinite(self._apply([token], [scores[token]])[0]):
                kept.append(token)
                if self.greedy:
                    break
        masked = np.full_like(scores, -np.inf)
        if kept:
            masked[kept] = scores[kept]
            return masked
        every = np.arange(len(scores))
        return self._apply(every, scores)  # nothing likely fits: the whole vocabulary, as llama.cpp would

    def __del__(self) -> None:
        if getattr(self, "sampler", None):
            self._free(self.sampler)
            self.sampler = None
