"""The app's tool syntax as a GBNF grammar: narration stays free, but a `[` opens only a well-formed
call of the agent's tools, so the phone never decodes a call its parser drops or rejects.

One table, ARGUMENT_FORMS, gives each argument form twice: as GBNF for llama.cpp (the app's
runtime, validation, the playtest, chat) and as a Python pattern, with which `data build` finds the
reference replies the grammar would refuse before any training (a reply the grammar refuses is a
call the constrained model could never write: a data or profile problem). TOOL_FORMS says which
form each tool's argument takes; a tool it does not name takes free text. Rules of GBNF kept here:
rule names use letters, digits and `-` only; `[` never appears in free text (once a `[` is written
a call is forced, so the data must keep `[` for calls); the root may end after any text, so the
grammar never forces a call or blocks the end of a turn, and it also parses from a first `[`
(llama.rn with jinja may apply it from the trigger on).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from ..dice import ABILITIES, SKILL_ABILITY
from .scenario import DM, Problem, ToolCall
from .toolcalls import find_calls

# The check's words: the 18 skills as the data writes them (spaces or underscores), abilities, initiative.
_SKILLS = sorted({s for skill in SKILL_ABILITY for s in (skill, skill.replace(" ", "_"))}, key=lambda s: (-len(s), s))
_CHECK_WORDS = [*_SKILLS, *sorted(ABILITIES, key=lambda s: (-len(s), s)), "initiative", "thieves tools", "thieves_tools"]


@dataclass(frozen=True)
class ArgumentForm:
    gbnf: str  # the rule's body
    pattern: str  # the same language as a Python regular expression


_DICE_TERM = r"(?:\d{0,2}d\d{1,3}|\d{1,3})"
ARGUMENT_FORMS: dict[str, ArgumentForm] = {
    "free": ArgumentForm(r"[^\[\]\n]{1,160}", r"[^\[\]\n]{1,160}"),
    "name": ArgumentForm(r"[^\[\]\n,]{1,40}", r"[^\[\]\n,]{1,40}"),
    "dice": ArgumentForm(r"dice-term ([+-] dice-term)*", rf"{_DICE_TERM}(?:[+-]{_DICE_TERM})*"),
    "dice-term": ArgumentForm(r'[0-9]{0,2} "d" [0-9]{1,3} | [0-9]{1,3}', _DICE_TERM),
    "check": ArgumentForm(" | ".join(f'"{w}"' for w in _CHECK_WORDS) + " | dice",
                          "(?:" + "|".join(re.escape(w) for w in _CHECK_WORDS) + rf"|{_DICE_TERM}(?:[+-]{_DICE_TERM})*)"),
    "ability": ArgumentForm(" | ".join(f'"{a}"' for a in sorted(ABILITIES)), "(?:" + "|".join(sorted(ABILITIES)) + ")"),
    "save": ArgumentForm(r'ability (", " free)?', r"(?:" + "|".join(sorted(ABILITIES)) + r")(?:, [^\[\]\n]{1,160})?"),
    "amount": ArgumentForm(r'name ", " dice', rf"[^\[\]\n,]{{1,40}}, {_DICE_TERM}(?:[+-]{_DICE_TERM})*"),
    "dice-first": ArgumentForm(r'dice (", " free)?', rf"{_DICE_TERM}(?:[+-]{_DICE_TERM})*(?:, [^\[\]\n]{{1,160}})?"),
    "number": ArgumentForm(r'[0-9]{1,6} ("." [0-9]{1,2})?', r"\d{1,6}(?:\.\d{1,2})?"),
}
# Which form each tool's argument takes. Free text where the game's own files write prose
# (`[transition: The Bridge of Forgotten Stone]`, `[award_exp: +25 EXP to Emil Warick]`).
TOOL_FORMS: dict[str, str] = {
    "roll": "check", "skill_check": "check", "save": "save", "damage": "dice", "heal": "amount", "charge": "number",
}


def form_of(tool: str, dice_first: tuple[str, ...] = ()) -> str:
    """The tool's argument form; a profile's `dice_first` tools (the command parser's `roll`) start with dice."""
    return "dice-first" if tool.lower() in {t.lower() for t in dice_first} else TOOL_FORMS.get(tool.lower(), "free")


def gbnf(tools: list[str], dice_first: tuple[str, ...] = ()) -> str:
    """The grammar for an agent that acts on `tools` (their names as the app's parser reads them)."""
    if not tools:
        raise ValueError("a grammar needs at least one tool")
    calls = " |\n    ".join(f'"{_escape(tool)}" sep {form_of(tool, dice_first)}' for tool in tools)
    used = {form_of(tool, dice_first) for tool in tools}
    needed = _closure(used)
    lines = ["# mlx-dm: free narration; a '[' opens one call of the app's tools (data/grammar.py)",
             "root ::= text (call text)*", r"text ::= [^\[]*", f'call ::= "[" (\n    {calls}\n  ) "]"', 'sep ::= ":" " "?']
    lines += [f"{name} ::= {ARGUMENT_FORMS[name].gbnf}" for name in ARGUMENT_FORMS if name in needed]
    return "\n".join(lines) + "\n"


def _closure(forms: set[str]) -> set[str]:
    """The forms `forms` refer to, themselves included (a rule body names other forms)."""
    needed, todo = set(), list(forms)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        body = re.sub(r'"[^"]*"|\[[^\]]*\]', " ", ARGUMENT_FORMS[name].gbnf)
        todo += [word for word in re.findall(r"[a-z][a-z0-9-]*", body) if word in ARGUMENT_FORMS]
    return needed


def _escape(tool: str) -> str:
    return tool.replace("\\", "\\\\").replace('"', '\\"')


@functools.lru_cache(maxsize=16)
def _call_pattern(tools: tuple[str, ...], dice_first: tuple[str, ...]) -> re.Pattern:
    """Built once per agent: data build checks every DM turn of the user's files against it."""
    alternatives = "|".join(f"{re.escape(tool)}: ?{ARGUMENT_FORMS[form_of(tool, dice_first)].pattern}" for tool in tools)
    return re.compile(rf"\[(?:{alternatives})\]")


def call_pattern(tools: list[str], dice_first: tuple[str, ...] = ()) -> re.Pattern:
    """A whole call the grammar allows, as Python sees it: `[tool: argument]`."""
    return _call_pattern(tuple(tools), tuple(dice_first))


def _refused(text: str, tools: list[str], dice_first: tuple[str, ...] = ()) -> list[ToolCall]:
    allowed = call_pattern(tools, dice_first)
    return [call for call in find_calls(text, 1) if not allowed.fullmatch(call.raw)]


def refused_calls(text: str, tools: list[str], dice_first: tuple[str, ...] = ()) -> list[str]:
    """The calls in a reply that the grammar for `tools` could not produce, as written: a name it
    does not allow, or an argument outside the tool's form. Text with no call is always allowed."""
    return [call.raw for call in _refused(text, tools, dice_first)]


GRAMMAR_FILE = "tools.gbnf"


def app_grammar(config) -> str:
    """The grammar of the app's parser: the agent profile `playtest.profile` names (built-in or
    data.agent_profiles; by default the Cactus-era agent of data.agent_tools), "" when it has no tools."""
    from ..errors import ConfigError
    from .profiles import agent_profiles

    profiles = agent_profiles(config.data.agent_tools, config.data.agent_profiles)
    if config.playtest.profile not in profiles:
        raise ConfigError(f"playtest.profile '{config.playtest.profile}' is not an agent profile",
                          f"use one of: {', '.join(sorted(profiles))}")
    profile = profiles[config.playtest.profile]
    return gbnf(list(profile.tools), profile.dice_first) if profile.tools else ""


def write_grammar(folder: Path, text: str, name: str = GRAMMAR_FILE) -> Path:
    """`text` (a grammar) as `folder/name`, atomically; returns its path."""
    from ..files import atomic_write_text

    path = Path(folder) / name
    atomic_write_text(path, text)  # makes the folder
    return path


def argument_problems(scenario, tools: list[str]) -> list[Problem]:
    """A warning per DM call of an agent tool whose argument the grammar refuses (`[roll: adventure]`):
    the constrained model could never write it, so the file teaches what the phone cannot decode.
    Names the agent does not act on are the profile report's concern (data build's agent table);
    the starter corpus is mlx-dm's own (tests/test_grammar.py checks it)."""
    from .starter import STARTER_PREFIX

    if scenario.path.startswith(STARTER_PREFIX):
        return []
    acted = {tool.lower() for tool in tools}
    problems = []
    for turn in scenario.turns:
        if turn.kind != DM:
            continue
        for call in _refused(turn.text, tools):
            if call.name in acted:  # find_calls lower-cases the name, as the app's agent does
                problems.append(Problem(
                    "warning", "grammar", scenario.path, turn.line,
                    f"{call.raw}: the app's tool grammar refuses this argument, so the model on the phone cannot "
                    f"write it", f"write it in the tool's form ({form_of(call.name)}: see docs/tools.md), or list "
                    "the tool as free text in data/grammar.py's TOOL_FORMS"))
    return problems
