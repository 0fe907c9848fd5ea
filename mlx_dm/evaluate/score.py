"""Deterministic scores for one generated DM reply against the reference reply and the scenario's facts.

Tool-call scores are exact (the app's own pattern, normalised arguments). Context and interaction
scores are rules over names and phrases: reproducible, but heuristic, and the report says so.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from ..data.toolcalls import find_calls, find_look_alikes

TEMPLATE_LEAKS = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unused", "<image_soft_token>")
OUT_OF_ROLE = ("as an ai", "language model", "i'm an ai", "i am an ai", "as a dungeon master ai", "i cannot help")
# Phrases that take a decision away from the player (the DM narrates outcomes, never choices).
DECIDES_FOR_PLAYER = re.compile(
    r"\byou (?:decide|choose|opt|elect) to\b|\byou (?:can't|cannot) help but\b|\byou feel compelled to\b", re.IGNORECASE)
SPEAKER_LABEL = re.compile(r"^\s*([A-Z][\w'\- ]{1,30}):", re.MULTILINE)
CAPITALISED = re.compile(r"\b[A-Z][a-z][\w'\-]*\b")
# Capitalised words that are not names: sentence openers, rules terms and the like.
COMMON_WORDS = frozenset("""
A An The This That These Those There Then Than Their They Them You Your Yours We Our It Its He She His Her Him I
My Me What When Where Which Who Why How If As At By For From In Into On Onto Of Off Out Over Under Up Down To
With Without And But Or Nor So Yet Not No Yes All Any Each Every Some Most Much Many More Less One Two Three
Four Five Six Seven Eight Nine Ten First Second Third Next Last Now Here Still Just Only Even Also Again Before
After While During Until Once Soon Then Roll Make Tool Results Result Attack Damage Heal Initiative Perception
Stealth Insight Investigation Persuasion Deception Intimidation Athletics Acrobatics Arcana History Nature
Religion Medicine Survival Performance Sleight Hand Animal Handling Strength Dexterity Constitution Intelligence
Wisdom Charisma Saving Throw Save Check Round Turn Level Hit Points Armor Class HP AC DM DC Dungeon Master
Role World Location Party Player Name Race Class Inventory Gold Good Well Great Suddenly Meanwhile Behind Above
Below Inside Outside Beyond Around Across Through Nearby Ahead Okay Ok Oh Ah Alas Please Thank Thanks Sir Lady
Lord Captain Do Does Did Is Are Was Were Be Been Can Could Will Would Should Shall May Might Must Let Lets Go Give
Take Tell Look Listen Wait Stop Hold Come Keep Put Try Good Bad New Old Another Other Such None Nothing Something
Someone Everyone Anyone Nobody Everything Anything Critical Natural Advantage Disadvantage Spell Cantrip
""".split())

def normalise_arguments(arguments: str) -> str:
    """Compare arguments as the engine would read them: case, spaces and `d20` vs `1d20` do not matter."""
    text = re.sub(r"\s+", " ", arguments.strip().lower())
    text = re.sub(r"\s*([+\-,])\s*", r"\1", text)
    return re.sub(r"(?<![\d])d(\d+)", r"1d\1", text)

@dataclass
class CallScore:
    reference: list[tuple[str, str]]
    predicted: list[tuple[str, str]]
    name_matches: int  # predicted calls paired with a reference call of the same tool
    argument_matches: int  # of those, with the same (normalised) arguments
    malformed: list[str]  # look-alikes the app's pattern would miss or mangle
    unknown_tools: list[str]  # predicted names outside the tool vocabulary

    @property
    def exact(self) -> bool:
        return (sorted((n, normalise_arguments(a)) for n, a in self.reference)
                == sorted((n, normalise_arguments(a)) for n, a in self.predicted) and not self.malformed)

def score_calls(reference: str, output: str, vocabulary: set[str] | frozenset[str]) -> CallScore:
    ref = [(c.name, c.arguments) for c in find_calls(reference, 1)]
    pred = [(c.name, c.arguments) for c in find_calls(output, 1)]
    unmatched = list(range(len(ref)))
    name_matches = argument_matches = 0
    leftovers = []
    for name, arguments in pred:  # same tool and arguments first, then the same tool
        hit = next((i for i in unmatched if ref[i][0] == name
                    and normalise_arguments(ref[i][1]) == normalise_arguments(arguments)), None)
        if hit is None:
            leftovers.append(name)
            continue
        unmatched.remove(hit)
        name_matches += 1
        argument_matches += 1
    for name in leftovers:
        hit = next((i for i in unmatched if ref[i][0] == name), None)
        if hit is not None:
            unmatched.remove(hit)
            name_matches += 1
    malformed = [alike.text for alike in find_look_alikes(output, 1)]
    unknown = sorted({name for name, _ in pred if name not in vocabulary})
    return CallScore(ref, pred, name_matches, argument_matches, malformed, unknown)

@dataclass
class Facts:
    """What the scenario's header says: the names the DM should use and must not add to."""

    party: list[str] = field(default_factory=list)  # party member and player character names
    location: str = ""
    world: str = ""

    def entities(self) -> list[str]:
        names = [name.split()[0] for name in self.party if name]
        places = [w for w in CAPITALISED.findall(f"{self.location} {self.world}") if w not in COMMON_WORDS and len(w) > 3]
        return list(dict.fromkeys(names + places))

