"""Model versions in assets/models: stage, promote, rollback, prune; the app's files change only on promote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_dm.errors import ModelError
from mlx_dm.registry import load_manifest, promote, prune_versions, rollback, stage


def staged(project: Path, tmp_path: Path, content: bytes):
    source = tmp_path / f"export-{content.decode()}.gguf"
    source.write_bytes(content)
    adapter = tmp_path / f"adapter-{content.decode()}"
    adapter.mkdir()
    (adapter / "adapters.safetensors").write_bytes(b"weights-" + content)
    return stage(source, project, "dm", "Q4_K_M", "tiny", "run-" + content.decode(), "fp", 2048,
                 adapter_dir=adapter, data_files={"a.md": "0" * 64})


def app_files(project: Path) -> list[str]:
    return sorted(p.name for p in (project / "assets" / "models").iterdir() if p.is_file())


def test_stage_keeps_the_app_files_and_promote_switches_them(tmp_path):
    project = tmp_path / "project"
    first = staged(project, tmp_path, b"one")
    assert first.version == "v1" and first.gguf_path == "assets/models/versions/dm-v1/dm-v1-Q4_K_M.gguf"
    assert app_files(project) == ["manifest.json"]
    assert load_manifest(project / "assets" / "models")["current"] is None
    promote(project, "v1")
    assert app_files(project) == ["cactus-config.json", "cactus-config.ts", "dm-v1-Q4_K_M.gguf", "dm-v1.gbnf",
                                  "integration.json", "llama-rn.ts", "manifest.json"]
    second = staged(project, tmp_path, b"two")
    assert second.version == "v2" and json.loads((project / "assets/models/cactus-config.json").read_text())["modelFile"] == "dm-v1-Q4_K_M.gguf"
    promote(project, "v2")
    # The app bundles assets/models: only the current GGUF is there; v1 stays in versions/ for a rollback.
    assert "dm-v1-Q4_K_M.gguf" not in app_files(project) and "dm-v2-Q4_K_M.gguf" in app_files(project)
    assert (project / "assets/models/versions/dm-v1/adapters/adapters.safetensors").read_bytes() == b"weights-one"
    assert json.loads((project / "assets/models/versions/dm-v2/data-files.json").read_text()) == {"a.md": "0" * 64}
    manifest = load_manifest(project / "assets" / "models")
    assert manifest["current"]["version"] == "v2" and manifest["history"] == ["v1", "v2"]
    assert manifest["current"]["gguf_path"] == "assets/models/dm-v2-Q4_K_M.gguf"


def test_rollback_restores_the_previous_model_and_config(tmp_path):
    project = tmp_path / "project"
    for content in (b"one", b"two"):
        promote(project, staged(project, tmp_path, content).version)
    placed = rollback(project)
    assert placed.version == "v1"
    assert (project / "assets/models/dm-v1-Q4_K_M.gguf").read_bytes() == b"one"
    assert "dm-v2-Q4_K_M.gguf" not in app_files(project)
    config = json.loads((project / "assets/models/cactus-config.json").read_text())
    assert config["modelFile"] == "dm-v1-Q4_K_M.gguf"
    manifest = load_manifest(project / "assets" / "models")
    assert manifest["history"] == ["v1"] and {v["version"]: v["status"] for v in manifest["versions"]}["v2"] == "rolled back"
    with pytest.raises(ModelError, match="no earlier promoted version"):
        rollback(project)


def test_promote_refuses_a_changed_or_unknown_version(tmp_path):
    project = tmp_path / "project"
    placed = staged(project, tmp_path, b"one")
    (project / placed.gguf_path).write_bytes(b"tampered")
    with pytest.raises(ModelError, match="missing or changed"):
        promote(project, "v1")
    with pytest.raises(ModelError, match="no model version v9"):
        promote(project, "v9")
    assert load_manifest(project / "assets" / "models")["current"] is None


def test_prune_keeps_the_newest_the_current_and_the_rollback_target(tmp_path):
    project = tmp_path / "project"
    for index, content in enumerate((b"one", b"two", b"three", b"four", b"five")):
        placed = staged(project, tmp_path, content)
        if index < 2:
            promote(project, placed.version)
    removed = prune_versions(project, keep=2)
    assert removed == ["v3"]  # v1, v2: current and previous; v4, v5: the newest two
    assert sorted(p.name for p in (project / "assets/models/versions").iterdir()) == ["dm-v1", "dm-v2", "dm-v4", "dm-v5"]


def test_data_changes_and_incremental_dataset(tmp_path):
    from mlx_dm.pipeline.plan import data_changes, incremental_dataset

    changes = data_changes({"a.md": "1", "b.md": "2", "c.md": "3"}, {"a.md": "1", "b.md": "9", "d.md": "4"})
    assert (changes.new, changes.changed, changes.removed) == (["d.md"], ["b.md"], ["c.md"])
    assert not changes.additions_only and data_changes({"a.md": "1"}, {"a.md": "1", "e.md": "5"}).additions_only
    assert data_changes({"a.md": "1"}, {"a.md": "1"}).unchanged
    dataset = tmp_path / "ds"
    dataset.mkdir()
    rows = [{"path": f"s{i}.md", "text": "x"} for i in range(10)]
    (dataset / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (dataset / "valid.jsonl").write_text("")
    (dataset / "fingerprint.txt").write_text("abc\n")
    out = incremental_dataset(dataset, tmp_path / "inc", ["s9.md"], replay_fraction=0.5, seed=1)
    chosen = [json.loads(line)["path"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert "s9.md" in chosen and len(chosen) == 1 + 4  # the new file + half of the 9 old ones (rounded)
    assert chosen == [json.loads(line)["path"] for line in
                      (incremental_dataset(dataset, tmp_path / "again", ["s9.md"], 0.5, 1) / "train.jsonl").read_text().splitlines()]
    assert (out / "fingerprint.txt").read_text() != "abc\n"


def test_a_writer_sweeps_the_half_written_files_a_killed_run_left(tmp_path):
    """#43: a kill -9 skips atomic_path's cleanup; the next writer of the project removes what it
    left (and says so), never a file of the user's."""
    import subprocess
    import sys

    models = tmp_path / "assets" / "models"
    export = tmp_path / "runs" / "20261204-000000-train" / "export"
    for folder in (models, export, tmp_path / "ai-training"):
        folder.mkdir(parents=True)
    stale = [models / ".dm-v1-Q4_K_M.gguf.k2j4_x9a.partial", models / ".manifest.json.a1B2c3D4.partial",
             export / ".dm-f16.gguf.zz9yx8w7.partial"]
    for path in stale:
        path.write_bytes(b"half")
    (export / ".adapters.tmp-4242").mkdir()
    kept = [models / ".my-notes.partial", models / "mine.gguf.partial", tmp_path / "ai-training" / ".x.abcdefgh.partial"]
    for path in kept:
        path.write_text("the user's")
    result = subprocess.run([sys.executable, "-m", "mlx_dm", "-C", str(tmp_path), "data", "build"], capture_output=True,
                            text=True, timeout=300)
    assert "removed 4 half-written file(s) an interrupted run left" in result.stdout, result.stdout + result.stderr
    assert not any(path.exists() for path in stale) and not (export / ".adapters.tmp-4242").exists()
    assert all(path.read_text() == "the user's" for path in kept)
