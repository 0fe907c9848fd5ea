"""The pipeline's decisions, called as the pipeline calls them: the retraining plan, promote or keep,
and the settings it resolves once."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from mlx_dm.config import load_config
from mlx_dm.errors import ConfigError, ValidationFailed
from mlx_dm.evaluate.playtest_report import PlaytestReport
from mlx_dm.evaluate.validate import Check, ValidationReport
from mlx_dm.pipeline import validate as validate_stage
from mlx_dm.pipeline.plan import plan_retraining
from mlx_dm.pipeline.project import Project
from mlx_dm.pipeline.reporter import Reporter
from mlx_dm.pipeline.settings import dev_profile
from mlx_dm.registry import load_manifest, models_dir_of, promote, stage, update_version


def _version(project: Path, run: str, files: dict[str, str], adapter: bool = True, base: str = "tiny"):
    """A stored version of `base` trained on `files` (path -> sha256), with its adapter."""
    gguf = project / "runs" / run / "model.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(run.encode() * 64)
    adapter_dir = None
    if adapter:
        adapter_dir = project / "runs" / run / "adapters"
        adapter_dir.mkdir()
        (adapter_dir / "adapters.safetensors").write_bytes(b"lora")
        (adapter_dir / "adapter_config.json").write_text("{}")
    return stage(gguf, project, "dm-tiny-gemma3n", "Q4_K_M", base, run, "fp", 2048, adapter_dir=adapter_dir,
                 data_files=files)


def _dataset(project: Path, files: dict[str, str]) -> Path:
    folder = project / ".mlx-dm" / "dataset"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "files.json").write_text(json.dumps(files))
    (folder / "fingerprint.txt").write_text("fp\n")
    rows = [{"path": path, "messages": []} for path in files]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _project(tmp_path: Path) -> Project:
    return Project(load_config(tmp_path).override(model={"base_model": "tiny"}))


def test_plan_trains_in_full_without_an_app_model(tmp_path):
    plan = plan_retraining(_project(tmp_path), _dataset(tmp_path, {"a.md": "1"}), None, False)
    assert plan.action == "full" and plan.changes is None
    with pytest.raises(ConfigError, match="--incremental needs"):
        plan_retraining(_project(tmp_path), _dataset(tmp_path, {"a.md": "1"}), True, False)


def test_plan_stops_trains_incrementally_or_in_full(tmp_path):
    seen = {"a.md": "1", "b.md": "2"}
    promote(tmp_path, _version(tmp_path, "r1", seen).version)
    project = _project(tmp_path)
    same = plan_retraining(project, _dataset(tmp_path, seen), None, False)
    assert same.action == "nothing" and same.version == "v1"
    assert plan_retraining(project, _dataset(tmp_path, seen), None, True).action == "full"  # --force
    added = plan_retraining(project, _dataset(tmp_path, {**seen, "c.md": "3"}), None, False)
    assert added.action == "incremental" and added.changes.new == ["c.md"]
    assert added.config.train.init_adapter.endswith("dm-tiny-gemma3n-v1/adapters")
    assert project.config.train.init_adapter == ""  # the project's own settings are not changed
    assert (added.dataset_dir / "incremental.json").exists() and added.new == 1
    changed = plan_retraining(project, _dataset(tmp_path, {"a.md": "1", "b.md": "9"}), None, False)
    assert changed.action == "full" and changed.changes.changed == ["b.md"]
    assert plan_retraining(project, _dataset(tmp_path, {**seen, "c.md": "3"}), False, False).action == "full"  # --full


def _report(passed: bool) -> ValidationReport:
    return ValidationReport("x.gguf", 1, [], None, None, {}, [Check("tool F1", passed, 0.5, 0.6)])


@pytest.mark.parametrize("passes, plays_well", [(True, True), (False, True), (True, False)])
def test_a_version_is_promoted_only_when_validation_and_its_playtest_pass(tmp_path, monkeypatch, passes, plays_well):
    promote(tmp_path, _version(tmp_path, "r1", {"a.md": "1"}).version)
    candidate = _version(tmp_path, "r2", {"a.md": "1", "b.md": "2"})
    played = []

    def scored(project, gguf, adapter_dir, base_path, out_dir, reporter, previous=None):
        assert previous == project.path(project.current_model()["gguf_path"])  # compared with the app's model
        out_dir.mkdir(parents=True, exist_ok=True)
        return _report(passes), out_dir / "validation.md"

    def playtested(project, gguf, out_dir, reporter, sessions=None):
        played.append((gguf, sessions))
        checks = [Check("no invented tool results", plays_well, 0 if plays_well else 2, 0)]
        return PlaytestReport(gguf.name, "cactus-agent", {}, [], {}, checks), out_dir / "playtest.md"

    monkeypatch.setattr(validate_stage, "validate_gguf", scored)
    monkeypatch.setattr(validate_stage, "playtest_gguf", playtested)
    project = _project(tmp_path)
    promoted = passes and plays_well
    if promoted:
        assert validate_stage.validate_and_promote(project, candidate, None, None, tmp_path / "runs" / "r2" / "v",
                                                   Reporter()).placed.version == "v2"
    else:
        with pytest.raises(ValidationFailed, match="playtest" if passes else "failed validation"):
            validate_stage.validate_and_promote(project, candidate, None, None, tmp_path / "runs" / "r2" / "v", Reporter())
    assert played == ([(project.path(candidate.gguf_path), 3)] if passes else [])  # games only after validation passed
    manifest = load_manifest(models_dir_of(tmp_path))
    assert manifest["current"]["version"] == ("v2" if promoted else "v1")
    assert [v["status"] for v in manifest["versions"]] == (["promoted", "promoted"] if promoted else ["promoted", "rejected"])
    assert [p.name for p in models_dir_of(tmp_path).glob("*.gguf")] == [Path(manifest["current"]["gguf_path"]).name]


def test_a_version_killed_in_its_playtest_is_played_again_not_scored_again(tmp_path, monkeypatch):
    """Validation passed ("scored" in the registry), then the run died in the playtest: the rerun
    starts at the playtest, records "validated", then promotes."""
    candidate = _version(tmp_path, "r1", {"a.md": "1"})
    update_version(tmp_path, candidate, status="scored")
    played = []

    def playtested(project, gguf, out_dir, reporter, sessions=None):
        played.append(load_manifest(models_dir_of(tmp_path))["versions"][0]["status"])
        return PlaytestReport(gguf.name, "cactus-agent", {}, [], {}, [Check("parsed", True, 1, 1)]), out_dir / "p.md"

    monkeypatch.setattr(validate_stage, "validate_gguf", lambda *args, **kwargs: pytest.fail("scored again"))
    monkeypatch.setattr(validate_stage, "playtest_gguf", playtested)
    validate_stage.validate_and_promote(_project(tmp_path), candidate, None, None, tmp_path / "v", Reporter(),
                                        start="playtest")
    manifest = load_manifest(models_dir_of(tmp_path))
    assert played == ["scored"] and manifest["current"]["version"] == "v1"
    assert [v["status"] for v in manifest["versions"]] == ["promoted"]


def test_a_validated_version_is_promoted_without_validating_it_again(tmp_path, monkeypatch):
    candidate = _version(tmp_path, "r1", {"a.md": "1"})
    monkeypatch.setattr(validate_stage, "validate_gguf", lambda *args, **kwargs: pytest.fail("validated again"))
    validate_stage.validate_and_promote(_project(tmp_path), candidate, None, None, tmp_path / "v", Reporter(),
                                        start="promotion")
    assert load_manifest(models_dir_of(tmp_path))["current"]["version"] == "v1"


def test_settings_are_frozen_and_overrides_are_checked_like_flags(tmp_path):
    config = load_config(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.max_steps = 3
    assert config.override(train={"max_steps": 3}).train.max_steps == 3 and config.train.max_steps == 0
    with pytest.raises(ConfigError, match="unknown setting 'max_stepz'"):
        config.override(train={"max_stepz": 3})
    dev = dev_profile(config, {"max_steps": 7})
    assert dev.model.base_model == "tiny" and dev.train.max_seq_length == 256
    assert dev.train.max_steps == config.train.max_steps  # a flag given on the command line wins over the profile


def test_a_rerun_reuses_its_unvalidated_version_and_a_new_export_makes_a_new_one(tmp_path):
    first = _version(tmp_path, "r1", {"a.md": "1"})
    gguf = tmp_path / "runs" / "r1" / "model.gguf"
    again = stage(gguf, tmp_path, "dm-tiny-gemma3n", "Q4_K_M", "tiny", "r1", "fp", 2048)
    assert again.version == first.version == "v1"  # the export was cut short before validation: same version
    promote(tmp_path, "v1")
    assert stage(gguf, tmp_path, "dm-tiny-gemma3n", "Q4_K_M", "tiny", "r1", "fp", 2048).version == "v2"


def test_the_data_side_of_the_agent_tables_counts_each_scenario_once(tmp_path):
    def record(path: str, reply: str) -> str:
        return json.dumps({"path": path, "messages": [{"role": "user", "content": "I look."},
                                                      {"role": "assistant", "content": reply}]})
    lines = [record("a.md", "[roll: perception]"), record("a.md#renamed-1", "[roll: perception]"),
             record("a.md", "[roll: perception]"), record("b.md", "[heal: Mira, 1d8]")]  # a copy, a balancing repeat
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "valid.jsonl").write_text(record("c.md", "The door opens.") + "\n")
    assert validate_stage._training_texts(tmp_path) == ["[roll: perception]", "[heal: Mira, 1d8]", "The door opens."]


def test_each_promoted_version_brings_its_grammar_and_takes_the_last_one_away(tmp_path):
    from mlx_dm.data.grammar import gbnf
    from mlx_dm.registry import rollback

    models = models_dir_of(tmp_path)
    for run in ("r1", "r2"):
        promote(tmp_path, _version(tmp_path, run, {"a.md": run}).version)
    assert [p.name for p in models.glob("*.gbnf")] == ["dm-tiny-gemma3n-v2.gbnf"]
    screen = json.loads((models / "integration.json").read_text())
    assert screen["tools"]["grammar"] == "assets/models/dm-tiny-gemma3n-v2.gbnf"
    assert (models / "dm-tiny-gemma3n-v2.gbnf").read_text() == gbnf(screen["tools"]["supported"])
    rollback(tmp_path)
    assert [p.name for p in models.glob("*.gbnf")] == ["dm-tiny-gemma3n-v1.gbnf"]


@pytest.mark.parametrize("killed_writing", ["dm-tiny-gemma3n-v2-Q4_K_M.gguf", "dm-tiny-gemma3n-v2.gbnf", "llama-rn.ts",
                                            "integration.json", "manifest.json"])
def test_a_promotion_killed_inside_any_writer_leaves_the_app_whole_and_the_rerun_completes_it(tmp_path, killed_writing):
    """SIGKILL (no `finally` runs) with the new file written beside its target: the app keeps a whole
    model its files name, the rerun sweeps the half-written file and finishes the promotion."""
    import subprocess
    import sys

    from mlx_dm.files import KILL_WRITING, sha256_of

    models = models_dir_of(tmp_path)
    promote(tmp_path, _version(tmp_path, "r1", {"a.md": "1"}).version)
    _version(tmp_path, "r2", {"a.md": "2"})
    command = [sys.executable, "-m", "mlx_dm", "-C", str(tmp_path), "models", "promote", "v2", "--force"]
    killed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, KILL_WRITING: killed_writing})
    assert killed.returncode == 137 and "SIGKILL" in killed.stderr, killed.stdout + killed.stderr  # the supervisor says so
    assert list(models.glob(f".{killed_writing}.*.partial"))  # what a kill leaves
    current = load_manifest(models)["current"]
    assert current["version"] == "v1" and sha256_of(tmp_path / current["gguf_path"]) == current["sha256"]
    for asset in re.findall(r"require\('\.\./(assets/models/[^']+)'\)", (models / "llama-rn.ts").read_text()):
        assert (tmp_path / asset).is_file()  # the app's lines name a whole model, old or new
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not [p for p in tmp_path.rglob("*.partial")]
    current = load_manifest(models)["current"]
    assert current["version"] == "v2" and sha256_of(tmp_path / current["gguf_path"]) == current["sha256"]
    assert sorted(p.name for p in models.glob("*.gguf")) == ["dm-tiny-gemma3n-v2-Q4_K_M.gguf"]
    assert [p.name for p in models.glob("*.gbnf")] == ["dm-tiny-gemma3n-v2.gbnf"]
    assert "dm-tiny-gemma3n-v2-Q4_K_M.gguf" in (models / "llama-rn.ts").read_text()


def test_a_tool_list_that_crowds_short_rows_is_warned_about(tmp_path):
    from mlx_dm.pipeline.train import warn_if_the_tool_list_crowds_the_rows

    class Said(Reporter):
        def __init__(self):
            self.warnings = []

        def warn(self, text: str) -> None:
            self.warnings.append(text)

    said = Said()
    for seq, tools in ((512, True), (2048, True), (512, False)):
        config = load_config(tmp_path).override("test", data={"tools_in_prompt": tools}, train={"max_seq_length": seq})
        warn_if_the_tool_list_crowds_the_rows(config, said)
    (warning,) = said.warnings
    assert "of the 512 tokens of every row" in warning and "max_seq_length" in warning
