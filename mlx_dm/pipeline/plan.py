"""The retraining plan: what changed in the scenarios since the app's model, and so nothing to do, a
full training, or an incremental one (the new files mixed with a replay sample of the old ones, so
the adapter does not forget them, continuing from the app's adapter)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..data.augment import original_path
from ..errors import ConfigError
from ..files import atomic_write_text
from ..registry import find_version
from .project import Project


@dataclass
class DataChanges:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        return not (self.new or self.changed or self.removed)

    @property
    def additions_only(self) -> bool:
        return bool(self.new) and not (self.changed or self.removed)

    def summary(self) -> str:
        if self.unchanged:
            return "no scenario changed"
        parts = [f"{len(items)} {label}" for label, items in (("new", self.new), ("changed", self.changed),
                                                                ("removed", self.removed)) if items]
        return ", ".join(parts) + " since the app's model"


def data_changes(seen: dict[str, str], now: dict[str, str]) -> DataChanges:
    """Compare the files a model version saw (path -> sha256 of the cleaned text) with the dataset's."""
    return DataChanges(new=sorted(set(now) - set(seen)),
                       changed=sorted(p for p in set(now) & set(seen) if now[p] != seen[p]),
                       removed=sorted(set(seen) - set(now)))


def incremental_dataset(dataset_dir: Path, out_dir: Path, new_paths: list[str], replay_fraction: float = 0.5,
                        seed: int = 0) -> Path:
    """`dataset_dir` with its training split cut to the new scenarios plus a seeded replay sample of the old."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (dataset_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    new = [r for r in rows if original_path(r["path"]) in set(new_paths)]  # a renamed copy goes with its scenario
    old = [r for r in rows if original_path(r["path"]) not in set(new_paths)]
    replay = random.Random(seed).sample(old, min(len(old), max(len(new), round(len(old) * replay_fraction))))
    chosen = sorted(new + replay, key=lambda r: r["path"])
    atomic_write_text(out_dir / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen))
    for name in ("valid.jsonl", "vocabulary.json", "files.json", "stats.json"):
        if (dataset_dir / name).exists():
            shutil.copyfile(dataset_dir / name, out_dir / name)
    base = (dataset_dir / "fingerprint.txt").read_text().strip()
    digest = hashlib.sha256(f"{base}\0incremental\0{replay_fraction}\0{seed}\0{sorted(new_paths)}".encode()).hexdigest()
    atomic_write_text(out_dir / "fingerprint.txt", digest + "\n")
    atomic_write_text(out_dir / "incremental.json", json.dumps(
        {"new": sorted(new_paths), "replayed": sorted({original_path(r["path"]) for r in replay}), "rows": len(chosen)}, indent=2) + "\n")
    return out_dir


@dataclass(frozen=True)
class Plan:
    action: str  # "nothing", "full" or "incremental"
    dataset_dir: Path  # what to train on
    config: Config  # the settings to train with (an incremental run starts from the app's adapter)
    changes: DataChanges | None = None  # against the app's model, when it has a record of its data
    version: str | None = None  # the app's model
    new: int = 0
    replayed: int = 0


def plan_retraining(project: Project, dataset_dir: Path, incremental: bool | None, force: bool) -> Plan:
    """Compare the scenarios with those the app's model saw: nothing to do, incremental, or full.

    `incremental` None decides by itself: incremental when scenarios were only added and the app's
    model has its adapter; `force` trains even when nothing changed."""
    config = project.config
    current = project.current_model()
    same_base = current is not None and current["base_model"] == config.model.base_model
    stored = project.path(find_version(project.root, current["version"])["gguf_path"]).parent if current else None
    seen_file = stored / "data-files.json" if stored else None
    if not same_base or seen_file is None or not seen_file.exists():
        if incremental:
            raise ConfigError("--incremental needs an app model trained on this base with its adapter and data record",
                              "run without --incremental (a full training)")
        return Plan("full", dataset_dir, config)
    changes = data_changes(json.loads(seen_file.read_text()), json.loads((Path(dataset_dir) / "files.json").read_text()))
    version = current["version"]
    if changes.unchanged and not force:
        return Plan("nothing", dataset_dir, config, changes, version)
    adapter = stored / "adapters"
    if incremental is None:
        incremental = changes.additions_only and (adapter / "adapters.safetensors").exists()
    if not incremental:
        return Plan("full", dataset_dir, config, changes, version)
    if not (adapter / "adapters.safetensors").exists():
        raise ConfigError(f"{version} has no stored adapter to continue from", "train in full: --full")
    out = incremental_dataset(dataset_dir, Path(dataset_dir).parent / "dataset-incremental", changes.new,
                              config.train.replay_fraction, config.data.seed)
    record = json.loads((out / "incremental.json").read_text())
    return Plan("incremental", out, config.override("the incremental plan", train={"init_adapter": str(adapter)}),
                changes, version, len(record["new"]), len(record["replayed"]))
