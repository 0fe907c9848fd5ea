from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def write_md(tmp_path: Path):
    """Write a dedented Markdown file under tmp_path/ai-training and return its path."""

    def write(rel: str, text: str | bytes) -> Path:
        path = tmp_path / "ai-training" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write
