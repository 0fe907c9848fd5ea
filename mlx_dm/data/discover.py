"""Find and read scenario files: `ai-training/**/*.md`, deterministic order, nothing rewritten."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .parse import ParseResult, parse_text
from .scenario import Problem

NOT_SCENARIO_NAMES = {"readme.md", "changelog.md", "license.md", "contributing.md"}


@dataclass
class ScanResult:
    root: Path
    results: list[ParseResult] = field(default_factory=list)

    @property
    def accepted(self) -> list[ParseResult]:
        return [r for r in self.results if r.scenario is not None]

    @property
    def rejected(self) -> list[ParseResult]:
        return [r for r in self.results if r.scenario is None and not r.skipped_reason]

    @property
    def skipped(self) -> list[ParseResult]:
        return [r for r in self.results if r.skipped_reason]

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.results for p in r.problems]


def find_scenario_files(root: Path) -> list[Path]:
    """Every `*.md` below ``root``, hidden folders ignored, no symlink followed out of ``root``."""
    return [Path(root) / relative for relative in _relative_scenario_paths(Path(root))]


def _relative_scenario_paths(root: Path) -> list[str]:
    """Paths below ``root`` (POSIX, relative), sorted: the order scenarios are used in."""
    if not root.is_dir():
        raise DataError(
            f"scenario folder {root} does not exist",
            "create it and put your scenario .md files in it (e.g. ai-training/data/scenarios/combat/), "
            "or pass --scenarios PATH",
        )
    real_root = root.resolve()
    top = str(root)
    found = []
    for folder, dirs, files in os.walk(top, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        prefix = os.path.relpath(folder, top).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for name in files:
            if name.startswith(".") or not name.lower().endswith(".md"):
                continue
            if os.path.islink(os.path.join(folder, name)):
                target = Path(folder, name).resolve()
                if not target.is_relative_to(real_root):
                    continue
            found.append(prefix + name)
    return sorted(found)


def read_scenario(path: Path, root: Path, max_bytes: int, rel: str | None = None) -> ParseResult:
    """Read and parse one file; every failure becomes a Problem, never an exception."""
    rel = rel or Path(path).relative_to(root).as_posix()
    if rel.rsplit("/", 1)[-1].lower() in NOT_SCENARIO_NAMES:
        return ParseResult(rel, None, [], skipped_reason="documentation file (README and the like)")
    try:
        with open(path, "rb") as handle:  # one open for the size check and the read
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                return ParseResult(rel, None, [Problem(
                    "error", "oversize", rel, 0,
                    f"file is {size:,} bytes, over the {max_bytes:,}-byte limit for one scenario",
                    "split it into several scenario files, or raise data.max_file_bytes in mlx-dm.toml")])
            raw = handle.read()
    except OSError as exc:
        return ParseResult(rel, None, [Problem("error", "unreadable", rel, 0, f"cannot read the file ({exc.strerror})",
                                               "check the file's permissions")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return ParseResult(rel, None, [Problem(
            "error", "not-utf8", rel, line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            "save the file as UTF-8 in your editor")])
    if "\x00" in text:
        return ParseResult(rel, None, [Problem("error", "binary", rel, text[: text.index("\x00")].count("\n") + 1,
                                               "binary content (NUL bytes) in a .md file",
                                               "remove the file or replace it with the Markdown text")])
    return parse_text(text, rel)


def scan(root: Path, max_bytes: int = 1_000_000) -> ScanResult:
    root = Path(root)
    top = str(root)
    return ScanResult(root, [read_scenario(os.path.join(top, rel), root, max_bytes, rel)
                             for rel in _relative_scenario_paths(root)])