def _mentions(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None

def names_in(text: str) -> set[str]:
    """Capitalised words that are not common words: likely names of people and places."""
    return {w for w in CAPITALISED.findall(text) if w not in COMMON_WORDS}

@dataclass
class ContextScore:
    expected: list[str]  # header entities the reference reply mentions
    mentioned: list[str]  # of those, the ones the output mentions too
    new_names: list[str]  # names in the output found nowhere in the prompt or the reference (heuristic)
    invented_speakers: list[str]  # speaker labels for characters the scenario never had (heuristic)

def score_context(prompt_text: str, reference: str, output: str, facts: Facts) -> ContextScore:
    expected = [e for e in facts.entities() if _mentions(reference, e)]
    mentioned = [e for e in expected if _mentions(output, e)]
    known = names_in(prompt_text) | names_in(reference) | {w for e in facts.party for w in e.split()}
    new = sorted(n for n in names_in(output) if n not in known and not _mentions(prompt_text, n))
    speakers = [s.strip() for s in SPEAKER_LABEL.findall(output)]
    invented = sorted({s for s in speakers if s.split()[0] not in known and s not in COMMON_WORDS})
    return ContextScore(expected, mentioned, new, invented)

@dataclass
class InteractionScore:
    in_role: bool  # no template tokens, no assistant talk, no invented tool results
    respects_agency: bool  # does not speak or choose for a player character (heuristic)
    addresses_actor: bool  # mentions the acting character or speaks to "you" (heuristic)
    well_formed: bool  # non-empty, no malformed calls
    problems: list[str] = field(default_factory=list)

def acting_character(last_user_message: str, party: list[str]) -> str:
    """Who acts in the player's last message: a `Name:` label or a party name that opens it."""
    label = SPEAKER_LABEL.match(last_user_message)
    if label:
        return label.group(1).strip()
    first_words = last_user_message.strip().split()[:2]
    for name in party:
        if name and first_words and name.split()[0] in (w.strip(",.:;!") for w in first_words):
            return name.split()[0]
    return ""

def score_interaction(output: str, last_user_message: str, facts: Facts) -> InteractionScore:
    problems = []
    lowered = output.lower()
    leaks = [token for token in TEMPLATE_LEAKS if token in output]
    if leaks:
        problems.append(f"template tokens in the reply: {', '.join(leaks)}")
    if any(phrase in lowered for phrase in OUT_OF_ROLE):
        problems.append("talks as an assistant, not as the DM")
    if "tool results:" in lowered:
        problems.append("writes the tool results itself (the game rolls the dice)")
    in_role = not problems
    party_first = {name.split()[0] for name in facts.party if name}
    speaking_for = [s for s in SPEAKER_LABEL.findall(output) if s.strip().split()[0] in party_first]
    agency = not speaking_for and not DECIDES_FOR_PLAYER.search(output)
    if not agency:
        problems.append("speaks or decides for a player character")
    actor = acting_character(last_user_message, facts.party)
    addresses = not actor or _mentions(output, actor) or _mentions(output, "you") or _mentions(output, "your")
    if not addresses:
        problems.append(f"does not answer {actor}")
    malformed = find_look_alikes(output, 1)
    well_formed = bool(output.strip()) and not malformed
    if not output.strip():
        problems.append("empty reply")
    problems += [f"malformed call {m.text}: {m.message}" for m in malformed]
    return InteractionScore(in_role, agency, addresses, well_formed, problems)

@dataclass
class ExampleScore:
    case: str  # scenario path and turn
    category: str
    source: str  # "validation" or "suite"
    output: str
    reference: str
    calls: CallScore
    context: ContextScore
    interaction: InteractionScore

    def to_dict(self) -> dict:
        out = asdict(self)
        out["calls"]["exact"] = self.calls.exact
        return out

def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None

def tool_f1(names: int, predicted: int, reference: int) -> float:
    """F1 of tool names; with no reference call, 1 for a model that made none and 0 for one that did."""
    if not reference:
        return 1.0 if not predicted else 0.0
    if not names:
        return 0.0
    precision, recall = names / predicted, names / reference
    return 2 * precision * recall / (precision + recall)

def f1_text(values: dict, digits: int = 3) -> str:
    """An aggregate's tool-call F1 as every report writes it: "n/a (no calls)" when neither the
    references nor the model made a call (an F1 of 1.0 there would read as a perfect score)."""
    f1 = values.get("tool_f1")
    if f1 is None:
        return "n/a (no calls)" if not values.get("reference_calls") and not values.get("predicted_calls") else "n/a"
    return f"{f1:.{digits}f}"

def _scenario_counts(scores: list[ExampleScore]) -> dict[str, list[int]]:
    """Per scenario (the case's path before '#'), its calls' [name matches, predicted, reference]:
    what the bootstraps draw, whole scenarios at a time."""
    counts: dict[str, list[int]] = {}
    for s in scores:
        total = counts.setdefault(s.case.rsplit("#", 1)[0], [0, 0, 0])
        total[0] += s.calls.name_matches
        total[1] += len(s.calls.predicted)
        total[2] += len(s.calls.reference)
    return counts


def f1_interval(scores: list[ExampleScore], level: float = 0.9, draws: int = 1000, seed: int = 0) -> list[float] | None:
    """A bootstrap interval of the tool-call F1, drawing whole scenarios with replacement.

    Why: a source holds 20-40 reference calls, so one case more or less moves the F1 by points;
    the interval shows which differences between two models or two settings a source can tell.
    Scenarios, not cases, are drawn because the turns of one game depend on each other.
    """
    groups = list(_scenario_counts(scores).values())
    if len(groups) < 2 or not any(g[2] for g in groups):
        return None
    rng = random.Random(seed)
    values = sorted(tool_f1(*map(sum, zip(*rng.choices(groups, k=len(groups))))) for _ in range(draws))
    tail = (1 - level) / 2
    return [values[int(tail * (draws - 1))], values[int((1 - tail) * (draws - 1))]]

def paired_f1_drop(reference: list[ExampleScore], candidate: list[ExampleScore], level: float = 0.9,
                   draws: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """How far `candidate`'s tool-call F1 falls below `reference`'s on the same cases, and the
    one-sided `level` lower bound of that fall (paired bootstrap: the same scenarios drawn for both);
    None when neither writes or expects a call. The candidate is significantly below when the bound
    is above 0.

    Why paired: two files answering the same 24-48 cases differ in a handful of calls; drawn apart,
    each F1's own interval spans 20 points and hides a real loss, drawn together the noise of which
    cases were drawn cancels."""
    before, after = _scenario_counts(reference), _scenario_counts(candidate)
    if before.keys() != after.keys():
        raise ValueError("a paired comparison needs the same cases on both sides")
    rows = [before[name] + after[name] for name in before]  # names, predicted, reference: reference's, then candidate's
    if not rows or not any(r[1] or r[2] or r[4] for r in rows):
        return None

    def drop(sample: list[list[int]]) -> float:
        sums = [sum(column) for column in zip(*sample)]
        return tool_f1(*sums[:3]) - tool_f1(*sums[3:])

    rng = random.Random(seed)
    values = sorted(drop(rng.choices(rows, k=len(rows))) for _ in range(draws))
    return drop(rows), values[int((1 - level) * (draws - 1))]


def by_tool(scores: list[ExampleScore]) -> dict[str, dict[str, int]]:
    """Per tool name: the reference's calls, the model's, and those paired (a reply's calls of one
    name pair up to the fewer of the two). Says which tools a model misses or invents."""
    tools: dict[str, dict[str, int]] = {}
    for s in scores:
        reference = Counter(name for name, _ in s.calls.reference)
        predicted = Counter(name for name, _ in s.calls.predicted)
        for name in reference | predicted:
            row = tools.setdefault(name, {"reference": 0, "predicted": 0, "matched": 0})
            row["reference"] += reference[name]
            row["predicted"] += predicted[name]
            row["matched"] += min(reference[name], predicted[name])
    return dict(sorted(tools.items(), key=lambda item: (-item[1]["reference"], -item[1]["predicted"], item[0])))

def aggregate(scores: list[ExampleScore]) -> dict:
    """Precision/recall/F1 of tool calls and rates of the other checks over a set of examples."""
    predicted = sum(len(s.calls.predicted) for s in scores)
    reference = sum(len(s.calls.reference) for s in scores)
    names = sum(s.calls.name_matches for s in scores)
    arguments = sum(s.calls.argument_matches for s in scores)
    precision = _ratio(names, predicted)
    recall = _ratio(names, reference)
    with_calls = [s for s in scores if s.calls.reference]
    without_calls = [s for s in scores if not s.calls.reference]
    expected = sum(len(s.context.expected) for s in scores)
    return {
        "examples": len(scores),
        "tool_precision": precision,
        "tool_recall": recall,
        # None, shown "n/a (no calls)": with no call on either side an F1 says nothing (not 1.0).
        "tool_f1": tool_f1(names, predicted, reference) if predicted or reference else None,
        "reference_calls": reference,
        "predicted_calls": predicted,
        "tool_f1_interval": f1_interval(scores),  # 90%, scenarios drawn with replacement
        "tool_argument_accuracy": _ratio(arguments, reference),
        "tool_exact_match": _ratio(sum(s.calls.exact for s in scores), len(scores)),
        "call_detection": _ratio(sum(bool(s.calls.predicted) for s in with_calls), len(with_calls)),
        "false_call_rate": _ratio(sum(bool(s.calls.predicted) for s in without_calls), len(without_calls)),
        "syntax_valid": _ratio(predicted, predicted + sum(len(s.calls.malformed) for s in scores)),
        "unknown_tools": sorted({n for s in scores for n in s.calls.unknown_tools}),
        "context_recall": _ratio(sum(len(s.context.mentioned) for s in scores), expected),
        "no_new_names": _ratio(sum(not s.context.new_names for s in scores), len(scores)),
        "no_invented_speakers": _ratio(sum(not s.context.invented_speakers for s in scores), len(scores)),
        "in_role": _ratio(sum(s.interaction.in_role for s in scores), len(scores)),
        "respects_agency": _ratio(sum(s.interaction.respects_agency for s in scores), len(scores)),
        "addresses_actor": _ratio(sum(s.interaction.addresses_actor for s in scores), len(scores)),
        "format_compliance": _ratio(sum(s.interaction.well_formed and s.interaction.in_role for s in scores), len(scores)),
    }

# Which aggregate keys are heuristic (rules over names and phrases), for the report.
HEURISTIC_METRICS = ("context_recall", "no_new_names", "no_invented_speakers", "respects_agency", "addresses_actor")
