"""Parse scenario files as the game's authors write them (see docs/scenario-format.md).

Accepted: H1 (or any level) `SYSTEM`/`USER`/`Player`/`DM`/`TOOLCALL` sections, `**Key**:` lines,
`Party:` bullet lists, `## Party` blocks (bullets, `### Name` blocks or `_NONE_`), `## Player`
sheets, speaker sections named after characters, prose TOOLCALL results, and the older
`<SYSTEM>...</SYSTEM>` tag form. Everything the parser cannot use is reported as a Problem with
file, line and a fix.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field

from . import toolcalls
from .scenario import DM, SYSTEM, TOOLCALL, USER, PartyMember, Problem, Scenario, ToolResult, Turn
from .sections import BULLET, EMPHASIS, HEADING, NONE_LINE, body_text, clean_text, split_heading_form, split_tag_form

_KEY_VALUE = re.compile(
    r"^\s*(?:[-*+]\s+)?\*{0,2}([A-Za-z][A-Za-z0-9_'/ -]{0,40}?)\*{0,2}\s*:\s*\*{0,2}\s*(.*?)\s*$"
)
_MEMBER = re.compile(r"^\*{0,2}([^(:*—–-]+?)\*{0,2}\s*(?:\((.*)\)|[:—–-]\s*(.*))?\s*$")
_LEVEL = re.compile(r"(?i)^level\s+\d+")

KNOWN_KEYS = ("Role", "World", "Location", "Category", "Tags", "Party")


@dataclass
class ParseResult:
    path: str
    scenario: Scenario | None
    problems: list[Problem] = field(default_factory=list)
    skipped_reason: str = ""  # set when the file is not a scenario at all (README, notes)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


@functools.lru_cache(maxsize=16384)
def _key_value(line: str) -> tuple[str, str] | None:
    match = _KEY_VALUE.match(line)
    if not match:
        return None
    key = match.group(1).strip()
    if len(key.split()) > 4 or key.lower().startswith(("http", "note")) and "://" in line:
        return None
    return key, match.group(2).strip().strip("*").strip()


_KNOWN_BY_LOWER = {known.lower(): known for known in KNOWN_KEYS}


def _canonical_key(key: str) -> str:
    return _KNOWN_BY_LOWER.get(key.lower(), key)


def parse_member(text: str, line: int) -> PartyMember | None:
    text = text.strip()
    if not text:
        return None
    match = _MEMBER.match(text)
    if not match:
        return PartyMember(text, "", {}, line)
    name = match.group(1).strip().strip("*").strip()
    description = (match.group(2) or match.group(3) or "").strip()
    attributes: dict[str, str] = {}
    for index, part in enumerate(p.strip() for p in description.split(",")):
        if not part:
            continue
        if ":" in part:
            key, value = part.split(":", 1)
            attributes[key.strip()] = value.strip()
        elif _LEVEL.match(part):
            attributes["Level"] = part.split()[-1]
        elif index == 0:
            attributes["Race/Class"] = part
        else:
            attributes.setdefault("Notes", part)
    return PartyMember(name, description, attributes, line)


def _parse_system(scenario: Scenario, body: list[tuple[int, str]], rel: str, problems: list[Problem]) -> None:
    mode = "main"  # main | party_list | party | member | player | other
    prompt_lines: list[str] = []
    member: PartyMember | None = None
    for lineno, line in body:
        stripped = line.strip()
        heading = HEADING.match(line) if line[:1] == "#" else None
        if heading:
            name = EMPHASIS.sub("", heading.group(2)).strip()
            lowered = name.lower()
            if lowered in ("party", "companions"):
                mode, member = "party", None
            elif lowered in ("player", "player character", "character sheet"):
                mode = "player"
            elif mode in ("party", "member") and len(heading.group(1)) >= 3:
                member = PartyMember(name, "", {}, lineno)
                scenario.party.append(member)
                mode = "member"
            else:
                mode = "other"
                prompt_lines.append(line)
            continue
        if not stripped:
            if mode in ("main", "other"):
                prompt_lines.append("")
            continue
        bullet = BULLET.match(line) if stripped[0] in "-*+" else None
        if mode == "party_list" and not bullet:
            mode = "main"
        if mode in ("party", "member", "party_list") and NONE_LINE.match(stripped.strip("-* ")):
            scenario.party_none = True
            continue
        if mode == "player":
            pair = _key_value(line)
            if pair:
                scenario.player[_canonical_key(pair[0]).title() if pair[0].islower() else pair[0]] = pair[1]
            else:
                problems.append(Problem("warning", "player-line", rel, lineno,
                                        f"line in the Player sheet is not '- Key: value': {stripped[:60]!r}",
                                        "write the sheet as '- Name: Zara', '- Class: Rogue', ..."))
            continue
        if mode == "member" and member is not None:
            pair = _key_value(line)
            if pair:
                member.attributes[pair[0]] = pair[1]
            else:
                member.description = (member.description + " " + stripped.lstrip("-*+ ")).strip()
            continue
        if mode in ("party", "party_list") and bullet:
            parsed = parse_member(bullet.group(1), lineno)
            if parsed:
                scenario.party.append(parsed)
            continue
        pair = _key_value(line) if not bullet or mode == "main" else None
        if pair and mode in ("main", "other"):
            key, value = _canonical_key(pair[0]), pair[1]
            if key == "Party":
                if not value:
                    mode = "party_list"
                elif NONE_LINE.match(value):
                    scenario.party_none = True
                else:
                    for name in value.split(","):
                        parsed = parse_member(name, lineno)
                        if parsed:
                            scenario.party.append(parsed)
                continue
            _set_key(scenario, key, value)
            continue
        prompt_lines.append(line)
    scenario.system_prompt = "\n".join(prompt_lines).strip()


def _set_key(scenario: Scenario, key: str, value: str) -> None:
    if key == "Role":
        scenario.role = value
    elif key == "World":
        scenario.world = value
    elif key == "Location":
        scenario.location = value
    elif key == "Category":
        scenario.category = value.lower()
        scenario.category_source = "key"
    elif key == "Tags":
        scenario.tags = [t.strip().lstrip("#") for t in re.split(r"[,;]", value) if t.strip()]
    else:
        scenario.metadata[key] = value


def _looks_like_scenario(text: str) -> bool:
    return bool(toolcalls.APP_CALL_PATTERN.search(text)) or bool(
        re.search(r"(?im)^\W*(role|world|location)\W*:|dungeon master", text)
    )


def parse_text(text: str, rel: str) -> ParseResult:
    """Parse one scenario's text (already decoded). ``rel`` names the file in problems."""
    text = clean_text(text)
    lines = text.split("\n")
    problems: list[Problem] = []
    title, blocks, preamble = split_heading_form(lines, text)
    form = "headings"
    if not blocks:
        blocks = split_tag_form(text)
        form = "tags"
        preamble = []
    if not blocks:
        if _looks_like_scenario(text):
            problems.append(Problem("error", "no-sections", rel, 1,
                                    "looks like a scenario (tool calls or Role/World keys) but has no section keyword",
                                    "start sections with '# SYSTEM', '# USER', '# DM' and '# TOOLCALL' headings"))
            return ParseResult(rel, None, problems)
        return ParseResult(rel, None, problems, skipped_reason="no section keyword (not a scenario)")

    scenario = Scenario(path=rel, title=title, form=form)
    scenario.content_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    for lineno, line in preamble:
        pair = _key_value(line)
        if pair and not BULLET.match(line):
            _set_key(scenario, _canonical_key(pair[0]), pair[1])

    system_seen = False
    for block in blocks:
        if block.kind == SYSTEM:
            if system_seen:
                problems.append(Problem("warning", "second-system", rel, block.line,
                                        "a second SYSTEM section; its keys are merged into the first",
                                        "keep one SYSTEM section at the top of the file"))
            system_seen = True
            _parse_system(scenario, block.body, rel, problems)
            continue
        content, first_line = body_text(block)
        first_line = first_line or block.line
        if not content:
            problems.append(Problem("warning", "empty-section", rel, block.line,
                                    f"section '{block.heading}' is empty and is left out",
                                    "write the turn's text under the heading, or delete the heading"))
            continue
        kind, speaker = block.kind, None
        if kind is None:
            speaker = EMPHASIS.sub("", block.heading).strip()
            kind = DM  # resolved against the player's name below
        turn = Turn(kind=kind, text=content, line=first_line, speaker=speaker)
        scenario.turns.append(turn)

    player = scenario.player_name.lower()
    for turn in scenario.turns:
        if turn.speaker and player and (turn.speaker.lower() == player or turn.speaker.lower() == player.split()[0]):
            turn.kind = USER
        if turn.kind == DM:
            turn.calls = toolcalls.find_calls(turn.text, turn.line)
            for look in toolcalls.find_look_alikes(turn.text, turn.line):
                problems.append(Problem("warning", "call-look-alike", rel, look.line, look.message, look.fix, look.column))
            for call in turn.calls:
                if "\n" in call.raw:
                    problems.append(Problem("warning", "call-spans-lines", rel, call.line,
                                            f"call '{call.raw.splitlines()[0]}' runs over several lines",
                                            "close the call with ']' on the line it starts", call.column))
                if call.raw[1:].split(":")[0] != call.name:
                    problems.append(Problem("warning", "call-case", rel, call.line,
                                            f"tool name '{call.raw[1:].split(':')[0]}' is not lower case",
                                            f"write [{call.name}: ...]; the app lower-cases it anyway", call.column))
    _match_toolcalls(scenario, rel, problems)
    _check_scenario(scenario, rel, problems, system_seen)
    if any(p.severity == "error" for p in problems):
        return ParseResult(rel, None, problems)
    return ParseResult(rel, scenario, problems)


