"""From parsed scenarios to a dataset folder: categories, duplicates, split, balance, vocabulary.

The folder holds `train.jsonl`, `valid.jsonl` (one rendered conversation per line), `stats.json`,
`vocabulary.json`, `problems.json`, `fingerprint.txt` and `report.md`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DataError
from ..files import atomic_write_json, atomic_write_text
from . import toolcalls
from .augment import augmented_copies
from .drills import drill_scenes
from .grammar import argument_problems
from .discover import ScanResult, scan
from .overlap import MIN_WORDS, split_overlap, text_groups
from .render import context_text, render_scenario
from .scenario import CATEGORIES, DM, Problem, Scenario

_COMBAT_TOOLS = {"attack", "damage", "initiative", "health", "heal", "save", "saving_throw"}
_COMBAT_WORDS = re.compile(r"\b(attack|initiative|sword|axe|arrow|goblin|orc|hit points?|damage|swing|strike|combat|fight)\b", re.I)
_EXPLORE_WORDS = re.compile(r"\b(perception|investigation|survival|trap|door|corridor|ruins?|map|path|cave|search|explore|climb)\b", re.I)
_ROLEPLAY_WORDS = re.compile(r"\b(persuasion|insight|deception|intimidation|says|asks|merchant|bargain|price|innkeeper|negotiat\w*|convince)\b", re.I)


def categorise(scenario: Scenario) -> None:
    """Category from the `Category:` key, else a parent folder, else inferred (marked)."""
    if scenario.category in CATEGORIES:
        return
    for part in reversed(scenario.path.split("/")[:-1]):
        if part.lower() in CATEGORIES:
            scenario.category, scenario.category_source = part.lower(), "folder"
            return
    calls = scenario.calls
    text = " ".join(turn.text for turn in scenario.turns)
    scores = {
        "combat": 3 * sum(c.name in _COMBAT_TOOLS for c in calls) + len(_COMBAT_WORDS.findall(text)),
        "exploration": 3 * sum(c.name in ("transition",) for c in calls) + len(_EXPLORE_WORDS.findall(text)),
        "roleplay": len(_ROLEPLAY_WORDS.findall(text)) + sum('"' in t.text for t in scenario.turns if t.kind == DM),
    }
    scenario.category = max(CATEGORIES, key=lambda c: (scores[c], -CATEGORIES.index(c)))
    scenario.category_source = "inferred"


def _stable_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def _validation_quotas(by_category: dict[str, list[Scenario]], validation_fraction: float) -> dict[str, int]:
    """Validation scenarios per category: largest remainder, never leaving a category without training."""
    total = sum(len(items) for items in by_category.values())
    total_valid = min(total - 1, max(1, round(validation_fraction * total)))
    quotas = {c: validation_fraction * len(items) for c, items in by_category.items()}
    counts = {c: int(q) for c, q in quotas.items()}
    order = sorted(quotas, key=lambda c: (-(quotas[c] - counts[c]), c))
    while sum(counts.values()) < total_valid:
        grew = False
        for category in order:
            if sum(counts.values()) >= total_valid:
                break
            if counts[category] < len(by_category[category]) - 1:
                counts[category] += 1
                grew = True
        if not grew:
            break
    return counts


def _by_category(scenarios: list[Scenario]) -> dict[str, list[Scenario]]:
    by_category: dict[str, list[Scenario]] = defaultdict(list)
    for scenario in scenarios:
        by_category[scenario.category].append(scenario)
    return by_category


def validation_target(scenarios: list[Scenario], validation_fraction: float) -> int:
    """How many scenarios the fraction asks to hold out."""
    return sum(_validation_quotas(_by_category(scenarios), validation_fraction).values()) if len(scenarios) > 1 else 0


def split(scenarios: list[Scenario], validation_fraction: float, seed: int,
          groups: list[list[Scenario]] | None = None) -> tuple[list[Scenario], list[Scenario]]:
    """Seeded split by groups of scenarios that share no DM text (overlap.py), stratified by category,
    stable when files are added.

    Whole groups go to validation while they fit the category's quota, then any group that fits the
    rest. Only when every group is too large (one corpus of recombined blocks) are files split one by
    one, and the dataset report says how much validation text training saw. Any corpus of two or
    more scenarios keeps at least one for validation and one for training. `groups`: text_groups(scenarios),
    when the caller has them already.
    """
    if len(scenarios) < 2:
        return list(scenarios), []
    by_category = _by_category(scenarios)
    counts = _validation_quotas(by_category, validation_fraction)
    groups = sorted(groups if groups is not None else text_groups(scenarios), key=lambda g: _stable_key(seed, g[0].path))
    left = {c: len(items) for c, items in by_category.items()}  # training must keep one of each category
    chosen: list[int] = []  # indices into groups

    def take(index: int) -> None:
        chosen.append(index)
        for scenario in groups[index]:
            counts[scenario.category] -= 1
            left[scenario.category] -= 1

    def fits(group: list[Scenario], per_category: bool) -> bool:
        need = Counter(s.category for s in group)
        if any(left[c] - n < 1 for c, n in need.items()):
            return False
        if per_category:
            return all(counts[c] >= n for c, n in need.items())
        return len(group) <= sum(max(0, n) for n in counts.values())

    for per_category in (True, False):
        for index, group in enumerate(groups):
            if index not in chosen and fits(group, per_category):
                take(index)
    valid = [s for index in chosen for s in groups[index]]
    if not valid:  # every group too large: split file by file, and let the report say what is shared
        counts = _validation_quotas(by_category, validation_fraction)
        for category in sorted(by_category):
            valid += sorted(by_category[category], key=lambda s: _stable_key(seed, s.path))[: counts[category]]
    held_out = {s.path for s in valid}
    key = lambda s: s.path  # noqa: E731
    return sorted((s for s in scenarios if s.path not in held_out), key=key), sorted(valid, key=key)


def balance(train: list[Scenario], target_mix: dict[str, float], seed: int) -> list[Scenario]:
    """Up-sample (repeat) minority categories towards the target mix; never drops data.

    Down-sampling is done only by not repeating: every scenario appears at least once.
    """
    counts = Counter(s.category for s in train)
    present = {c: w for c, w in target_mix.items() if counts.get(c)}
    if len(present) < 2:
        return list(train)
    weight = sum(present.values())
    # The category furthest above its share sets the size of the balanced set.
    size = max(counts[c] / (w / weight) for c, w in present.items())
    balanced = list(train)
    for category, share in present.items():
        want = round(size * share / weight)
        items = sorted((s for s in train if s.category == category), key=lambda s: _stable_key(seed, s.path))
        for index in range(max(0, want - counts[category])):
            balanced.append(items[index % len(items)])
    return balanced


@dataclass
class ToolInfo:
    name: str
    count: int = 0
    patterns: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    first_file: str = ""
    first_line: int = 0
    agent_acts: bool = False


def tool_vocabulary(scenarios: list[Scenario], agent_tools: list[str]) -> dict[str, ToolInfo]:
    accepted = {t.lower() for t in agent_tools}
    vocab: dict[str, ToolInfo] = {}
    for scenario in scenarios:
        for call in scenario.calls:
            info = vocab.setdefault(call.name, ToolInfo(call.name, first_file=scenario.path, first_line=call.line,
                                                        agent_acts=call.name in accepted))
            info.count += 1
            pattern = toolcalls.argument_pattern(call.arguments)
            info.patterns[pattern] = info.patterns.get(pattern, 0) + 1
            if len(info.examples) < 5 and call.raw not in info.examples:
                info.examples.append(call.raw)
    return dict(sorted(vocab.items(), key=lambda kv: (-kv[1].count, kv[0])))


def data_fingerprint(scenarios: list[Scenario], augment_copies: int = 0, drills: int = 0, tools: str = "") -> str:
    """The data's identity: every file's path and content, the augmentation that trains on them and
    the tool list the system text carries."""
    digest = hashlib.sha256(f"augment={augment_copies}\n".encode() if augment_copies else b"")
    if drills:
        digest.update(f"drills={drills}\n".encode())
    if tools:
        digest.update(f"tools={tools}\n".encode())
    for scenario in sorted(scenarios, key=lambda s: s.path):
        digest.update(f"{scenario.path}\0{scenario.content_sha256}\n".encode())
    return digest.hexdigest()


@dataclass
class DatasetSummary:
    root: str
    files: int
    accepted: int
    skipped: dict[str, str]  # path -> reason (not scenarios)
    rejected: dict[str, str]  # path -> first error
    duplicates: dict[str, str]  # path -> the file it repeats
    warnings: int
    train: int
    valid: int
    train_balanced: int
    categories_before: dict[str, int]
    categories_after: dict[str, int]
    inferred_categories: int
    turns: int
    dm_turns: int
    characters: int
    tools: dict[str, int]
    agent_drops: list[str]
    fingerprint: str
    augmented: int = 0  # renamed copies added to the training split
    drills: int = 0  # generated drill scenes added to the training split (drills.py)
    split_overlap: dict = field(default_factory=dict)  # overlap.SplitOverlap.to_dict(), with its warning
    starter: dict = field(default_factory=dict)  # starter.StarterUse.to_dict(): whether mlx-dm's starter corpus joined, why

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Dataset:
    summary: DatasetSummary
    train: list[Scenario]
    valid: list[Scenario]
    train_balanced: list[Scenario]
    vocabulary: dict[str, ToolInfo]
    problems: list[Problem]
    augmented: list[Scenario] = field(default_factory=list)  # renamed copies of training scenarios (augment.py)
    drills: list[Scenario] = field(default_factory=list)  # generated drill scenes, training only (drills.py)
    tools: str = ""  # the system text's tool list (profiles.tools_prompt), rendered into every record


def _promote_warnings(scan_result: ScanResult) -> None:
    """--strict: any warning rejects its file."""
    for result in scan_result.results:
        if result.scenario is not None and result.warnings:
            for problem in result.warnings:
                problem.severity = "error"
            result.scenario = None


def build_dataset(root: Path, validation_fraction: float = 0.15, seed: int = 0, strict: bool = False,
                  balance_mix: dict[str, float] | None = None, agent_tools: list[str] | None = None,
                  max_file_bytes: int = 1_000_000, scan_result: ScanResult | None = None,
                  augment_copies: int = 0, drills: int = 0, tools: str = "") -> Dataset:
    from ..config import DEFAULT_AGENT_TOOLS

    result = scan_result or scan(Path(root), max_file_bytes)
    if strict:
        _promote_warnings(result)
    problems, acting = result.problems, list(agent_tools or DEFAULT_AGENT_TOOLS)
    seen: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    scenarios: list[Scenario] = []
    for parsed in result.accepted:
        scenario = parsed.scenario
        assert scenario is not None
        # Same conversation as the model would see it (whitespace and headings aside) = duplicate.
        body = hashlib.sha256(render_scenario(scenario).text.encode("utf-8")).hexdigest()
        if body in seen:
            duplicates[scenario.path] = seen[body]
            problems.append(Problem("warning", "duplicate", scenario.path, 1, f"same turns as {seen[body]}; this copy is "
                                    "left out", "delete one of the two files, or change one"))
            continue
        seen[body] = scenario.path
        problems += argument_problems(scenario, acting)
        categorise(scenario)
        scenarios.append(scenario)
    if not scenarios:
        raise DataError(f"no usable scenario in {root} ({len(result.results)} .md files: {len(result.skipped)} not "
                        f"scenarios, {len(result.rejected)} with errors)", "add scenario files in the format of "
                        "docs/scenario-format.md; `mlx-dm data validate` lists every problem")
    groups = text_groups(scenarios)
    train, valid = split(scenarios, validation_fraction, seed, groups)
    overlap = split_overlap(groups, train, valid, validation_target(scenarios, validation_fraction))
    balanced = balance(train, balance_mix, seed) if balance_mix else list(train)
    augmented = augmented_copies(train, Path(root), augment_copies, seed)
    scenes = drill_scenes(drills, seed)
    vocab = tool_vocabulary(scenarios, acting)
    summary = DatasetSummary(
        root=str(root),
        files=len(result.results),
        accepted=len(scenarios),
        skipped={r.path: r.skipped_reason for r in result.skipped},
        rejected={r.path: (r.errors[0].message if r.errors else "rejected") for r in result.rejected},
        duplicates=duplicates,
        warnings=sum(1 for p in problems if p.severity == "warning"),
        train=len(train),
        valid=len(valid),
        train_balanced=len(balanced),
        categories_before=dict(sorted(Counter(s.category for s in train).items())),
        categories_after=dict(sorted(Counter(s.category for s in balanced).items())),
        inferred_categories=sum(s.category_source == "inferred" for s in scenarios),
        turns=sum(len(s.turns) for s in scenarios),
        dm_turns=sum(t.kind == DM for s in scenarios for t in s.turns),
        characters=sum(len(render_scenario(s).text) for s in scenarios),
        tools={name: info.count for name, info in vocab.items()},
        agent_drops=[name for name, info in vocab.items() if not info.agent_acts],
        fingerprint=data_fingerprint(scenarios, augment_copies, drills, tools),
        augmented=len(augmented),
        drills=len(scenes),
        split_overlap={**overlap.to_dict(), "warning": overlap.warning},
    )
    return Dataset(summary, train, valid, balanced, vocab, problems, augmented, scenes, tools)


def scenario_facts(scenario: Scenario) -> dict:
    """The header facts evaluation checks replies against (party and player names, place, world)."""
    party = [member.name for member in scenario.party]
    if scenario.player_name and scenario.player_name not in party:
        party.append(scenario.player_name)
    return {"party": party, "location": scenario.location, "world": scenario.world}


def _record(scenario: Scenario, tools: str = "") -> dict:
    rendered = render_scenario(scenario, tools)
    return {
        "path": scenario.path,
        "category": scenario.category,
        "category_source": scenario.category_source,
        "facts": scenario_facts(scenario),
        "messages": rendered.messages,
        "context": context_text(scenario, tools),  # restarts each training window of a long scenario
        "text": rendered.text,
        "train_spans": rendered.train_spans,
    }


def write_dataset(dataset: Dataset, out_dir: Path) -> Path:
    """Write the dataset folder; every file is replaced atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in (("train", dataset.train_balanced + dataset.augmented + dataset.drills), ("valid", dataset.valid)):
        atomic_write_text(out_dir / f"{name}.jsonl", "".join(json.dumps(_record(s, dataset.tools), ensure_ascii=False) + "\n" for s in items))
    atomic_write_json(out_dir / "stats.json", dataset.summary.to_dict())
    atomic_write_json(out_dir / "vocabulary.json", {k: asdict(v) for k, v in dataset.vocabulary.items()})
    atomic_write_json(out_dir / "problems.json", [asdict(p) for p in dataset.problems])
    atomic_write_text(out_dir / "fingerprint.txt", dataset.summary.fingerprint + "\n")
    # Per file, for incremental training: which scenarios a model version saw, and their content.
    atomic_write_json(out_dir / "files.json", {s.path: s.content_sha256 for s in sorted(dataset.train + dataset.valid, key=lambda s: s.path)})
    atomic_write_text(out_dir / "report.md", markdown_report(dataset))
    return out_dir


