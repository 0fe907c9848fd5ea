"""A scenario file cut into its sections: the heading form (`# SYSTEM`, `# DM`, speaker sections,
titles and sheets told apart) and the older `<SYSTEM>...</SYSTEM>` tag form; and the text cleaning
every file goes through first."""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field

from . import toolcalls
from .scenario import DM, SYSTEM, TOOLCALL, USER

HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^\s*(```|~~~)")
KEYWORD = re.compile(
    r"^(system|user|player|dm|dungeon[ _]master|tool[ _]?calls?|tool[ _]results?)(?=$|[\s(:\-–—\[])(.*)$",
    re.IGNORECASE,
)
BULLET = re.compile(r"^\s*[-*+]\s+(.*?)\s*$")
TAG = re.compile(r"<(system|user|player|dm|toolcall)>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
NONE_LINE = re.compile(r"^\s*_?\*?\s*(none|no companions|n/a)\s*\*?_?\s*$", re.IGNORECASE)
EMPHASIS = re.compile(r"^[*_`]+|[*_`]+$")
BLANK_RUN = re.compile(r"\n{3,}")
TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)  # what str.rstrip() removes from each line


def clean_text(text: str) -> str:
    """Normalise without changing meaning: NFC, LF line ends, no BOM, no trailing spaces,
    straight quotes inside tool calls, at most one blank line in a row."""
    text = text.lstrip("\ufeff")
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = TRAILING_SPACE.sub("", text)
    if "\n\n\n" in text:
        text = BLANK_RUN.sub("\n\n", text)
    return toolcalls.normalise_call_quotes(text).strip("\n") + "\n"


@functools.lru_cache(maxsize=4096)
def keyword(heading: str) -> str | None:
    text = EMPHASIS.sub("", heading.strip()).strip()
    match = KEYWORD.match(text)
    if not match:
        return None
    word = match.group(1).lower().replace(" ", "").replace("_", "")
    if word in ("user", "player"):
        return USER
    if word in ("dm", "dungeonmaster"):
        return DM
    if word == "system":
        return SYSTEM
    return TOOLCALL


@dataclass
class Block:
    kind: str | None  # keyword kind, or None for a speaker section
    heading: str
    line: int  # line of the heading (1-based); 0 for the preamble
    lines: list[str] = field(default_factory=list)  # the section's lines (cleaned: blank lines are "")
    first: int = 0  # line number of lines[0]
    skipped: frozenset[int] = frozenset()  # line numbers in the range that belong to no section (titles)

    @property
    def body(self) -> list[tuple[int, str]]:
        """(line number, text) of every line of the section."""
        numbered = zip(range(self.first, self.first + len(self.lines)), self.lines)
        return [pair for pair in numbered if pair[0] not in self.skipped] if self.skipped else list(numbered)


def split_heading_form(lines: list[str], text: str | None = None) -> tuple[str, list[Block], list[tuple[int, str]]]:
    """Title, section blocks and preamble lines of a file in heading form."""
    headings: list[tuple[int, int, str]] = []  # (index, level, text)
    in_fence = False
    text = "\n".join(lines) if text is None else text
    if "```" not in text and "~~~" not in text:
        lines_to_check = [(index, line) for index, line in enumerate(lines) if line[:1] == "#"]
    else:
        lines_to_check = list(enumerate(lines))
    for index, line in lines_to_check:
        first = line[:1]
        if first not in ("#", "`", "~", " ", "\t"):
            continue  # the common case, decided without a regex
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence and first == "#":
            match = HEADING.match(line)
            if match:
                headings.append((index, len(match.group(1)), match.group(2)))
    section_level = next((level for _, level, text in headings if keyword(text)), None)
    if section_level is None:
        return "", [], []
    title = ""
    blocks: list[Block] = []
    dropped: set[int] = set()  # title headings: in no section's text
    starts: list[int] = []  # line index of each section heading
    current: Block | None = None
    for index, level, text in headings:
        # Headings above the section level, and any before the first section, are a title.
        if level < section_level or (current is None and not keyword(text)):
            title = title or EMPHASIS.sub("", text).strip()
            dropped.add(index)
        elif level == section_level and not is_sheet_heading(text, current, lines, index):
            current = Block(keyword(text), text, index + 1)
            blocks.append(current)
            starts.append(index)

    skipped = frozenset(index + 1 for index in dropped)

    def section(block: Block, begin: int, end: int) -> Block:
        block.lines, block.first = lines[begin:end], begin + 1
        block.skipped = frozenset(n for n in skipped if begin < n <= end) if skipped else skipped
        return block

    preamble = section(Block(None, "", 0), 0, starts[0] if starts else len(lines)).body
    for number, block in enumerate(blocks):
        section(block, starts[number] + 1, starts[number + 1] if number + 1 < len(starts) else len(lines))
    return title, blocks, preamble


def is_sheet_heading(text: str, current: Block | None, lines: list[str], index: int) -> bool:
    """`Player`/`Party` at the section level inside SYSTEM is a sub-section when a list follows."""
    if current is None or current.kind != SYSTEM:
        return False
    name = EMPHASIS.sub("", text).strip().lower()
    if name not in ("player", "party", "player character", "character sheet", "companions"):
        return False
    for line in lines[index + 1:]:
        if line.strip():
            return bool(BULLET.match(line) or NONE_LINE.match(line) or line.lstrip().startswith("#"))
    return False


def split_tag_form(text: str) -> list[Block]:
    blocks = []
    for match in TAG.finditer(text):
        kind = keyword(match.group(1))
        first_line = text.count("\n", 0, match.start(2)) + 1
        blocks.append(Block(kind, match.group(1), text.count("\n", 0, match.start()) + 1,
                             match.group(2).split("\n"), first_line))
    return blocks


def body_text(block: Block) -> tuple[str, int]:
    """Text of a section with surrounding blank lines removed, and its first line number."""
    if block.skipped:
        numbered = block.body
        lines, numbers = [line for _, line in numbered], [number for number, _ in numbered]
    else:
        lines, numbers = block.lines, None
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    first = (numbers[start] if numbers else block.first + start) if start < len(lines) else block.first
    return ("\n".join(lines[start:end]) if start < end else ""), first
