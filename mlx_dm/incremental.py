"""Incremental retraining: what changed in the scenarios since the app's model, and a dataset of the
new files mixed with a replay sample of the old ones (so the adapter does not forget them)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .runs import atomic_write_text


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
    new = [r for r in rows if r["path"] in set(new_paths)]
    old = [r for r in rows if r["path"] not in set(new_paths)]
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
        {"new": sorted(new_paths), "replayed": sorted(r["path"] for r in replay), "rows": len(chosen)}, indent=2) + "\n")
    return out_dir
