"""Typed scenario: what one `ai-training/**/*.md` file says, with line numbers for every element."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

CATEGORIES = ("combat", "roleplay", "exploration")

# Turn kinds. Speaker sections become "dm" (an NPC voiced by the DM) or "user" (the player
# character) with ``speaker`` set.
SYSTEM, USER, DM, TOOLCALL = "system", "user", "dm", "toolcall"


@dataclass
class Problem:
    severity: str  # "error" (file skipped) or "warning"
    code: str
    file: str
    line: int
    message: str
    hint: str
    column: int = 0

    def location(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}:{self.column}" if self.column else where

    def __str__(self) -> str:
        return f"{self.location()}: {self.severity}: {self.message} (fix: {self.hint})"


@dataclass
class ToolCall:
    name: str  # lower-cased, as the app's agent reads it
    arguments: str  # trimmed
    line: int
    column: int
    raw: str


@dataclass
class ToolResult:
    text: str
    line: int
    answers: int | None = None  # index into the previous DM turn's calls


@dataclass
class Turn:
    kind: str
    text: str
    line: int
    speaker: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)


@dataclass
class PartyMember:
    name: str
    description: str
    attributes: dict[str, str]
    line: int


@dataclass
class Scenario:
    path: str  # relative to the scenarios root, with forward slashes
    title: str = ""
    role: str = ""
    world: str = ""
    location: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # every other key, as written
    party: list[PartyMember] = field(default_factory=list)
    party_none: bool = False  # `_NONE_`: the author said there are no companions
    player: dict[str, str] = field(default_factory=dict)
    category: str = ""
    category_source: str = ""  # "key", "folder" or "inferred"
    tags: list[str] = field(default_factory=list)
    system_prompt: str = ""
    turns: list[Turn] = field(default_factory=list)
    form: str = "headings"  # or "tags"
    content_sha256: str = ""

    @property
    def player_name(self) -> str:
        return self.player.get("Name", "")

    @property
    def calls(self) -> list[ToolCall]:
        return [call for turn in self.turns for call in turn.calls]

    def to_dict(self) -> dict:
        return asdict(self)
