"""The export stage, named after the base it came from: fuse, convert, quantise, check, store a version."""

from __future__ import annotations

from pathlib import Path

from ..data.render import STOP_WORDS
from ..export.cactus import CactusBundle, export_cactus
from ..evaluate.cases import independent_cases, select_cases, validation_cases
from ..export.pipeline import ExportResult, ExportSpec, export_model, fused_checkpoint
from ..registry import planned_version
from .project import Project
from .reporter import Reporter
from .settings import model_name
from .validate import tool_vocabulary


def run_export(project: Project, base_path: Path, adapter: Path, reporter: Reporter, n_ctx: int = 2048) -> ExportResult:
    """Export `adapter` (trained on `base_path`) into the run folder it came from, and store it as a
    version; the quantisation as [export] says (chosen by measurement on held-out cases by default)."""
    config, run_dir = project.config, Path(adapter).parent
    name = model_name(config.model.base_model)
    settings = config.export
    cases = []
    if settings.quant.lower() == "auto":
        cases = select_cases(validation_cases(project.dataset_dir) + independent_cases(project.tools_prompt),
                             settings.choice_cases)
    spec = ExportSpec(base_path, adapter, run_dir / "export", project.root, project.dataset_dir, name,
                      config.model.base_model, run_dir.name, planned_version(project.root, name, run_dir.name),
                      settings, n_ctx, config.model.vision, tuple(cases), frozenset(tool_vocabulary(project)))
    try:
        result = export_model(spec, lambda text: reporter.stage("export", text, run_dir),
                              lambda label, done, total: reporter.progress("quantisation", label, done, total))
    finally:
        reporter.finished("quantisation")
    reporter.result("export", result)
    return result


def run_cactus_export(project: Project, base_path: Path, adapter: Path, reporter: Reporter, bits: int = 4,
                      n_ctx: int = 2048, weights_only: bool = False) -> CactusBundle:
    """The Cactus 1.x target: the fused checkpoint handed to `cactus convert`, the bundle placed in assets/models/cactus/."""
    run_dir = Path(adapter).parent
    say = lambda text: reporter.stage("export", text, run_dir)  # noqa: E731
    fused, _ = fused_checkpoint(base_path, adapter, run_dir / "export", say)
    slug = f"{model_name(project.config.model.base_model)}-{run_dir.name}-cq{bits}"
    say(f"cactus convert --bits {bits}: {fused} -> assets/models/cactus/{slug}")
    return export_cactus(fused, project.root, slug, bits, n_ctx, STOP_WORDS, run_dir / "export", weights_only)
