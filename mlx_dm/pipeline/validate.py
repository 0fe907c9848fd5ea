"""The validation and promotion stages: score a stored version beside the tuned and base MLX models
and the app's current one, check it for the app, then promote it only when it passed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ValidationFailed
from ..data.augment import original_path
from ..data.profiles import agent_profiles
from ..evaluate.cases import call_vocabulary, independent_cases, suite_cases, user_cases, validation_cases
from ..evaluate.validate import BASE_MLX, TUNED_MLX, ValidationReport, raise_if_failed, run_validation
from ..evaluate.validate_report import write_report
from ..evaluate.playtest_report import raise_if_playtest_failed
from ..inference import MlxBackend
from ..registry import PlacedModel, promote, prune_versions, update_version
from .playtest import playtest_gguf
from .project import Project
from .reporter import Reporter


@dataclass(frozen=True)
class Promoted:
    placed: PlacedModel
    pruned: list[str]


def _training_texts(dataset_dir: Path) -> list[str]:
    """The DM replies of the dataset, each scenario once, for the report's counts of the data's calls:
    its renamed copies (`a.md#renamed-1`) and the balancing's repeats would count a call twice."""
    seen: set[str] = set()
    texts: list[str] = []
    for name in ("train.jsonl", "valid.jsonl"):
        if not (dataset_dir / name).exists():
            continue
        for line in (dataset_dir / name).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            source = original_path(record["path"])
            if source not in seen:
                seen.add(source)
                texts += [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    return texts


def tool_vocabulary(project: Project) -> set[str]:
    """The tool names a reply may call: the data's, the dice tools and the app's agent's."""
    return call_vocabulary(project.dataset_dir, project.config.data.agent_tools)


def validate_gguf(project: Project, gguf: Path, adapter_dir: Path | None, base_path: Path | None, out_dir: Path,
                  reporter: Reporter, previous: Path | None = None) -> tuple[ValidationReport, Path]:
    """Score and check `gguf`; the report (written to `out_dir`) and its path. Raises nothing: see `decide`."""
    config, dataset_dir = project.config, project.dataset_dir
    tools = project.tools_prompt
    cases = validation_cases(dataset_dir) + suite_cases(tools=tools) + independent_cases(tools)
    left_out: list[str] = []
    if config.validate.cases_dir:
        own, left_out = user_cases(config.path(config.validate.cases_dir), project.scenarios_dir, tools)
        cases += own
        for path in left_out:
            reporter.note(f"{path} is in the training data too: left out of the cases")
    vocabulary = tool_vocabulary(project)
    backends = []
    if adapter_dir is not None and base_path is not None:
        if config.validate.compare_mlx:
            backends.append((TUNED_MLX, lambda: MlxBackend(base_path, adapter_dir)))
        if config.validate.compare_base:
            backends.append((BASE_MLX, lambda: MlxBackend(base_path)))
    grammar = project.tool_grammar(Path(out_dir))
    try:
        report = run_validation(gguf, cases, vocabulary, list(config.data.agent_tools), _training_texts(dataset_dir),
                                config.validate, backends, previous,
                                lambda label, done, total: reporter.progress("validation", label, done, total),
                                agent_profiles(config.data.agent_tools, config.data.agent_profiles), grammar)
    finally:
        reporter.finished("validation")
    report.notes += [f"left out of the cases (training has it too): {path}" for path in left_out]
    path = write_report(report, out_dir)
    reporter.result("validation", (report, path))
    return report, path


def _unless_failed(check, project: Project, placed: PlacedModel, report_path: Path, current: dict | None,
                   reporter: Reporter) -> None:
    """Run `check`; when it raises ValidationFailed the version is kept as "rejected" and the app's model stays."""
    try:
        check()
    except ValidationFailed:
        update_version(project.root, placed, status="rejected", validation=str(report_path))
        reporter.warn(f"{placed.version} is kept in assets/models/versions but not used: the app stays on "
                      f"{current['version'] if current else 'no model'}")
        raise


def validate_and_promote(project: Project, placed: PlacedModel, adapter_dir: Path | None, base_path: Path | None,
                         out_dir: Path, reporter: Reporter, start: str = "validation") -> Promoted:
    """Validate a stored version against the app's current model, playtest it, and promote it only
    when both pass; a version that fails is kept in versions/ as "rejected" (ValidationFailed).

    Each finished step is recorded in the registry (status "scored" after validation, "validated"
    after the playtest), so an interrupted run resumes at `start` ("validation", "playtest" or
    "promotion": pipeline/resume.py) without scoring the version again."""
    current = project.current_model()
    if start == "validation":
        reporter.stage("validation", f"scoring {Path(placed.gguf_path).name}", out_dir.parent)
        previous = project.path(current["gguf_path"]) if current else None
        report, path = validate_gguf(project, project.path(placed.gguf_path), adapter_dir, base_path, out_dir, reporter,
                                     previous if previous and previous.is_file() else None)
        _unless_failed(lambda: raise_if_failed(report, path), project, placed, path, current, reporter)
        scores = {k: report.evaluations[0].overall[k] for k in ("tool_f1", "format_compliance", "reference_calls", "predicted_calls")} if report.evaluations else {}
        update_version(project.root, placed, status="scored", validation=str(path), scores=scores)
        start = "playtest"
    if start == "playtest":
        games = project.config.playtest.after_validation
        if games > 0:
            reporter.stage("playtest", f"{games} games on {Path(placed.gguf_path).name}", out_dir.parent)
            played, played_path = playtest_gguf(project, project.path(placed.gguf_path), out_dir.parent / "playtest",
                                                reporter, games)
            _unless_failed(lambda: raise_if_playtest_failed(played, played_path), project, placed, played_path,
                           current, reporter)
        update_version(project.root, placed, status="validated")
    reporter.stage("promotion", placed.version, out_dir.parent)
    promoted = Promoted(promote(project.root, placed.version), prune_versions(project.root, project.config.model.keep_versions))
    reporter.result("promotion", promoted)
    return promoted
