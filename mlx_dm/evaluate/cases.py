"""Evaluation cases: every DM reply of the validation split, the built-in D&D suite, and the
independent set: scenarios written apart from the starter corpus (another voice, other worlds,
parties and tool mixes, turns where no call belongs), so a score there says how the model does on
text nothing like its training. Each source is reported on its own.

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
INDEPENDENT_DIR = Path(__file__).parent / "independent"


@dataclass
class EvalCase:
    case: str  # "<scenario path>#<message index>"
    category: str
    source: str  # "validation", "suite", "independent", or the name of a folder of the user's
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


def folder_cases(folder: Path, source: str, builtin: bool = False) -> list[EvalCase]:
    """Every DM reply of the scenario files under `folder`, as cases of `source`. A file that does not
    parse is an error naming it (in a built-in folder, a bug)."""
    cases = []
    for path in sorted(Path(folder).rglob("*.md")):
        name = f"{source}/{path.relative_to(folder).as_posix()}"
        parsed = parse_text(path.read_text(encoding="utf-8"), name)
        if parsed.scenario is None:
            if builtin:
                raise DataError(f"built-in evaluation case {path} does not parse: {parsed.errors[0]}",
                                "this is a bug in mlx-dm; please report it")
            if parsed.skipped_reason:
                continue
            raise DataError(f"{path} does not parse: {parsed.errors[0] if parsed.errors else 'no scenario'}",
                            "fix the file (`mlx-dm data validate --scenarios` on its folder lists every problem) or move it out")
        scenario = parsed.scenario
        categorise(scenario)
        cases += _cases(scenario.path, scenario.category, source, scenario_messages(scenario), scenario_facts(scenario))
    return cases


def suite_cases(folder: Path = SUITE_DIR) -> list[EvalCase]:
    """The project's own D&D test cases: one expected behaviour each (a call, or none)."""
    return folder_cases(folder, "suite", builtin=True)


def independent_cases() -> list[EvalCase]:
    return folder_cases(INDEPENDENT_DIR, "independent", builtin=True)


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
