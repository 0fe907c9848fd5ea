"""The whole job, as `npm run train` runs it: data -> plan -> train -> export -> validate -> promote.

A rerun after a failure or a kill picks up at the first stage not finished (resume.py); the app's
files change only at promotion, after validation passed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..evaluate.validate import raise_if_failed
from ..export.gguf import check_export_types
from ..hardware import Hardware
from ..model.hub import TINY_BASES
from ..registry import placed_from_entry
from ..runs import attach_log_file, new_run
from .data import build
from .export import run_export
from .plan import Plan, plan_retraining
from .project import Project
from .reporter import Reporter
from .resume import finished_training
from .settings import dev_validation
from .train import run_training, training_key
from .validate import Promoted, validate_and_promote, validate_gguf


@dataclass(frozen=True)
class RunOptions:
    resume: bool | None = None  # None: resume what can be resumed; False: train anew
    incremental: bool | None = None  # None: when scenarios were only added
    force: bool = False  # train even when no scenario changed
    n_ctx: int = 2048
    validate_only: bool = False


@dataclass(frozen=True)
class RunOutcome:
    action: str  # "validated", "nothing to do" or "promoted"
    plan: Plan | None = None
    promoted: Promoted | None = None


def run(project: Project, options: RunOptions, hardware: Hardware, reporter: Reporter) -> RunOutcome:
    reporter.stage("data", "parsing and validating the scenarios")
    built = build(project.config)
    reporter.result("dataset", built)
    if options.validate_only:
        return validate_current(project, reporter)
    check_export_types(project.config.export.quant, project.config.export.candidates)  # before hours of training
    plan = plan_retraining(project, built.path, options.incremental, options.force)
    reporter.result("plan", plan)
    if plan.action == "nothing":
        return RunOutcome("nothing to do", plan)
    project = Project(plan.config)
    base_path = project.base()
    resumed = None
    if options.resume is not False:
        key = training_key(plan.config, plan.dataset_dir, base_path, hardware)
        resumed = finished_training(project.runs_dir, key, project.root)
    if resumed is not None:
        attach_log_file(resumed.run_dir / "run.log")
        reporter.note(f"training already finished in {resumed.run_dir}; resuming at {resumed.stage}")
        adapter = resumed.adapter_dir
    else:
        reporter.stage("train", f"on {base_path}")
        adapter = run_training(plan.config, plan.dataset_dir, base_path, options.resume, hardware, reporter).result.adapter_dir
    if resumed is None or resumed.stage == "export":
        placed = run_export(project, base_path, adapter, reporter, options.n_ctx).placed
    else:
        placed = placed_from_entry(resumed.version)
        reporter.note(f"export done earlier: {placed.version} ({placed.gguf_path})")
    promoted = validate_and_promote(project, placed, adapter, base_path, adapter.parent / "validation", reporter,
                                    start=resumed.stage if resumed is not None and resumed.stage != "export"
                                    else "validation")
    return RunOutcome("promoted", plan, promoted)


def validate_current(project: Project, reporter: Reporter) -> RunOutcome:
    """`run --validate-only`: the data (done by the caller) and the app's current model, no training."""
    current = project.current_model()
    if current is None:
        reporter.note("no model in assets/models yet: data validated only")
        return RunOutcome("validated")
    gguf = project.path(current["gguf_path"])
    adapter, base_path = project.run_of_model(current)
    if current.get("base_model") in TINY_BASES and project.config.validate.quality_thresholds:
        # A model from `--dev` has random weights: its scores say the route works, not that it is good.
        reporter.note(f"{gguf.name} is the built-in tiny model (from --dev): scores reported without quality thresholds")
        project = Project(dev_validation(project.config))
    reporter.stage("validation", f"scoring {gguf.name}")
    report, path = validate_gguf(project, gguf, adapter, base_path, new_run(project.runs_dir, "validate").path,
                                 reporter, project.previous_model(gguf))
    raise_if_failed(report, path)
    return RunOutcome("validated")
