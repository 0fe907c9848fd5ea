"""Evaluation cases: every DM reply of the validation split, plus the built-in D&D suite.

A case is the conversation up to one DM reply (rendered exactly as in training, ending in the
generation prompt), the reference reply, and the scenario's header facts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.dataset import categorise, scenario_facts
from ..data.parse import parse_text
from ..data.render import message_examples, scenario_messages
from ..errors import DataError
from .score import Facts

SUITE_DIR = Path(__file__).parent / "suite"


@dataclass
class EvalCase:
    case: str  # "<scenario path>#<message index>"
    category: str
    source: str  # "validation" or "suite"
    prompt: str
    messages: list[dict[str, str]]  # the conversation before the reply
    last_user_message: str
    reference: str
    facts: Facts


def _cases(name: str, category: str, source: str, messages: list[dict[str, str]], facts: dict) -> list[EvalCase]:
    return [EvalCase(f"{name}#{example.turn_index}", category, source, example.prompt,
                     example.messages, example.messages[-1]["content"], example.reference, Facts(**facts))
            for example in message_examples(name, messages)]


def validation_cases(dataset_dir: Path) -> list[EvalCase]:
    path = Path(dataset_dir) / "valid.jsonl"
    if not path.exists():
        raise DataError(f"no validation split at {path}", "build the dataset first: `mlx-dm data build`")
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        facts = record.get("facts") or {"party": [], "location": "", "world": ""}
        cases += _cases(record["path"], record["category"], "validation", record["messages"], facts)
    return cases


def suite_cases(folder: Path = SUITE_DIR) -> list[EvalCase]:
    """The project's own D&D test cases: one expected behaviour each (a call, or none)."""
    cases = []
    for path in sorted(Path(folder).glob("*.md")):
        parsed = parse_text(path.read_text(encoding="utf-8"), f"suite/{path.name}")
        if parsed.scenario is None:
            raise DataError(f"built-in evaluation case {path} does not parse: {parsed.errors[0]}",
                            "this is a bug in mlx-dm; please report it")
        scenario = parsed.scenario
        categorise(scenario)
        cases += _cases(scenario.path, scenario.category, "suite", scenario_messages(scenario), scenario_facts(scenario))
    return cases


def select_cases(cases: list[EvalCase], limit: int) -> list[EvalCase]:
    """At most `limit` cases, taken in turn from each (source, category) group so a short run stays balanced."""
    if not limit or limit >= len(cases):
        return list(cases)
    groups: dict[tuple[str, str], list[EvalCase]] = {}
    for case in cases:
        groups.setdefault((case.source, case.category), []).append(case)
    queues = [groups[key] for key in sorted(groups)]
    chosen: list[EvalCase] = []
    depth = 0
    while len(chosen) < limit:
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    return chosen
