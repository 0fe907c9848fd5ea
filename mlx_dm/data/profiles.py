"""Agent profiles: the rules by which an app's parser reads the model's tool calls.

The game has shipped three parsers (../shared/notes/cactus-app.md), and a call one acts on another
drops or throws on: `[roll: perception]` is read by the Cactus-era agent and refused by the newest
command parser, whose `roll` must start with dice notation. A profile is those rules as data, so
`data build` and `validate` can say, before shipping, which calls each parser will act on, drop
(a name it does not accept) or reject (an argument its rule refuses).

    [data.agent_profiles.my-parser]          # in mlx-dm.toml, beside the built-in ones
    tools = ["roll", "damage"]
    case_sensitive = true
    dice_first = ["roll"]                    # these tools' first argument must be dice (1d20+5)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError
from .toolcalls import find_calls

DICE = re.compile(r"^\d+d\d+([+-]\d+)?$")


@dataclass(frozen=True)
class AgentProfile:
    name: str
    tools: tuple[str, ...]  # the names it acts on
    case_sensitive: bool = False  # False: names are lower-cased before the check
    dice_first: tuple[str, ...] = ()  # tools whose first argument must be dice notation

    def verdict(self, name: str, arguments: str) -> str:
        """"acts", "drops" (a name it does not accept) or "rejects" (an argument its rules refuse)."""
        key = name if self.case_sensitive else name.lower()
        accepted = self.tools if self.case_sensitive else tuple(t.lower() for t in self.tools)
        if key not in accepted:
            return "drops"
        first = arguments.strip().split(",")[0].split()[0] if arguments.strip() else ""
        if key in self.dice_first and not DICE.match(first):
            return "rejects"
        return "acts"


# The system text's tool list (data.tools_in_prompt): when the game needs each call and the argument
# form it reads. The app's agent's tools come first, then the game's other tools, in this order.
TOOLS_HEADER = "Tools: write a call in your reply, as [name: argument], only when the game must act."
TOOL_GUIDE: dict[str, tuple[str, str]] = {
    "roll": ("an ability check whose outcome is uncertain, or initiative", "[roll: perception]"),
    "skill_check": ("an ability check (the older name of roll)", "[skill_check: arcana]"),
    "save": ("a saving throw against a trap, spell or effect", "[save: dexterity]"),
    "attack": ("a character attacks", "[attack: goblin, shortsword]"),
    "damage": ("damage after a hit or a failed save", "[damage: 1d8+3]"),
    "heal": ("healing from a spell or a potion", "[heal: Name, 1d8+3]"),
    "spellcast": ("a character casts a spell", "[spellcast: Shield, 1st level, self]"),
    "health": ("hit points change without dice (a fall, poison, rest)", "[health: Name, -4]"),
    "status": ("a condition starts or ends", "[status: Name, poisoned]"),
    "update": ("a note the game keeps (a clue, a coin count)", "[update: Name, note]"),
    "inventory": ("a character uses, spends or hands over an item", "[inventory: Name, -rope]"),
    "add_to_inventory": ("the party gains an item", "[add_to_inventory: Iron key]"),
    "transition": ("the party moves to a new scene", "[transition: night_camp]"),
    "add_to_party": ("someone joins the party", "[add_to_party: Name, who they are]"),
    "charge": ("a price in gold is paid", "[charge: 15]"),
    "award_exp": ("experience after a won fight or a milestone", "[award_exp: 300]"),
}


def tools_prompt(agent_tools: list[str], enabled: bool) -> str:
    """The tool list the system text ends with when `data.tools_in_prompt` is on ("" when off):
    training, validation, chat, the playtest and the app's integration.json all send this text."""
    if not enabled:
        return ""
    names = list(dict.fromkeys([*agent_tools, *TOOL_GUIDE]))
    lines = [TOOLS_HEADER]
    for name in names:
        when, form = TOOL_GUIDE.get(name, ("", f"[{name}: ...]"))
        lines.append(f"- {name} ({when}): {form}" if when else f"- {name}: {form}")
    return "\n".join(lines)


def builtin_profiles(agent_tools: list[str]) -> dict[str, AgentProfile]:
    """The game's three parsers: the Cactus-era agent, the model screen, the command parser."""
    return {
        "cactus-agent": AgentProfile("cactus-agent", tuple(agent_tools)),
        "model-screen": AgentProfile("model-screen", tuple(agent_tools), case_sensitive=True),
        "command-parser": AgentProfile("command-parser", ("roll", "update", "damage", "heal", "status", "inventory"),
                                       dice_first=("roll",)),
    }


def agent_profiles(agent_tools: list[str], custom: dict[str, dict]) -> dict[str, AgentProfile]:
    """The built-in profiles plus those of `data.agent_profiles` (a custom one of the same name wins)."""
    profiles = builtin_profiles(agent_tools)
    for name, rules in (custom or {}).items():
        unknown = set(rules) - {"tools", "case_sensitive", "dice_first"}
        if unknown or not isinstance(rules.get("tools", []), list):
            raise ConfigError(f"agent profile {name!r} in mlx-dm.toml has unknown or malformed keys: {sorted(unknown) or 'tools'}",
                              "write tools = [\"roll\", ...], case_sensitive = true|false, dice_first = [\"roll\"]")
        profiles[name] = AgentProfile(name, tuple(rules.get("tools", agent_tools)), bool(rules.get("case_sensitive", False)),
                                      tuple(rules.get("dice_first", ())))
    return profiles


def profile_report(texts: list[str], profiles: dict[str, AgentProfile]) -> dict[str, dict]:
    """Per profile: how many calls in `texts` it acts on, drops and rejects, with a few of each."""
    # The name as written (find_calls lower-cases it, as the Cactus-era agent does).
    calls = [(call.raw[1:].split(":", 1)[0], call.arguments) for text in texts for call in find_calls(text, 1)]
    report = {}
    for name, profile in profiles.items():
        counts = {"acts": 0, "drops": 0, "rejects": 0}
        examples: dict[str, list[str]] = {"drops": [], "rejects": []}
        for tool, arguments in calls:
            verdict = profile.verdict(tool, arguments)
            counts[verdict] += 1
            shown = f"[{tool}: {arguments.strip()}]"
            if verdict in examples and shown not in examples[verdict] and len(examples[verdict]) < 5:
                examples[verdict].append(shown)
        report[name] = {**counts, "examples": examples}
    return report
