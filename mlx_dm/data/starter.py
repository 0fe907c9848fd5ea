"""The starter corpus shipped with mlx-dm, added to a project's own scenarios when it has few.

A game with ten scenario files cannot teach a model the shape of a DM turn, the tool syntax and
when not to call a tool. The starter corpus (`mlx_dm/starter/`, 50-odd scenarios written one by
one, each with its own world, party and voice, no text block reused) gives it that; the user's
files then teach their game. It joins the data as scenarios under `mlx-dm-starter/`, so reports,
the split and incremental runs name them apart from the user's files, and it is never written to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError
from .discover import ScanResult, scan

STARTER_DIR = Path(__file__).resolve().parent.parent / "starter"
STARTER_PREFIX = "mlx-dm-starter/"
CHOICES = ("auto", "always", "never")


@dataclass(frozen=True)
class StarterUse:
    """Whether the starter corpus joined this build, and why: the data report says so."""

    included: bool
    setting: str
    user_scenarios: int
    below: int
    files: int = 0

    @property
    def reason(self) -> str:
        if self.setting != "auto":
            return f"data.include_starter = \"{self.setting}\""
        relation = "fewer than" if self.included else "at least"
        return f"your folder has {self.user_scenarios} scenarios, {relation} data.starter_below = {self.below}"

    def to_dict(self) -> dict:
        return {**asdict(self), "reason": self.reason}


def starter_wanted(setting: str, user_scenarios: int, below: int) -> bool:
    if setting not in CHOICES:
        raise ConfigError(f"data.include_starter must be one of {', '.join(CHOICES)}, got {setting!r}",
                          'write include_starter = "auto" (the starter joins when you have few scenarios), '
                          '"always" or "never"')
    return setting == "always" or (setting == "auto" and user_scenarios < below)


def source_path(root: Path, rel: str) -> Path:
    """The file a scenario path names: the user's folder, or the starter corpus for its prefix."""
    if rel.startswith(STARTER_PREFIX):
        return STARTER_DIR / rel[len(STARTER_PREFIX):]
    return Path(root) / rel


def scan_with_starter(root: Path, setting: str, below: int, max_bytes: int,
                      sample: int = 0) -> tuple[ScanResult, StarterUse]:
    """The user's scan, plus the starter corpus when the setting asks for it (`sample` > 0: that
    many of its files, spread over its folders; the dev profile's quick route check).

    A missing or empty scenario folder is not an error while the starter joins: a new game's first
    `npm run train` then trains on the starter alone, and the report says so.
    """
    user = scan(root, max_bytes) if Path(root).is_dir() or setting == "never" else ScanResult(Path(root))
    count = len(user.accepted)
    if not starter_wanted(setting, count, below):
        return user, StarterUse(False, setting, count, below)
    starter = scan(STARTER_DIR, max_bytes)
    if 0 < sample < len(starter.results):
        starter.results = [starter.results[i * len(starter.results) // sample] for i in range(sample)]
    for result in starter.results:
        result.path = STARTER_PREFIX + result.path
        if result.scenario is not None:
            result.scenario.path = result.path
        for problem in result.problems:
            problem.file = result.path
    merged = ScanResult(user.root, user.results + starter.results)
    return merged, StarterUse(True, setting, count, below, len(starter.accepted))
