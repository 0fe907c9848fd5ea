"""Spot checks: talk to a model (a GGUF file or an MLX run) as the game would, dice included.

The conversation is rendered exactly as in training (data/render.py). When the DM's reply holds
tool calls the simulator can resolve, their results go back as a `Tool results:` user turn, as
TOOLCALL sections do in the scenarios, and the DM continues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

from .data.render import TOOL_RESULTS_PREFIX, render_messages
from .data.toolcalls import find_calls
from .dice import DICE_TOOLS, DiceError, DiceRoller
from .errors import ModelError
from .export.place import STOP_WORDS as STOP_TEXT  # the same stop words the app is told to use


class Backend(Protocol):
    def stream(self, prompt: str, max_tokens: int) -> Iterator[str]: ...


class GgufBackend:
    def __init__(self, path: Path, n_ctx: int = 2048, temperature: float = 0.0, seed: int = 0) -> None:
        from .export.check import open_gguf

        if not Path(path).is_file():
            raise ModelError(f"no GGUF file at {path}", "pass --model with a .gguf from assets/models (see manifest.json)")
        try:
            self.llm = open_gguf(path, n_ctx, seed=seed)
        except ValueError as exc:
            raise ModelError(f"llama.cpp could not load {path}: {exc}",
                             "check the file is a complete GGUF (re-export with `mlx-dm export`)") from exc
        self.temperature = temperature

    def stream(self, prompt: str, max_tokens: int) -> Iterator[str]:
        tokens = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        for chunk in self.llm.create_completion(tokens, max_tokens=max_tokens, temperature=self.temperature,
                                                top_k=1 if self.temperature == 0 else 40, stop=list(STOP_TEXT),
                                                stream=True):
            yield chunk["choices"][0]["text"]


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
            stop = next((s for s in STOP_TEXT if s in text), None)
            if stop:
                yield response.text.split(stop)[0]
                return
            yield response.text


@dataclass
class ChatSession:
    backend: Backend
    context: str  # the scenario's context block, folded into the first user turn
    roller: DiceRoller
    max_tokens: int = 200
    max_tool_rounds: int = 2
    messages: list[dict[str, str]] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)  # (USER|DM|TOOLCALL, text)

    def reset(self) -> None:
        self.messages, self.transcript = [], []

    def _add_user(self, content: str) -> None:
        if not self.messages:
            content = f"{self.context}\n\n{content}" if self.context else content
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages[-1]["content"] += "\n\n" + content
        else:
            self.messages.append({"role": "user", "content": content})

    def _reply(self, emit: Callable[[str], None]) -> str:
        prompt = render_messages(self.messages, add_generation_prompt=True).text
        text = ""
        try:
            for piece in self.backend.stream(prompt, self.max_tokens):
                text += piece
                emit(piece)
        except KeyboardInterrupt:
            emit(" [stopped]")
        reply = text.strip()
        self.messages.append({"role": "assistant", "content": reply})
        self.transcript.append(("DM", reply))
        return reply

    def turn(self, player_text: str, emit: Callable[[str], None] = print) -> list[str]:
        """One player action; returns the DM replies (more than one when dice results went back)."""
        self._add_user(player_text)
        self.transcript.append(("USER", player_text))
        replies = [self._reply(emit)]
        for _ in range(self.max_tool_rounds):
            results = resolve_calls(replies[-1], self.roller)
            if not results:
                break
            block = "\n".join(results)
            emit(f"\n[dice] {block}\n")
            self._add_user(TOOL_RESULTS_PREFIX + block)
            self.transcript.append(("TOOLCALL", block))
            replies.append(self._reply(emit))
        return replies

    def to_markdown(self, world: str, location: str, party: list[str]) -> str:
        """The conversation as a scenario file (docs/scenario-format.md)."""
        lines = ["# SYSTEM", "", "Role: Dungeon Master", f"World: {world or 'Unknown'}",
                 f"Location: {location or 'Unknown'}"]
        if party:
            lines += ["Party:", ""] + [f"- {member}" for member in party]
        lines.append("")
        for kind, text in self.transcript:
            if text:
                lines += [f"# {kind}", "", text, ""]
        return "\n".join(lines)


def resolve_calls(reply: str, roller: DiceRoller) -> list[str]:
    """Result lines for the dice calls in a DM reply; other calls are left to the game."""
    results = []
    for call in find_calls(reply, 1):
        if call.name in DICE_TOOLS:
            try:
                results.append(roller.resolve(call.name, call.arguments))
            except DiceError as exc:
                results.append(f"{call.name}: could not roll ({exc})")
    return results
