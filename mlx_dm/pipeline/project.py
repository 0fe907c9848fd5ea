"""A project: its folders (scenarios, dataset, runs, assets/models), its model registry, and the
base models and adapters its versions came from. Every stage finds its paths here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..data.profiles import tools_prompt
from ..errors import ExportError, MlxDmError, ModelError
from ..model.hub import resolve_base
from ..registry import find_version, load_manifest, models_dir_of


@dataclass(frozen=True)
class Project:
    config: Config

    @property
    def root(self) -> Path:
        return Path(self.config.project_dir)

    @property
    def models_dir(self) -> Path:
        return models_dir_of(self.root)

    @property
    def runs_dir(self) -> Path:
        return self.config.path(self.config.runs_dir)

    @property
    def dataset_dir(self) -> Path:
        return self.config.path(self.config.data.dataset_dir)

    @property
    def scenarios_dir(self) -> Path:
        return self.config.path(self.config.data.scenarios_dir)

    @property
    def tools_prompt(self) -> str:
        """The tool list the system text carries ("" unless data.tools_in_prompt): every case scored
        and every conversation rendered must carry what training saw."""
        return tools_prompt(self.config.data.agent_tools, self.config.data.tools_in_prompt)

    def tool_grammar(self, folder: Path) -> Path | None:
        """The app's tool grammar (data/grammar.app_grammar), written to `folder`, which every GGUF that
        validation, the playtest and chat decode goes through, as the phone's does; None when
        validate.grammar is off (to compare) or the agent has no tools."""
        from ..data.grammar import app_grammar, write_grammar

        text = app_grammar(self.config) if self.config.validate.grammar else ""
        return write_grammar(folder, text) if text else None

    def path(self, relative: str) -> Path:
        return self.config.path(relative)

    def manifest(self) -> dict:
        return load_manifest(self.models_dir)

    def current_model(self) -> dict | None:
        """The manifest entry of the model the app uses now, or None when assets/models has none."""
        return self.manifest()["current"]

    def model_file(self, given: Path | None) -> Path:
        """`given`, or the GGUF the app uses now (a command's default --model)."""
        if given is not None:
            return given
        current = self.current_model()
        if current is None:
            raise ModelError("no model given and none in assets/models", "pass --model FILE.gguf, or train first (`npm run train`)")
        return self.path(current["gguf_path"])

    def gguf_file(self, given: Path | None) -> Path:
        """model_file(), checked to be a file: what validate and playtest score."""
        model = self.model_file(given)
        if not model.is_file():
            raise ModelError(f"no GGUF file at {model}", "pass --model with a .gguf from assets/models (see manifest.json)")
        return model

    def base(self, name: str | None = None) -> Path:
        """The folder of a base model (the configured one by default): built, local, or downloaded once."""
        return resolve_base(name or self.config.model.base_model, self.root, self.scenarios_dir)

    def latest_adapter(self) -> Path:
        candidates = sorted(self.runs_dir.glob("*/adapters/adapters.safetensors")) if self.runs_dir.is_dir() else []
        if not candidates:
            raise ExportError(f"no trained adapter in {self.runs_dir}", "train first: `mlx-dm train` (or `npm run train`)")
        return candidates[-1].parent

    def base_of_adapter(self, adapter_dir: Path, base: str | None = None) -> str:
        """The base an adapter was trained on: `base`, else its run's config.json, else the configured one."""
        run_config = Path(adapter_dir).parent / "config.json"
        if base is None and run_config.exists():
            base = json.loads(run_config.read_text())["model"]["base_model"]
        return base or self.config.model.base_model

    def run_of_model(self, entry: dict) -> tuple[Path | None, Path | None]:
        """The adapter (stored with the version, else in its run) and the base a model came from."""
        if not entry.get("gguf_path") or not entry.get("base_model"):
            return None, None
        stored = self.path(entry["gguf_path"]).parent / "adapters"
        if entry.get("version"):
            try:
                stored = self.path(find_version(self.root, entry["version"])["gguf_path"]).parent / "adapters"
            except MlxDmError:
                pass
        adapter = stored if (stored / "adapters.safetensors").exists() else self.runs_dir / entry.get("run", "") / "adapters"
        if not (adapter / "adapters.safetensors").exists():
            return None, None
        try:
            return adapter, self.base(entry["base_model"])
        except MlxDmError:
            return None, None

    def entry_of_gguf(self, gguf: Path) -> dict:
        """The manifest entry of a GGUF file (the current model's, or a stored version's), or {}."""
        manifest = self.manifest()
        current = manifest["current"]
        if current is not None and self.path(current["gguf_path"]) == Path(gguf).resolve():
            return current
        return next((v for v in manifest["versions"] if self.path(v["gguf_path"]) == Path(gguf).resolve()), {})

    def previous_model(self, gguf: Path) -> Path | None:
        """What `gguf` is compared with: the app's current model, or for the current one the one promoted before it."""
        manifest = self.manifest()
        current = manifest["current"]
        if current is None:
            return None
        if self.path(current["gguf_path"]) != Path(gguf).resolve():
            return self.path(current["gguf_path"])
        earlier = [v for v in manifest["versions"] if len(manifest["history"]) > 1 and v["version"] == manifest["history"][-2]]
        return self.path(earlier[0]["gguf_path"]) if earlier and self.path(earlier[0]["gguf_path"]).is_file() else None
