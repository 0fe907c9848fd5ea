"""The export stage, named after the base it came from: fuse, convert, quantise, check, store a version."""

from __future__ import annotations

from pathlib import Path

from ..data.render import STOP_WORDS
from ..export.cactus import CactusBundle, export_cactus
from ..export.pipeline import ExportResult, ExportSpec, export_model, fused_checkpoint
from .project import Project
from .reporter import Reporter
from .settings import default_quant, model_name


def run_export(project: Project, base_path: Path, adapter: Path, reporter: Reporter, quant: str | None = None,
               n_ctx: int = 2048, size_budget_gb: float = 2.0) -> ExportResult:
    """Export `adapter` (trained on `base_path`) into the run folder it came from, and store it as a version."""
    config = project.config
    run_dir = Path(adapter).parent
    spec = ExportSpec(base_path, adapter, run_dir / "export", project.root, project.dataset_dir,
                      model_name(config.model.base_model), config.model.base_model, run_dir.name,
                      quant or default_quant(base_path), n_ctx, config.model.vision,
                      size_budget_gb * 1e9 if size_budget_gb > 0 else None)
    result = export_model(spec, say=lambda text: reporter.stage("export", text, run_dir))
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
