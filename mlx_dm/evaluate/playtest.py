"""Playtests: whole games against the exported GGUF, played the way the app plays them.

Validation scores one DM reply at a time against a reference. A game is different: dozens of turns
in a 2,048-token context, every call answered by the game, and the DM must never write a result
itself, speak or decide for a player, or go round in circles. A playtest plays scripts (the player's
turns of a game) through llama.cpp with the app's settings (context, temperature, top_p, n_predict),
the simulated dice answering the calls, and counts what an app would run into.

A script is a scenario file: its SYSTEM header sets the scene, leading DM text opens the game, the
player turns are played in order, and its TOOLCALL sections answer the model's calls after the turn
they follow (a user's own scenario files replay that way). Calls a script does not answer go to the
seeded dice. The app's way of trimming history is not documented (../shared/notes/cactus-app.md):
the playtest keeps the scene and the first player turn and drops the oldest exchanges after them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..chat import resolve_calls
from ..data.discover import scan
from ..data.profiles import AgentProfile
from ..data.render import TOOL_RESULTS_PREFIX, context_text, render_messages, turn_content
from ..data.scenario import DM, TOOLCALL, USER, Scenario
from ..data.toolcalls import find_calls, find_look_alikes
from ..dice import DiceRoller, modifiers_from_sheet
from ..errors import DataError
from .score import DECIDES_FOR_PLAYER, SPEAKER_LABEL, TEMPLATE_LEAKS

BUILTIN_DIR = Path(__file__).resolve().parent / "playtests"
# A result written by the DM itself: "rolls 1d20", "1d8+3 = 9", the app's "= *8*", or the results header.
INVENTED_RESULT = re.compile(r"\brolls?\s+\d*d\d+|\b\d*d\d+(?:\s*[+-]\s*\d+)*\s*=\s*\d+|=\s*\*\d+\*|Tool results:",
                             re.IGNORECASE)
SENTENCE = re.compile(r"[^.!?]+[.!?]")


@dataclass(frozen=True)
class Step:
    player: str  # the player's turn as the model sees it
    results: tuple[str, ...] = ()  # the script's TOOLCALL texts after this turn's DM reply


@dataclass(frozen=True)
class Script:
    name: str
    setting: Scenario  # world, place, party and sheet; its turns are not used
    opening: str  # the DM's opening narration, when the script starts with one
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class PlaySettings:
    turns: int = 12
    n_ctx: int = 2048
    max_tokens: int = 256
    seed: int = 0
    max_tool_rounds: int = 2  # DM replies after results, per player turn, as in chat
    tools: str = ""  # the system text's tool list, as training rendered it (data/profiles.tools_prompt)


@dataclass
class Reply:
    turn: int  # the player turn it answers (1-based)
    text: str
    seconds: float
    tokens: int
    calls: list[tuple[str, str]]  # what the app's pattern reads
    look_alikes: list[str]  # call-like text the pattern misses or mangles
    verdicts: dict[str, int]  # the profile's acts / drops / rejects over `calls`
    invented_result: bool
    for_player: bool  # decides or speaks for a player character
    repeated: bool  # the same as an earlier reply of the game, or one sentence three times over
    garbage: bool  # empty, template tokens, or broken text
    after_trim: bool  # history had been trimmed to fit the context


@dataclass
class Game:
    script: str
    seed: int
    replies: list[Reply] = field(default_factory=list)
    trims: int = 0
    error: str = ""  # the game stopped: a prompt that no trimming fits, or the runtime failed


def load_scripts(folder: Path | None = None) -> list[Script]:
    """The built-in scripts, or every usable scenario file of `folder`, in scan order."""
    root = Path(folder) if folder else BUILTIN_DIR
    result = scan(root)
    scripts = [script_of(r.scenario, ("scripts/" if folder else "built-in/") + r.path) for r in result.accepted]
    scripts = [s for s in scripts if s.steps]
    if not scripts:
        raise DataError(f"no playable script in {root}: a script needs at least one player turn",
                        "point playtest.scripts_dir (or --scripts) at scenario files with USER turns")
    return scripts


def script_of(scenario: Scenario, name: str) -> Script:
    opening: list[str] = []
    steps: list[Step] = []
    for turn in scenario.turns:
        if turn.kind == USER:
            steps.append(Step(turn_content(turn)))
        elif turn.kind == DM and not steps:
            opening.append(turn_content(turn))
        elif turn.kind == TOOLCALL and steps:
            steps[-1] = Step(steps[-1].player, steps[-1].results + (turn.text.strip(),))
    return Script(name, replace(scenario, turns=[]), "\n\n".join(opening), tuple(steps))


def fit_history(messages: list[dict[str, str]], count: Callable[[str], int], budget: int) -> tuple[list[dict], int]:
    """Drop the oldest exchanges after the first user turn until the prompt fits `budget` tokens."""
    trimmed = 0
    while len(messages) > 3 and count(render_messages(messages, add_generation_prompt=True).text) > budget:
        messages = [messages[0]] + messages[3:]  # an assistant and a user turn go: roles still alternate
        trimmed += 1
    return messages, trimmed


def party_names(setting: Scenario) -> set[str]:
    names = {member.name.split()[0] for member in setting.party if member.name}
    if setting.player_name:
        names.add(setting.player_name.split()[0])
    return names


def repeats(text: str, earlier: list[str]) -> bool:
    normal = " ".join(text.lower().split())
    if normal and normal in {" ".join(e.lower().split()) for e in earlier}:
        return True
    sentences = [" ".join(s.lower().split()) for s in SENTENCE.findall(text)]
    return any(sentences.count(s) >= 3 for s in set(sentences) if len(s.split()) >= 3)


SPEECH_VERBS = r"(?:says|said|asks|asked|replies|replied|answers|answered|shouts|shouted|whispers|whispered|tells|told)"


def speaks_for(text: str, players: set[str]) -> bool:
    """A party member given words the player never wrote: `Rhosyn says`, `"...," asks Rhosyn`, `Rhosyn: ...`."""
    for name in players:
        quoted = re.escape(name)
        if re.search(rf"\b{quoted}\b[^.!?\"]{{0,40}}\b{SPEECH_VERBS}\b|\b{SPEECH_VERBS}\s+{quoted}\b", text):
            return True
    labels = {label.strip().split()[0] for label in SPEAKER_LABEL.findall(text) if label.strip()}
    return bool(labels & players)


def judge(text: str, turn: int, seconds: float, tokens: int, earlier: list[str], players: set[str],
          profile: AgentProfile, after_trim: bool) -> Reply:
    calls = [(c.name, c.arguments) for c in find_calls(text, 1)]
    verdicts = {"acts": 0, "drops": 0, "rejects": 0}
    for name, arguments in calls:
        verdicts[profile.verdict(name, arguments)] += 1
    return Reply(
        turn, text, seconds, tokens, calls, [a.text for a in find_look_alikes(text, 1)], verdicts,
        invented_result=bool(INVENTED_RESULT.search(text)),
        for_player=bool(DECIDES_FOR_PLAYER.search(text)) or speaks_for(text, players),
        repeated=repeats(text, earlier),
        garbage=not text.strip() or any(leak in text for leak in TEMPLATE_LEAKS) or "\ufffd" in text,
        after_trim=after_trim,
    )


class _Table:
    """One game's conversation: the messages the model sees and what it said."""

    def __init__(self, backend, script: Script, settings: PlaySettings, profile: AgentProfile, seed: int) -> None:
        self.backend, self.settings, self.profile, self.seed = backend, settings, profile, seed
        self.game = Game(script.name, seed)
        self.players = party_names(script.setting)
        context = context_text(script.setting, settings.tools)
        self.messages = [{"role": "user", "content": context}]
        if script.opening:
            self.messages.append({"role": "assistant", "content": script.opening})

    def add_user(self, content: str) -> None:
        if self.messages[-1]["role"] == "user":
            self.messages[-1]["content"] += "\n\n" + content
        else:
            self.messages.append({"role": "user", "content": content})

    def reply(self, turn: int) -> Reply:
        budget = self.settings.n_ctx - self.settings.max_tokens
        self.messages, trimmed = fit_history(self.messages, self.backend.count_tokens, budget)
        self.game.trims += trimmed
        prompt = render_messages(self.messages, add_generation_prompt=True).text
        needed = self.backend.count_tokens(prompt)
        if needed > budget:
            raise RuntimeError(f"the prompt needs {needed} tokens even trimmed; the context leaves {budget}")
        self.backend.reseed(self.seed * 10_000 + len(self.game.replies))
        start = time.perf_counter()
        text = "".join(self.backend.stream(prompt, self.settings.max_tokens)).strip()
        seconds = time.perf_counter() - start
        earlier = [r.text for r in self.game.replies]
        judged = judge(text, turn, seconds, self.backend.last_tokens, earlier, self.players, self.profile,
                       self.game.trims > 0)
        self.messages.append({"role": "assistant", "content": text})
        self.game.replies.append(judged)
        return judged


def play_game(backend, script: Script, settings: PlaySettings, profile: AgentProfile, seed: int) -> Game:
    """One game: each player turn, the DM's reply, and the results of its calls until it narrates."""
    table = _Table(backend, script, settings, profile, seed)
    roller = DiceRoller(seed=seed, modifiers=modifiers_from_sheet(script.setting.player),
                        actor=script.setting.player_name)
    try:
        for number, step in enumerate(script.steps[: settings.turns], start=1):
            table.add_user(step.player)
            reply = table.reply(number)
            given = list(step.results)
            for _ in range(settings.max_tool_rounds):
                if not reply.calls:
                    break
                results = [given.pop(0)] if given else resolve_calls(reply.text, roller)
                if not results:
                    break  # calls the dice cannot answer change game state; the game records them
                table.add_user(TOOL_RESULTS_PREFIX + "\n".join(results))
                reply = table.reply(number)
    except Exception as exc:  # a crash is a finding of the playtest, reported with the game
        table.game.error = f"{type(exc).__name__}: {exc}"
    return table.game
