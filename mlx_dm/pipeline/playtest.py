"""The playtest stage: games against a GGUF with the app's settings (evaluate/playtest.py), after
validation and before promotion in a run, or on their own with `mlx-dm playtest`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..data.profiles import agent_profiles
from ..evaluate.playtest_report import PlaytestReport, run_playtest, write_playtest
from ..inference import GgufBackend
from .project import Project
from .reporter import Reporter


def playtest_gguf(project: Project, gguf: Path, out_dir: Path, reporter: Reporter,
                  sessions: int | None = None) -> tuple[PlaytestReport, Path]:
    """Play `sessions` games (default playtest.sessions) on `gguf`; the report and its path. Raises nothing
    for a failed check: the caller decides (raise_if_playtest_failed)."""
    config = project.config.playtest
    if sessions is not None:
        config = replace(config, sessions=sessions)
    backend = GgufBackend(gguf, config.n_ctx, config.temperature, config.seed, config.top_p,
                          grammar=project.tool_grammar(Path(out_dir)))
    scripts = project.config.path(config.scripts_dir) if config.scripts_dir else None
    data = project.config.data
    try:
        report = run_playtest(backend, gguf.name, config, agent_profiles(data.agent_tools, data.agent_profiles), scripts,
                              lambda done, total: reporter.progress("playtest", gguf.name, done, total),
                              project.tools_prompt)
    finally:
        reporter.finished("playtest")
    path = write_playtest(report, out_dir)
    reporter.result("playtest", (report, path))
    return report, path
