"""Training copies of a scenario with its party renamed, consistently through every turn.

Why: a handful of scenarios shows the model the same few names in every call (`[heal: Brenna,
1d8+3]`), and a small model learns the names with the tool. On scenarios it had not seen, the
tuned Gemma 3 270M wrote the starter corpus's names and sentences into other parties' games. A copy
with other names keeps every turn, call and result as written, so what stays constant is what
the DM should learn: when to call which tool, and with whose name.

The copy is made on the file's text and parsed again, so the names change everywhere the parser
would read them (party list, turns, calls, results) and nowhere else; a copy that does not parse
to the same turns is dropped. Only the training split is copied.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from .parse import parse_text
from .scenario import Scenario
from .starter import source_path

# First names across many traditions and styles, none used by the starter corpus or the
# independent evaluation set (tests/test_overlap.py checks both), so a copy always has fresh names.
NAMES = (
    "Abelard", "Adaeze", "Amadou", "Arwel", "Berenike", "Bodhi", "Brisco", "Caius", "Catalina", "Cendrine", "Darius",
    "Eamon", "Efua", "Elif", "Emrys", "Eudo", "Faramund", "Farida", "Finnick", "Gisela", "Gulnara", "Hakon", "Hana",
    "Hrodna", "Ivo", "Jolanta", "Kasimir", "Kaveh", "Keziah", "Kofi", "Leilani", "Leocadia", "Mael", "Malin",
    "Mauritz", "Nikolai", "Nomvula", "Ottokar", "Priya", "Quirin", "Radomir", "Ulla", "Ulrike", "Valdis", "Vasco",
    "Wigbert", "Xenia", "Xiomara", "Yolande", "Zephyrine",
)


# Words of a name that are not the name: "Lady Imogen" is called "Imogen", never "Lady".
HONORIFICS = {"lady", "lord", "sir", "dame", "king", "queen", "prince", "princess", "captain", "brother", "sister",
              "father", "mother", "master", "mistress", "the", "of", "von", "van", "de", "del", "da"}


def _short_names(whole: str) -> list[str]:
    """The words a member may be called by alone: every word of the name but honorifics and particles."""
    return [word for word in whole.split() if len(word) >= 3 and word.lower() not in HONORIFICS and word != whole]


def renamed_text(text: str, scenario: Scenario, rng: random.Random) -> str | None:
    """`text` with every party member renamed to an unused name from NAMES, or None without a party."""
    members = [member.name.strip() for member in scenario.party if member.name.strip()]
    if not members:
        return None
    free = [name for name in NAMES if not re.search(rf"\b{name}\b", text)]
    new = dict(zip(members, rng.sample(free, len(members))))
    for member in list(new):  # "Lady Imogen" -> "Oona", and a lone "Imogen" too
        for word in _short_names(member):
            new.setdefault(word, new[member])
    names = sorted(new, key=len, reverse=True)  # the whole name before its words
    pattern = re.compile(r"\b(" + "|".join(re.escape(name) for name in names) + r")\b")
    return pattern.sub(lambda match: new[match.group(1)], text)


COPY_MARK = "#renamed-"  # a renamed copy's path: its scenario's path, this mark and the copy's number


def original_path(path: str) -> str:
    """The scenario a dataset row comes from: `a.md` for its renamed copy `a.md#renamed-1`."""
    return path.split(COPY_MARK)[0]


def augmented_copies(scenarios: list[Scenario], root: Path, copies: int, seed: int) -> list[Scenario]:
    """`copies` renamed copies of each scenario (a path like `a.md#renamed-1`), seeded, in order."""
    out = []
    for scenario in scenarios:
        source = source_path(root, scenario.path)
        if copies <= 0 or not scenario.party or not source.is_file():
            continue
        text = source.read_text(encoding="utf-8")
        for index in range(1, copies + 1):
            rng = random.Random(f"{seed}:{scenario.path}:{index}")
            changed = renamed_text(text, scenario, rng)
            parsed = parse_text(changed, f"{scenario.path}{COPY_MARK}{index}").scenario if changed else None
            if parsed is None or [t.kind for t in parsed.turns] != [t.kind for t in scenario.turns]:
                continue
            parsed.category, parsed.category_source = scenario.category, scenario.category_source
            parsed.content_sha256 = scenario.content_sha256
            out.append(parsed)
    return out
