"""Which scenarios share text, so the validation split can hold out only text training never saw.

A split drawn file by file from a corpus whose files reuse the same DM sentences measures recall
of the corpus: the starter corpus, built from a small set of blocks recombined over 71 files,
scored 0.92 tool-call F1 on such a split and 0.14 on the game's own files. Here two scenarios are
linked when they share a DM sentence of at least MIN_WORDS words (normalised: lower case, words
only, tool calls removed), and linked scenarios form a group that goes to one side of the split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .scenario import DM, Scenario

MIN_WORDS = 6  # shorter lines ("Roll for initiative!", "What do you do?") are the DM's idiom, not a copied block
_CALL = re.compile(r"\[[^\]]*\]")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")
_WORD = re.compile(r"[a-z0-9']+")


def dm_sentences(scenario: Scenario) -> set[str]:
    """The scenario's DM sentences of MIN_WORDS words or more, normalised."""
    found = set()
    for turn in scenario.turns:
        if turn.kind != DM:
            continue
        for sentence in _SENTENCE_END.split(_CALL.sub(" ", turn.text)):
            words = _WORD.findall(sentence.lower())
            if len(words) >= MIN_WORDS:
                found.add(" ".join(words))
    return found


def text_groups(scenarios: list[Scenario]) -> list[list[Scenario]]:
    """Scenarios linked by shared DM sentences, directly or through others (connected components)."""
    parent = list(range(len(scenarios)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_owner: dict[str, int] = {}
    for index, scenario in enumerate(scenarios):
        for sentence in dm_sentences(scenario):
            owner = first_owner.setdefault(sentence, index)
            parent[root(index)] = root(owner)
    groups: dict[int, list[Scenario]] = {}
    for index, scenario in enumerate(scenarios):
        groups.setdefault(root(index), []).append(scenario)
    return sorted((sorted(group, key=lambda s: s.path) for group in groups.values()), key=lambda g: g[0].path)


@dataclass(frozen=True)
class SplitOverlap:
    """What the split could keep apart, for the dataset report and the CLI."""
    groups: int  # groups of scenarios linked by shared text (a scenario alone is a group)
    largest_group: int
    linked_scenarios: int  # scenarios sharing a sentence with at least one other
    held_out_wanted: int  # validation scenarios the fraction asked for
    held_out: int
    shared_sentences: float  # share of validation DM sentences that also occur in training (0 is honest)
    example: tuple[str, str, str] | None  # two linked files and a sentence they share
    categories_missing: tuple[str, ...] = ()  # categories with scenarios but none held out

    def to_dict(self) -> dict:
        return {"groups": self.groups, "largest_group": self.largest_group, "linked_scenarios": self.linked_scenarios,
                "held_out_wanted": self.held_out_wanted, "held_out": self.held_out,
                "shared_sentences": round(self.shared_sentences, 4), "example": list(self.example) if self.example else None,
                "categories_missing": list(self.categories_missing)}

    @property
    def warning(self) -> str | None:
        if not self.linked_scenarios:
            return None
        text = (f"{self.linked_scenarios} scenarios share DM sentences with another (the largest group links "
                f"{self.largest_group})")
        if self.example:
            text += f", e.g. {self.example[0]} and {self.example[1]}: \"{self.example[2][:60]}\""
        if self.shared_sentences > 0:
            return (text + f"; {self.shared_sentences:.0%} of the validation split's DM sentences also occur in training, "
                    "so its scores overstate how the model does on new text")
        if self.held_out < self.held_out_wanted or self.categories_missing:
            missing = f"; no {', '.join(self.categories_missing)} scenario shares none" if self.categories_missing else ""
            return text + (f"; the validation split holds {self.held_out} scenarios that share none "
                           f"(of {self.held_out_wanted} wanted){missing}")
        return None


def split_overlap(groups: list[list[Scenario]], train: list[Scenario], valid: list[Scenario], wanted: int) -> SplitOverlap:
    """What the split kept apart; `groups` (text_groups of every scenario) are read once for their sentences."""
    sentences = {s.path: dm_sentences(s) for group in groups for s in group}
    in_train = set().union(*(sentences[s.path] for s in train))
    valid_sentences = [sentence for s in valid for sentence in sentences[s.path]]
    shared = sum(sentence in in_train for sentence in valid_sentences)
    example = None
    for group in groups:
        if len(group) > 1:
            common = sorted(sentences[group[0].path] & set().union(*(sentences[s.path] for s in group[1:])))
            if common:
                other = next(s.path for s in group[1:] if common[0] in sentences[s.path])
                example = (group[0].path, other, common[0])
                break
    missing = tuple(sorted({s.category for s in train} - {s.category for s in valid})) if valid else ()
    return SplitOverlap(len(groups), max((len(g) for g in groups), default=0), sum(len(g) for g in groups if len(g) > 1),
                        wanted, len(valid), shared / len(valid_sentences) if valid_sentences else 0.0, example, missing)
