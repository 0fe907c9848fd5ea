"""The model registry in assets/models: stored versions and the one the app uses.

- `stage`: a new export goes to `assets/models/versions/<name>-v<N>/` (GGUF, adapter, data files).
- `promote`: after validation, its GGUF is copied next to the app (`assets/models/<file>.gguf`),
  `manifest.json` and `cactus-config.ts/json` switch to it; the previous one is kept in versions/.
- `rollback`: promote the version before the current one again. `prune_versions`: bounded disk.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .app_config import write_app_config
from .data.grammar import app_grammar
from .config import load_config
from .data.profiles import tools_prompt
from .errors import ModelError
from .files import atomic_path, atomic_write_json, sha256_of, write_dir_atomically

VERSIONS = "versions"  # assets/models/versions/<name>-v<N>/: every stored version (not bundled by the app)


@dataclass
class PlacedModel:
    name: str
    version: str
    quant: str
    gguf_path: str  # relative to the project root
    mmproj_path: str | None
    sha256: str
    size_bytes: int
    base_model: str
    run: str
    data_fingerprint: str
    n_ctx: int
    created: str
    mmproj_sha256: str | None = None
    mmproj_size_bytes: int = 0

    @property
    def file_name(self) -> str:
        return Path(self.gguf_path).name


def next_version(models_dir: Path, name: str) -> str:
    """One more than any version of `name` in assets/models or its versions/ store."""
    pattern = re.compile(rf"{re.escape(name)}-v(\d+)(?:-|$)")
    names = [p.name for p in Path(models_dir).glob(f"{name}-v*")]
    names += [p.name for p in (Path(models_dir) / VERSIONS).glob(f"{name}-v*")] if (Path(models_dir) / VERSIONS).is_dir() else []
    numbers = [int(m.group(1)) for n in names if (m := pattern.match(n))]
    return f"v{max(numbers, default=0) + 1}"


def models_dir_of(project_dir: Path) -> Path:
    return Path(project_dir) / "assets" / "models"


def stage(gguf: Path, project_dir: Path, name: str, quant: str, base_model: str, run: str, data_fingerprint: str,
          n_ctx: int, mmproj: Path | None = None, adapter_dir: Path | None = None,
          data_files: dict[str, str] | None = None, version: str | None = None) -> PlacedModel:
    """Store a new version under assets/models/versions/<name>-v<N>/ (written atomically); `version`:
    the one `planned_version` gave the export (its files carry it), when still free. The app's
    files are not touched: `promote` does that once the version has passed validation."""
    models_dir = models_dir_of(project_dir)
    (models_dir / VERSIONS).mkdir(parents=True, exist_ok=True)
    already = staged_earlier(project_dir, run, sha256_of(gguf))
    if already is not None:  # a resumed run: the version its interrupted export stored, not a second one
        return already
    if version is None or (models_dir / VERSIONS / f"{name}-{version}").exists():
        version = next_version(models_dir, name)
    folder = models_dir / VERSIONS / f"{name}-{version}"
    file_name = f"{name}-{version}-{quant}.gguf"
    mmproj_name = f"{name}-{version}-mmproj.gguf" if mmproj is not None else None

    def write(tmp: Path) -> None:
        shutil.copyfile(gguf, tmp / file_name)
        if mmproj is not None:
            shutil.copyfile(mmproj, tmp / mmproj_name)
        if adapter_dir is not None:  # the adapter travels with its GGUF: retraining continues from it
            (tmp / "adapters").mkdir()
            for item in Path(adapter_dir).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / "adapters" / item.name)
        if data_files is not None:
            (tmp / "data-files.json").write_text(json.dumps(data_files, indent=2, sort_keys=True) + "\n")

    write_dir_atomically(folder, write)
    stored = folder / file_name
    placed = PlacedModel(name, version, quant, str(stored.relative_to(project_dir)),
                         str((folder / mmproj_name).relative_to(project_dir)) if mmproj_name else None,
                         sha256_of(stored), stored.stat().st_size, base_model, run, data_fingerprint, n_ctx,
                         time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if mmproj_name:
        placed.mmproj_sha256 = sha256_of(folder / mmproj_name)
        placed.mmproj_size_bytes = (folder / mmproj_name).stat().st_size
    update_version(project_dir, placed, status="candidate")
    return placed


def planned_version(project_dir: Path, name: str, run: str) -> str:
    """The version an export of `run` will be stored as: the one an interrupted export of it already
    staged (a resumed run), else the next free one. Known before the files are made, so the GGUF's
    general.name can carry it."""
    for entry in reversed(load_manifest(models_dir_of(project_dir))["versions"]):
        if entry.get("run") == run and entry.get("status") == "candidate" and entry.get("name", name) == name:
            return entry["version"]
    return next_version(models_dir_of(project_dir), name)


def staged_earlier(project_dir: Path, run: str, sha256: str) -> PlacedModel | None:
    """The version that `run` already stored with this exact GGUF and that was never validated (its
    export or validation was cut short), if its files are all there. A version that was validated,
    promoted or rejected keeps its history: exporting again makes a new one."""
    for entry in load_manifest(models_dir_of(project_dir))["versions"]:
        stored = Path(project_dir) / entry["gguf_path"]
        if (entry.get("run") == run and entry.get("sha256") == sha256 and entry.get("status") == "candidate"
                and stored.is_file()):
            return placed_from_entry(entry)
    return None


def version_of_run(project_dir: Path, run: str) -> dict | None:
    """The newest manifest entry stored from `run` (its status says how far the pipeline got)."""
    entries = [e for e in load_manifest(models_dir_of(project_dir))["versions"] if e.get("run") == run]
    return entries[-1] if entries else None


def load_manifest(models_dir: Path) -> dict:
    path = Path(models_dir) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("versions", [])
    manifest.setdefault("history", [])  # promoted versions, oldest first; rollback walks back along it
    manifest.setdefault("current", None)
    return manifest


def update_version(project_dir: Path, placed: PlacedModel, **extra) -> dict:
    models_dir = models_dir_of(project_dir)
    manifest = load_manifest(models_dir)
    entries = {v["version"]: v for v in manifest["versions"]}
    entry = {**entries.get(placed.version, {}), **asdict(placed), **extra}
    entries[placed.version] = entry
    manifest["versions"] = sorted(entries.values(), key=lambda v: int(v["version"][1:]))
    atomic_write_json(models_dir / "manifest.json", manifest)
    return entry


def find_version(project_dir: Path, version: str) -> dict:
    manifest = load_manifest(models_dir_of(project_dir))
    for entry in manifest["versions"]:
        if entry["version"] == version or f"{entry['name']}-{entry['version']}" == version:
            return entry
    known = ", ".join(v["version"] for v in manifest["versions"]) or "none"
    raise ModelError(f"no model version {version} in assets/models (known: {known})", "see `mlx-dm models list`")


def placed_from_entry(entry: dict) -> PlacedModel:
    # A manifest written by an older mlx-dm lacks the newer fields (they have defaults).
    return PlacedModel(**{f.name: entry[f.name] for f in fields(PlacedModel) if f.name in entry})


def promote(project_dir: Path, version: str) -> PlacedModel:
    """Make a stored version the app's model: its GGUF in assets/models, the manifest and the Cactus config.

    Each file is replaced atomically, the GGUF first, so a kill at any point leaves the app either
    on the old model or on the new one. The previous app GGUF is removed from assets/models (the
    app bundles that folder); its copy stays in versions/ for a rollback."""
    models_dir = models_dir_of(project_dir)
    entry = find_version(project_dir, version)
    stored = Path(project_dir) / entry["gguf_path"]
    if not stored.is_file() or sha256_of(stored) != entry["sha256"]:
        raise ModelError(f"the stored file of {entry['version']} is missing or changed ({stored})",
                         "export again, or roll back to another version (`mlx-dm models list`)")
    app_file = models_dir / Path(stored).name
    if not app_file.exists():
        _copy_atomic(stored, app_file)
    placed = placed_from_entry({**entry, "gguf_path": str(app_file.relative_to(project_dir))})
    if entry.get("mmproj_path"):
        mmproj_app = models_dir / Path(entry["mmproj_path"]).name
        if not mmproj_app.exists():
            _copy_atomic(Path(project_dir) / entry["mmproj_path"], mmproj_app)
        placed.mmproj_path = str(mmproj_app.relative_to(project_dir))
    manifest = load_manifest(models_dir)
    previous = manifest["current"]
    manifest["current"] = asdict(placed)
    manifest["history"] = [v for v in manifest["history"] if v != placed.version] + [placed.version]
    for item in manifest["versions"]:
        if item["version"] == placed.version:
            item["status"] = "promoted"
    config = load_config(project_dir)
    data = config.data
    write_app_config(models_dir, placed, data.agent_tools, tools_prompt(data.agent_tools, data.tools_in_prompt),
                     app_grammar(config))
    atomic_write_json(models_dir / "manifest.json", manifest)
    if previous and previous["version"] != placed.version:
        kept = models_dir / VERSIONS / f"{previous['name']}-{previous['version']}"
        for key in ("gguf_path", "mmproj_path"):
            old = Path(project_dir) / previous[key] if previous.get(key) else None
            # Only when versions/ holds its copy (a model placed by an older mlx-dm has none).
            if old is not None and old.parent == models_dir and old.exists() and (kept / old.name).is_file():
                old.unlink()
    return placed


def rollback(project_dir: Path) -> PlacedModel:
    """Back to the version promoted before the current one."""
    manifest = load_manifest(models_dir_of(project_dir))
    if len(manifest["history"]) < 2:
        raise ModelError("there is no earlier promoted version to roll back to",
                         "`mlx-dm models list` shows the versions; `mlx-dm models promote vN` picks one")
    current, previous = manifest["history"][-1], manifest["history"][-2]
    placed = promote(project_dir, previous)
    manifest = load_manifest(models_dir_of(project_dir))
    manifest["history"] = [v for v in manifest["history"] if v != current]
    for item in manifest["versions"]:
        if item["version"] == current:
            item["status"] = "rolled back"
    atomic_write_json(models_dir_of(project_dir) / "manifest.json", manifest)
    return placed


def prune_versions(project_dir: Path, keep: int) -> list[str]:
    """Delete stored versions beyond the newest `keep`, never the current one or the rollback target."""
    models_dir = models_dir_of(project_dir)
    manifest = load_manifest(models_dir)
    protected = set(manifest["history"][-2:])
    newest = [v["version"] for v in manifest["versions"]][-keep:] if keep > 0 else []
    removed = []
    for entry in list(manifest["versions"]):
        if entry["version"] in protected or entry["version"] in newest:
            continue
        folder = models_dir / VERSIONS / f"{entry['name']}-{entry['version']}"
        if folder.exists():
            shutil.rmtree(folder)
        manifest["versions"].remove(entry)
        manifest["history"] = [v for v in manifest["history"] if v != entry["version"]]
        removed.append(entry["version"])
    if removed:
        atomic_write_json(models_dir / "manifest.json", manifest)
    return removed


def _copy_atomic(source: Path, target: Path) -> None:
    if target.exists():
        raise FileExistsError(f"{target} exists; refusing to overwrite another version")
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
