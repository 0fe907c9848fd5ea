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
from ..data.discover import scan
from ..data.render import message_examples, scenario_messages
from ..errors import DataError
from ..files import sha256_of
from .score import Facts

SUITE_DIR = Path(__file__).parent / "suite"
# Characters per token when sizing a reply's room from its reference: Gemma's tokenizer gives about
# 4 on English prose, so 3 leaves the model room for a reply somewhat longer than the reference's.
CHARS_PER_TOKEN = 3
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


def reply_budget(reference: str, floor: int, ceiling: int) -> int:
    """Tokens a model may write for one case: `floor`, or the reference reply's own length when that
    is longer, up to `ceiling` (0: always `floor`).

    Why: the game's authors write replies of ~500 characters with the call late in them (11 of the
    21 calls in their files come after character 380). Cut at a fixed 96 tokens, a model that
    writes like them is stopped before half of its calls; the app gives it 256 (n_predict).
    """
    if ceiling <= floor:
        return floor
    return max(floor, min(ceiling, -(-len(reference) // CHARS_PER_TOKEN)))


def _cases(name: str, category: str, source: str, messages: list[dict[str, str]], facts: dict) -> list[EvalCase]:
    return [EvalCase(f"{name}#{example.turn_index}", category, source, example.prompt,
                     example.messages, example.messages[-1]["content"], example.reference, Facts(**facts))
            for example in message_examples(name, messages)]


def call_vocabulary(dataset_dir: Path, agent_tools: list[str]) -> set[str]:
    """The tool names a reply may call: the data's (the dataset's vocabulary.json), the dice tools
    and the app's agent's."""
    from ..dice import DICE_TOOLS

    vocabulary_file = Path(dataset_dir) / "vocabulary.json"
    vocabulary = set(json.loads(vocabulary_file.read_text())) if vocabulary_file.exists() else set()
    return vocabulary | set(DICE_TOOLS) | {t.lower() for t in agent_tools}


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


def folder_cases(folder: Path, source: str, builtin: bool = False, leave_out: frozenset[str] = frozenset(),
                 tools: str = "") -> list[EvalCase]:
    """Every DM reply of the scenario files under `folder` (found and read as the dataset's are, so a
    README is no case), as cases of `source`, but for the relative paths in `leave_out`. A file that
    does not parse is an error naming it (in a built-in folder, a bug)."""
    result = scan(Path(folder))
    if result.rejected:
        problem = result.rejected[0].errors[0]
        if builtin:
            raise DataError(f"built-in evaluation case {problem.location()} does not parse: {problem.message}",
                            "this is a bug in mlx-dm; please report it")
        raise DataError(f"{Path(folder) / problem.location()} does not parse: {problem.message}",
                        f"fix it ({problem.hint}) or move it out of {folder}")
    cases = []
    for parsed in result.accepted:
        if parsed.path in leave_out:
            continue
        scenario = parsed.scenario
        categorise(scenario)
        cases += _cases(f"{source}/{parsed.path}", scenario.category, source, scenario_messages(scenario, tools=tools),
                        scenario_facts(scenario))
    return cases


def suite_cases(folder: Path = SUITE_DIR, tools: str = "") -> list[EvalCase]:
    """The project's own D&D test cases: one expected behaviour each (a call, or none). `tools`: the
    system text's tool list training saw (data/profiles.tools_prompt), here and below."""
    return folder_cases(folder, "suite", builtin=True, tools=tools)


def independent_cases(tools: str = "") -> list[EvalCase]:
    return folder_cases(INDEPENDENT_DIR, "independent", builtin=True, tools=tools)


def user_cases(folder: Path, training_folder: Path, tools: str = "") -> tuple[list[EvalCase], list[str]]:
    """The cases of a folder the user keeps out of training (`validate --cases DIR`), and the files
    left out because training has them too (inside the training folder, or the same bytes as a file there)."""
    folder, training_folder = Path(folder).resolve(), Path(training_folder).resolve()
    if not folder.is_dir():
        raise DataError(f"no folder of cases at {folder}", "pass --cases with a folder of scenario .md files (validate.cases_dir)")
    trained = {sha256_of(path) for path in training_folder.rglob("*.md")} if training_folder.is_dir() else set()
    left_out = [path for path in sorted(folder.rglob("*.md"))
                if path.resolve().is_relative_to(training_folder) or sha256_of(path) in trained]
    relative = frozenset(path.relative_to(folder).as_posix() for path in left_out)
    return folder_cases(folder, f"cases/{folder.name}", leave_out=relative, tools=tools), [str(p) for p in left_out]


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