def starter_line(starter: dict) -> str:
    if not starter:
        return "mlx-dm's starter corpus: not considered (scenarios passed directly)."
    if starter["included"]:
        return (f"mlx-dm's starter corpus joined: {starter['files']} scenarios under `mlx-dm-starter/` "
                f"({starter['reason']}; `data.include_starter`).")
    return f"mlx-dm's starter corpus is not included ({starter['reason']}; `data.include_starter`)."


def markdown_report(dataset: Dataset) -> str:
    s = dataset.summary
    lines = [
        "# Dataset report", "",
        f"Scenarios folder: `{s.root}`  ", f"Data fingerprint: `{s.fingerprint[:16]}`", "",
        "| files | accepted | not scenarios | rejected | duplicates | warnings | train | train (balanced) | valid |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s.files} | {s.accepted} | {len(s.skipped)} | {len(s.rejected)} | {len(s.duplicates)} | {s.warnings} "
        f"| {s.train} | {s.train_balanced} | {s.valid} |", "",
        f"Training also reads {s.augmented} copies of its scenarios with the party renamed throughout "
        "(`data.augment_copies`), and "
        f"{s.drills} generated drill scenes of which call each kind of player action needs (`data.drill_scenes`).", "",
        starter_line(s.starter), "",
        "## Categories (train split)", "", "| category | before balancing | after |", "|---|---|---|",
    ]
    for category in CATEGORIES:
        lines.append(f"| {category} | {s.categories_before.get(category, 0)} | {s.categories_after.get(category, 0)} |")
    lines += ["", f"{s.inferred_categories} categories were inferred from tool calls and wording.", ""]
    overlap = s.split_overlap
    if overlap:
        lines += ["## Text shared between scenarios", "",
                  f"Scenarios sharing a DM sentence of {MIN_WORDS}+ words are kept on one side of the split. "
                  f"{overlap['groups']} groups, the largest {overlap['largest_group']} scenarios; "
                  f"{overlap['linked_scenarios']} scenarios share text with another. Validation holds "
                  f"{overlap['held_out']} of the {overlap['held_out_wanted']} wanted; "
                  f"{overlap['shared_sentences']:.0%} of its DM sentences also occur in training.", ""]
        if overlap.get("warning"):
            lines += [f"**Warning:** {overlap['warning']}. Scenarios written apart (new places, parties and "
                      "wording rather than reused blocks) make the validation scores mean more.", ""]
    lines += ["## Tools", "", "| tool | calls | the app's agent | argument patterns | first seen |", "|---|---|---|---|---|"]
    for name, info in dataset.vocabulary.items():
        patterns = "; ".join(f"`{p}` ×{n}" for p, n in sorted(info.patterns.items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"| `{name}` | {info.count} | {'acts' if info.agent_acts else 'drops'} | {patterns} "
                     f"| {info.first_file}:{info.first_line} |")
    if s.skipped or s.rejected or dataset.problems:
        lines += ["", "## Problems", ""]
        for path, reason in s.skipped.items():
            lines.append(f"- skipped `{path}`: {reason}")
        for problem in dataset.problems:
            lines.append(f"- `{problem.location()}` {problem.severity}: {problem.message} — fix: {problem.hint}")
    return "\n".join(lines) + "\n"