def _match_toolcalls(scenario: Scenario, rel: str, problems: list[Problem]) -> None:
    previous_dm: Turn | None = None
    answered: dict[int, set[int]] = {}
    for turn in scenario.turns:
        if turn.kind == DM:
            previous_dm = turn
            answered[id(turn)] = set()
            continue
        if turn.kind != TOOLCALL:
            if turn.kind == USER:
                previous_dm = None
            continue
        lines = [(line.strip(), turn.line + i) for i, line in enumerate(turn.text.split("\n")) if line.strip()]
        calls = previous_dm.calls if previous_dm else []
        answers = toolcalls.match_results(calls, lines)
        for (text, lineno), answer in zip(lines, answers):
            turn.results.append(ToolResult(text, lineno, answer))
            if answer is None:
                hint = ("put the call in the DM turn before it, e.g. [roll: perception]" if not calls
                        else "start the line with the tool or skill it answers, e.g. 'perception: ...'")
                problems.append(Problem("warning", "result-without-call", rel, lineno,
                                        f"TOOLCALL result answers no call of the DM turn before it: {text[:60]!r}", hint))
            elif previous_dm is not None:
                answered[id(previous_dm)].add(answer)
    for turn in scenario.turns:
        if turn.kind != DM:
            continue
        for index, call in enumerate(turn.calls):
            if call.name in toolcalls.RESULT_TOOLS and index not in answered.get(id(turn), set()):
                problems.append(Problem("warning", "call-unanswered", rel, call.line,
                                        f"{call.raw} waits for a result but no TOOLCALL section answers it",
                                        "add a '# TOOLCALL' section after this DM turn with the result", call.column))


def _check_scenario(scenario: Scenario, rel: str, problems: list[Problem], system_seen: bool) -> None:
    if not any(turn.kind == DM for turn in scenario.turns):
        problems.append(Problem("error", "no-dm-turn", rel, 1, "no DM turn: there is nothing for the model to learn",
                                "add a '# DM' section with the Dungeon Master's reply"))
    for key, value in (("Role", scenario.role), ("World", scenario.world), ("Location", scenario.location)):
        if not value:
            problems.append(Problem("warning", f"missing-{key.lower()}", rel, 1,
                                    f"no '{key}:' key" + ("" if system_seen else " (and no SYSTEM section)"),
                                    f"add '{key}: ...' to the SYSTEM section"))
    if scenario.category and scenario.category not in ("combat", "roleplay", "exploration"):
        problems.append(Problem("warning", "unknown-category", rel, 1,
                                f"Category '{scenario.category}' is not combat, roleplay or exploration; it will be inferred",
                                "write 'Category: combat', 'roleplay' or 'exploration'"))
        scenario.metadata["Category"] = scenario.category
        scenario.category, scenario.category_source = "", ""
