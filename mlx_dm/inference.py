"""The two ways mlx-dm makes a model talk: a GGUF through llama.cpp (as the app will) and an MLX
checkpoint with its adapter (as trained). Chat, validation and benchmarks stream text from either."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

from .data.render import STOP_WORDS  # the same stop words the app is told to use
from .errors import ModelError
from .llama.runtime import captured_llama_logs, GrammarGate, open_gguf


class Backend(Protocol):
    def stream(self, prompt: str, max_tokens: int) -> Iterator[str]: ...


class GgufBackend:
    def __init__(self, path: Path, n_ctx: int = 2048, temperature: float = 0.0, seed: int = 0, top_p: float = 0.95,
                 grammar: Path | None = None) -> None:
        if not Path(path).is_file():
            raise ModelError(f"no GGUF file at {path}", "pass --model with a .gguf from assets/models (see manifest.json)")
        try:
            with captured_llama_logs():  # llama.cpp prints its cache layout on load, past verbose=False
                self.llm = open_gguf(path, n_ctx, seed=seed)
        except ValueError as exc:
            raise ModelError(f"llama.cpp could not load {path}: {exc}",
                             "check the file is a complete GGUF (re-export with `mlx-dm export`)") from exc
        self.temperature, self.top_p = temperature, top_p
        # The app's tool grammar (data/grammar.py), as the phone decodes: a '[' opens only a well-formed call.
        self.grammar = GrammarGate(self.llm, Path(grammar).read_text(encoding="utf-8"), str(grammar)) if grammar else None
        self.last_tokens = 0  # tokens the last stream generated (playtest latency and tokens/s)

    def count_tokens(self, prompt: str) -> int:
        return len(self.llm.tokenize(prompt.encode(), add_bos=False, special=True))

    def reseed(self, seed: int) -> None:
        """Sampling from here on repeats for the same seed and prompts (a playtest game)."""
        self.llm.set_seed(seed)

    def stream(self, prompt: str, max_tokens: int) -> Iterator[str]:
        """At most `max_tokens` tokens, cut at Gemma's stop words, as text as soon as it is whole.

        Patches an upstream bug here, not through llama-cpp-python's create_completion: while the
        text so far ends in an incomplete UTF-8 sequence (stray byte tokens, as an undertrained
        model writes), its 0.3.36 loop skips the max_tokens check and generates until the context
        is full, then fails with "llama_decode returned 1" (tests/test_chat.py shows both)."""
        import codecs

        import llama_cpp

        llm = self.llm
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent, count = "", 0, 0
        self.last_tokens = 0
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        processors = None
        if self.grammar is not None:
            self.grammar.start(len(tokens), greedy=self.temperature == 0)
            processors = llama_cpp.LogitsProcessorList([self.grammar])
        for token in llm.generate(tokens, temp=self.temperature, top_k=1 if self.temperature == 0 else 40,
                                  top_p=self.top_p, min_p=0.05, logits_processor=processors):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            text += decoder.decode(llm.detokenize([token]))
            count += 1
            self.last_tokens = count
            end, done = _text_before_stop(text)
            if end > sent:
                yield text[sent:end]
                sent = end
            if done or count >= max_tokens:
                return
        text += decoder.decode(b"", final=True)
        end, _ = _text_before_stop(text, final=True)
        if end > sent:
            yield text[sent:end]


def _text_before_stop(text: str, final: bool = False) -> tuple[int, bool]:
    """How much of `text` can be shown: up to a stop word (True: stop there), or up to a tail that
    might still become one."""
    found = [text.index(stop) for stop in STOP_WORDS if stop in text]
    if found:
        return min(found), True
    if final:
        return len(text), False
    held = max((n for stop in STOP_WORDS for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
    return len(text) - held, False


def mlx_batch() -> int:
    """Cases MLX decodes together when scoring: 16 on a GPU, where a batched step costs about what
    one sequence's does; 1 on a CPU, where prompt processing dominates (measured on the tiny model:
    8 prompts batched 27 s, one by one 2 s each)."""
    import mlx.core as mx

    return 1 if mx.default_device() == mx.cpu else 16


class MlxBackend:
    def __init__(self, base: Path, adapter: Path | None = None, temperature: float = 0.0) -> None:
        from .model.load import load_model

        self.loaded = load_model(base, adapter_path=adapter)
        self.temperature = temperature

    def stream(self, prompt: str, max_tokens: int) -> Iterator[str]:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        ids = self.loaded.tokenizer.encode(prompt, add_special_tokens=False)
        text = ""
        for response in stream_generate(self.loaded.model, self.loaded.tokenizer, ids, max_tokens=max_tokens,
                                        sampler=make_sampler(temp=self.temperature)):
            text += response.text
            stop = next((s for s in STOP_WORDS if s in text), None)
            if stop:
                yield response.text.split(stop)[0]
                return
            yield response.text

    def generate_batch(self, prompts: list[str], max_tokens: list[int]) -> list[str]:
        """Greedy replies to several prompts decoded together (mlx-lm's batch_generate), each cut at
        the first stop word. On a GPU one batched step costs about what one sequence's does, so
        scoring many cases (validation, the adapter selection) takes a fraction of the time; on a
        CPU prompt processing dominates and batching gains little (evaluate_backend's batch=1)."""
        from mlx_lm.generate import batch_generate

        tokenizer = self.loaded.tokenizer
        ids = [tokenizer.encode(prompt, add_special_tokens=False) for prompt in prompts]
        texts = batch_generate(self.loaded.model, tokenizer, ids, max_tokens=max_tokens).texts
        return [min((text.split(stop)[0] for stop in STOP_WORDS), key=len) for text in texts]
