"""The data stage: scenarios parsed, validated and written as the dataset folder; the project's tool
vocabulary (mlx-dm-tools.json) and docs/tools.md kept current."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..data.dataset import Dataset, build_dataset, write_dataset
from ..data.profiles import agent_profiles, profile_report, tools_prompt
from ..data.scenario import DM
from ..data.starter import scan_with_starter
from ..data.vocabulary import extend_vocabulary, write_tools_doc
from ..files import atomic_write_json


@dataclass
class BuiltDataset:
    dataset: Dataset
    path: Path
    new_tools: list[dict] = field(default_factory=list)  # tools not seen in earlier builds, with where they first appear
    profiles: dict[str, dict] = field(default_factory=dict)  # per agent profile: the data's calls it acts on, drops, rejects


def read_dataset(config: Config, scenarios: Path | None = None) -> Dataset:
    root = Path(scenarios) if scenarios else config.path(config.data.scenarios_dir)
    data = config.data
    scanned, starter = scan_with_starter(root, data.include_starter, data.starter_below, data.max_file_bytes,
                                         data.starter_sample)
    dataset = build_dataset(root, data.validation_fraction, data.seed, data.strict,
                            data.target_mix if data.balance else None, data.agent_tools, data.max_file_bytes,
                            scan_result=scanned, augment_copies=data.augment_copies,
                            drills=data.drill_scenes, tools=tools_prompt(data.agent_tools, data.tools_in_prompt))
    dataset.summary.starter = starter.to_dict()
    return dataset


def build(config: Config, scenarios: Path | None = None) -> BuiltDataset:
    """Write the dataset of the project's scenarios (or of `scenarios`, leaving the vocabulary alone)."""
    dataset = read_dataset(config, scenarios)
    built = BuiltDataset(dataset, write_dataset(dataset, config.path(config.data.dataset_dir)))
    if scenarios is None:
        new, vocabulary = extend_vocabulary(Path(config.project_dir), dataset.vocabulary, config.data.agent_tools)
        built.new_tools = [{"name": name, **vocabulary[name]} for name in new]
        write_tools_doc(Path(config.project_dir), vocabulary, config.data.agent_tools)
    replies = [turn.text for scenario in dataset.train + dataset.valid for turn in scenario.turns if turn.kind == DM]
    built.profiles = profile_report(replies, agent_profiles(config.data.agent_tools, config.data.agent_profiles))
    atomic_write_json(built.path / "profiles.json", built.profiles)
    return built
