"""Spot checks: talk to a model (a GGUF file or an MLX run) as the game would, dice included.

The conversation is rendered exactly as in training (data/render.py). When the DM's reply holds
tool calls the simulator can resolve, their results go back as a `Tool results:` user turn, as
TOOLCALL sections do in the scenarios, and the DM continues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .data.render import TOOL_RESULTS_PREFIX, context_text, render_messages
from .data.parse import parse_member, parse_text
from .data.scenario import Scenario
from .data.toolcalls import find_calls
from .dice import DICE_TOOLS, DiceError, DiceRoller, modifiers_from_sheet
from .errors import DataError
from .inference import Backend


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


COMMANDS_HELP = "/roll 1d20+3 · /tools · /save file.md · /reset · /quit"


def chat_setting(scenario: Path | None, world: str, location: str, party: list[str]) -> Scenario:
    """The scene to play: a scenario file's world, place, party and sheet (its turns left out), or the flags'."""
    if scenario is None:
        return Scenario(path="chat", role="Dungeon Master", world=world, location=location,
                        party=[member for member in (parse_member(p, 0) for p in party) if member])
    parsed = parse_text(Path(scenario).read_text(encoding="utf-8"), Path(scenario).name)
    if parsed.scenario is None:
        raise DataError(f"{scenario} is not a usable scenario: {parsed.problems[0] if parsed.problems else parsed.skipped_reason}",
                        "fix it (see `mlx-dm data validate`) or use --world/--location/--party")
    parsed.scenario.turns = []
    return parsed.scenario


def new_session(backend: Backend, setting: Scenario, seed: int, max_tokens: int, tools: str = "") -> ChatSession:
    roller = DiceRoller(seed=seed, modifiers=modifiers_from_sheet(setting.player), actor=setting.player_name)
    return ChatSession(backend, context_text(setting, tools), roller, max_tokens=max_tokens)


def play(session: ChatSession, text: str, emit: Callable[[str], None]) -> None:
    emit("DM: ")
    session.turn(text, emit)
    emit("\n")


def handle(line: str, session: ChatSession, setting: Scenario, agent_tools: list[str], emit: Callable[[str], None]) -> bool:
    """One line of the chat: a /command or a player's action. False when the player quits."""
    if line in ("/quit", "/exit"):
        return False
    if line == "/reset":
        session.reset()
        emit("(conversation reset)\n")
    elif line.startswith("/roll"):
        try:
            result = session.roller.roll(line[5:].strip() or "1d20")
            emit(f"{result.expression} = {result.detail} = {result.total}\n")
        except DiceError as exc:
            emit(f"{exc}\n")
    elif line == "/tools":
        emit(f"dice: {', '.join(DICE_TOOLS)}; the app's agent acts on: {', '.join(agent_tools)}\n")
    elif line.startswith("/save"):
        target = Path(line[5:].strip() or "chat-scenario.md")
        if target.exists():
            emit(f"{target} exists; choose another name (nothing you wrote is overwritten)\n")
            return True
        party = [f"{m.name} ({m.description})" if m.description else m.name for m in setting.party]
        target.write_text(session.to_markdown(setting.world, setting.location, party), encoding="utf-8")
        emit(f"saved {target}\n")
    elif line.startswith("/"):
        emit(f"unknown command {line}; {COMMANDS_HELP}\n")
    else:
        play(session, line, emit)
    return True
