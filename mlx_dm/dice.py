"""A seeded dice simulator that answers tool calls the way the scenarios' TOOLCALL sections do.

    [roll: perception]        -> perception: Okoro rolls 1d20+4 = 11+4 = 15
    [roll: 2d8+3]             -> roll: 2d8+3 = 5+2+3 = 10
    [roll: stealth, advantage] -> stealth: Tamsin rolls 1d20+7 with advantage = max(4, 16)+7 = 23
    [damage: 1d8+3]           -> damage: 1d8+3 = 6+3 = 9
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

DICE = re.compile(r"^\s*(\d*)d(\d+)\s*((?:[+-]\s*\d+\s*)*)$", re.IGNORECASE)
D20_TOOLS = ("roll", "check", "skill_check", "save", "saving_throw", "attack", "initiative")
DICE_TOOLS = D20_TOOLS + ("damage", "heal")
SKILL_ABILITY = {
    "athletics": "strength", "acrobatics": "dexterity", "sleight of hand": "dexterity", "stealth": "dexterity",
    "arcana": "intelligence", "history": "intelligence", "investigation": "intelligence", "nature": "intelligence",
    "religion": "intelligence", "animal handling": "wisdom", "insight": "wisdom", "medicine": "wisdom",
    "perception": "wisdom", "survival": "wisdom", "deception": "charisma", "intimidation": "charisma",
    "performance": "charisma", "persuasion": "charisma",
}
ABILITIES = ("strength", "dexterity", "constitution", "intelligence", "wisdom", "charisma")


class DiceError(ValueError):
    """A call the simulator cannot resolve; the message says why and what it accepts."""


@dataclass
class Roll:
    expression: str
    dice: list[int]
    modifier: int
    total: int
    detail: str  # "11+4" or "max(4, 16)+7"


class DiceRoller:
    def __init__(self, seed: int | None = 0, modifiers: dict[str, int] | None = None, actor: str = "") -> None:
        self.random = random.Random(seed)
        self.modifiers = {k.lower(): v for k, v in (modifiers or {}).items()}
        self.actor = actor

    def roll(self, expression: str, mode: str = "") -> Roll:
        match = DICE.match(expression)
        if not match:
            raise DiceError(f"'{expression}' is not dice notation; write NdM+K, e.g. 1d20+5 or 2d8+3")
        count = int(match.group(1) or 1)
        sides = int(match.group(2))
        if not (1 <= count <= 100 and 2 <= sides <= 1000):
            raise DiceError(f"'{expression}': between 1 and 100 dice of 2 to 1000 sides, please")
        modifier = sum(int(term.replace(" ", "")) for term in re.findall(r"[+-]\s*\d+", match.group(3) or ""))
        mod_text = f"{modifier:+d}" if modifier else ""
        if mode in ("advantage", "disadvantage") and count == 1 and sides == 20:
            pair = [self.random.randint(1, 20), self.random.randint(1, 20)]
            kept = max(pair) if mode == "advantage" else min(pair)
            word = "max" if mode == "advantage" else "min"
            return Roll(f"1d20{mod_text}", pair, modifier, kept + modifier, f"{word}({pair[0]}, {pair[1]}){mod_text}")
        dice = [self.random.randint(1, sides) for _ in range(count)]
        detail = "+".join(map(str, dice)) + mod_text
        return Roll(f"{count}d{sides}{mod_text}", dice, modifier, sum(dice) + modifier, detail)

    def modifier_for(self, name: str) -> int:
        name = name.lower().strip()
        if name in self.modifiers:
            return self.modifiers[name]
        ability = SKILL_ABILITY.get(name)
        return self.modifiers.get(ability, 0) if ability else 0

    def resolve(self, tool: str, arguments: str) -> str:
        """The TOOLCALL result line for one call, or DiceError for a call it cannot resolve."""
        tool = tool.lower()
        parts = [p.strip() for p in arguments.split(",") if p.strip()]
        mode = next((p.lower() for p in parts if p.lower() in ("advantage", "disadvantage", "adv", "dis")), "")
        mode = {"adv": "advantage", "dis": "disadvantage"}.get(mode, mode)
        parts = [p for p in parts if p.lower() not in ("advantage", "disadvantage", "adv", "dis")]
        if tool not in DICE_TOOLS:
            raise DiceError(f"unknown tool '{tool}': the dice simulator resolves {', '.join(DICE_TOOLS)}; "
                            "other calls (inventory, health, transition, ...) change game state and are only recorded")
        broken = next((p for p in parts if re.match(r"^\d*d\w", p, re.IGNORECASE) and not DICE.match(p)), None)
        if broken is not None:
            raise DiceError(f"'{broken}' is not dice notation; write NdM+K, e.g. 1d20+5 or 2d8+3")
        dice_part = next((p for p in parts if DICE.match(p)), None)
        who = f"{self.actor} rolls " if self.actor else ""
        with_mode = f" with {mode}" if mode else ""
        if dice_part is not None:
            result = self.roll(dice_part, mode)
            target = next((p for p in parts if p is not dice_part), "")
            label = f"{tool}: {target} " if tool == "heal" and target else f"{tool}: "
            return f"{label}{dice_part.replace(' ', '')}{with_mode} = {result.detail} = {result.total}"
        if tool in D20_TOOLS:
            subject = parts[0] if parts else tool
            if tool == "attack":
                modifier, label = self.modifiers.get("attack", 0), "attack"
                against = f" against {parts[0]}" if parts else ""
            else:
                modifier, label, against = self.modifier_for(subject), subject.lower(), ""
            expression = f"1d20{modifier:+d}" if modifier else "1d20"
            result = self.roll(expression, mode)
            return f"{label}: {who}{expression}{with_mode}{against} = {result.detail} = {result.total}"
        raise DiceError(f"[{tool}: {arguments}] has no dice expression; write e.g. [{tool}: 1d8+3]")


def modifiers_from_sheet(sheet: dict[str, str]) -> dict[str, int]:
    """Skill and ability modifiers from a `## Player` sheet (`- Perception: +4`, `- Dexterity: 16`)."""
    out: dict[str, int] = {}
    for key, value in sheet.items():
        name = key.lower().strip()
        number = re.match(r"^\s*([+-]?\d+)", value)
        if not number:
            continue
        n = int(number.group(1))
        if name in ABILITIES and not value.strip().startswith(("+", "-")):
            out[name] = (n - 10) // 2  # an ability score
        elif name in ABILITIES or name in SKILL_ABILITY or name == "attack":
            out[name] = n
    return out
