"""Tool calls as the game's agent reads them, and the look-alikes it would miss or mangle.

The app (local-dm-agent.ts) extracts calls with the JavaScript pattern `/\\[(\\w+):([^\\]]+)\\]/g`:
``\\w`` is ASCII there and ``[^\\]]`` also matches a newline. ``APP_CALL_PATTERN`` is the same
pattern for Python's ``re`` so that what we validate is exactly what the app will act on.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .scenario import ToolCall

APP_CALL_PATTERN = re.compile(r"\[([A-Za-z0-9_]+):([^\]]+)\]")
APP_CALL_PATTERN_JS = r"/\[(\w+):([^\]]+)\]/g"
# Anything bracketed on one line that is not a Markdown link target or a checkbox.
_BRACKETED = re.compile(r"\[([^\[\]\n]*)\](?!\()")
_UNCLOSED = re.compile(r"\[([a-z][a-z0-9_ ]{0,30}):[^\]\n]*$")
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_NEWLINE = re.compile("\n")
_SPACES = re.compile(r"\s+")
DICE_PATTERN = re.compile(r"\b(\d*)d(\d+)((?:\s*[+-]\s*\d+)*)\b", re.IGNORECASE)
TYPOGRAPHIC = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00a0": " "})

# Tools whose call waits for a result from the engine (a TOOLCALL section should answer them).
RESULT_TOOLS = frozenset({"roll", "check", "skill_check", "save", "saving_throw", "attack", "initiative", "damage"})


@dataclass
class LookAlike:
    line: int
    column: int
    text: str
    message: str
    fix: str


def find_calls(text: str, first_line: int) -> list[ToolCall]:
    """Calls exactly as the app's regex finds them, with 1-based line and column."""
    calls = []
    if "[" not in text:
        return calls
    line_starts = _line_starts(text)
    for match in APP_CALL_PATTERN.finditer(text):
        line, column = _position(line_starts, match.start())
        calls.append(
            ToolCall(
                name=match.group(1).lower(),
                arguments=match.group(2).strip(),
                line=first_line + line,
                column=column,
                raw=match.group(0),
            )
        )
    return calls


def find_look_alikes(text: str, first_line: int) -> list[LookAlike]:
    """Bracketed text that is meant as a call but that the app's regex would miss or mangle."""
    found = []
    if "[" not in text:
        return found
    for offset, line in enumerate(text.split("\n")):
        if "[" not in line:
            continue
        for match in _BRACKETED.finditer(line):
            inner = match.group(1)
            column = match.start() + 1
            if APP_CALL_PATTERN.fullmatch(match.group(0)):
                continue
            stripped = inner.strip()
            if stripped in ("", "x", "X") or not stripped:
                continue  # checkbox
            head, colon, rest = stripped.partition(":")
            if colon and " " in head.strip() and _IDENTIFIER.match(head.strip().replace(" ", "_")):
                fixed = head.strip().replace(" ", "_")
                found.append(LookAlike(first_line + offset, column, match.group(0),
                                       f"tool name '{head.strip()}' has a space, so the app cannot read this call",
                                       f"write [{fixed}:{rest}]"))
            elif colon and not rest.strip() and _IDENTIFIER.match(head.strip()):
                found.append(LookAlike(first_line + offset, column, match.group(0),
                                       f"call '{head.strip()}' has no arguments, so the app's pattern skips it",
                                       f"write [{head.strip()}: <argument>]"))
            elif not colon:
                words = stripped.split()
                if len(words) >= 2 and _IDENTIFIER.match(words[0]) and len(words) <= 6:
                    found.append(LookAlike(first_line + offset, column, match.group(0),
                                           f"'{match.group(0)}' looks like a tool call but has no colon, so the app ignores it",
                                           f"write [{words[0]}: {' '.join(words[1:])}]"))
        unclosed = _UNCLOSED.search(line)
        if unclosed and "]" not in line[unclosed.start():]:
            found.append(LookAlike(first_line + offset, unclosed.start() + 1, line[unclosed.start():],
                                   "tool call is never closed with ']' on its line; the app would read on into the next lines",
                                   "add the closing ']'"))
    return found


def normalise_call_quotes(text: str) -> str:
    """Straighten typographic quotes inside tool calls only; prose keeps its typography."""
    if text.isascii():
        return text
    return APP_CALL_PATTERN.sub(lambda m: m.group(0).translate(TYPOGRAPHIC), text)


def dice_expressions(text: str) -> list[str]:
    return list(_dice_expressions(text))


@functools.lru_cache(maxsize=16384)
def _dice_expressions(text: str) -> tuple[str, ...]:
    if "d" not in text and "D" not in text:
        return ()
    return tuple(_SPACES.sub("", m.group(0)).lower() for m in DICE_PATTERN.finditer(text))


def argument_pattern(arguments: str) -> str:
    """A coarse shape of a call's arguments for the vocabulary: dice and numbers abstracted."""
    shape = DICE_PATTERN.sub("<dice>", arguments)
    shape = re.sub(r"[+-]?\d+", "<n>", shape)
    parts = [p.strip() for p in shape.split(",")]
    out = []
    for part in parts:
        if part in ("<dice>", "<n>") or not part:
            out.append(part)
        elif re.fullmatch(r"[a-z_ ]+", part):
            out.append(part)  # skill and ability names are part of the vocabulary
        else:
            out.append("<text>")
    return ", ".join(out)


def match_results(calls: list[ToolCall], result_lines: list[tuple[str, int]]) -> list[int | None]:
    """For each TOOLCALL result line, the index of the call it answers, or None.

    Scored per call, best unanswered call wins: the call written out (`[roll: perception] => 15`),
    a leading `key:` equal to the tool name or its first argument, a shared dice expression, the
    first argument named in the line. Left-over lines pair with left-over calls in order.
    """
    answers: list[int | None] = []
    used: set[int] = set()
    for text, _line in result_lines:
        lowered = text.lower().translate(TYPOGRAPHIC)
        written = APP_CALL_PATTERN.search(lowered)
        key = lowered.split(":", 1)[0].strip() if ":" in lowered else ""
        dice = set(dice_expressions(lowered))
        best, best_score = None, 0
        for index, call in enumerate(calls):
            if index in used:
                continue
            args = call.arguments.lower()
            first_arg = args.split(",")[0].strip()
            score = 0
            if written and written.group(1) == call.name and written.group(2).strip() == args:
                score = 5
            elif key and key in (call.name, first_arg, args):
                score = 4
            elif key and first_arg and (first_arg in key or key in first_arg):
                score = 3
            elif dice and dice & set(dice_expressions(args)):
                score = 2
            elif first_arg and len(first_arg) > 2 and re.search(rf"\b{re.escape(first_arg)}\b", lowered):
                score = 1
            if score > best_score:
                best, best_score = index, score
        if best is None and len(result_lines) <= len(calls):
            remaining = [i for i in range(len(calls)) if i not in used]
            best = remaining[0] if remaining else None
        if best is not None:
            used.add(best)
        answers.append(best)
    return answers


def _line_starts(text: str) -> list[int]:
    return [0] + [match.end() for match in _NEWLINE.finditer(text)]


def _position(line_starts: list[int], offset: int) -> tuple[int, int]:
    lo, hi = 0, len(line_starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if line_starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo, offset - line_starts[lo] + 1
