"""Training checkpoints: adapter weights, optimizer state, schedule step, data position.

The random state (LoRA dropout) is reseeded from (seed, step) before every step, so the step
number restores it exactly.

A checkpoint is a folder written under a temporary name and renamed into place, so a kill at
any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from ..files import write_dir_atomically

STATE_FILE = "train_state.json"


def save_adapter(folder: Path, model, adapter_config: dict) -> None:
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(folder / "adapters.safetensors"), weights)
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")


def copy_adapter(source: Path, target: Path) -> None:
    for name in ("adapters.safetensors", "adapter_config.json"):
        shutil.copy2(source / name, target / name)


def save_checkpoint(checkpoints_dir: Path, step: int, model, optimizer, adapter_config: dict, state: dict) -> Path:
    def write(tmp: Path) -> None:
        save_adapter(tmp, model, adapter_config)
        optimizer_state = dict(tree_flatten(optimizer.state))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), {k: v for k, v in optimizer_state.items()
                                                                  if isinstance(v, mx.array)})
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "saved_at": time.time()}, indent=2) + "\n")

    return write_dir_atomically(Path(checkpoints_dir) / f"step-{step:07d}", write)


def load_checkpoint(folder: Path, model, optimizer) -> dict:
    model.load_weights(str(folder / "adapters.safetensors"), strict=False)
    saved = mx.load(str(folder / "optimizer.safetensors"))
    optimizer.init(model.trainable_parameters())
    for key, value in saved.items():
        _set_path(optimizer.state, key.split("."), value)
    return json.loads((folder / "state.json").read_text())


def _set_path(tree, parts: list[str], value) -> None:
    """Set a leaf in a nested dict/list tree in place (lists may be partly empty dicts)."""
    for part in parts[:-1]:
        tree = tree[int(part)] if isinstance(tree, list) else tree.setdefault(part, {})
    if isinstance(tree, list):
        tree[int(parts[-1])] = value
    else:
        tree[parts[-1]] = value


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    if not Path(checkpoints_dir).is_dir():
        return []
    return sorted(p for p in Path(checkpoints_dir).iterdir() if p.is_dir() and p.name.startswith("step-"))


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    """Keep the last ``keep`` checkpoints (the best adapter has its own folder, best/)."""
    existing = list_checkpoints(checkpoints_dir)
    for folder in existing[: max(0, len(existing) - keep)]:
        shutil.rmtree(folder)


def read_run_state(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
