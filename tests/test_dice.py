"""The dice simulator: notation, modifiers, advantage, seeds, and calls it cannot resolve."""

from __future__ import annotations

import re

import pytest

from mlx_dm.data.toolcalls import match_results
from mlx_dm.data.scenario import ToolCall
from mlx_dm.dice import DiceError, DiceRoller, modifiers_from_sheet


def test_notation_and_totals():
    roller = DiceRoller(seed=1)
    for expression, low, high in (("1d20+5", 6, 25), ("2d8+3", 5, 19), ("d6", 1, 6), ("3d4 - 2", 1, 10)):
        for _ in range(50):
            roll = roller.roll(expression)
            assert low <= roll.total <= high
            assert roll.total == sum(roll.dice) + roll.modifier


def test_same_seed_same_rolls():
    roller_a, roller_b = DiceRoller(seed=7), DiceRoller(seed=7)
    assert [roller_a.resolve("roll", "perception") for _ in range(5)] == [roller_b.resolve("roll", "perception") for _ in range(5)]
    rolls = {DiceRoller(seed=s).roll("1d20").total for s in range(40)}
    assert len(rolls) > 5


def test_skill_check_uses_the_sheet_and_reads_like_training_data():
    sheet = {"Name": "Okoro", "Perception": "+4", "Dexterity": "16", "Class": "Monk"}
    roller = DiceRoller(seed=3, modifiers=modifiers_from_sheet(sheet), actor="Okoro")
    line = roller.resolve("roll", "perception")
    match = re.fullmatch(r"perception: Okoro rolls 1d20\+4 = (\d+)\+4 = (\d+)", line)
    assert match and int(match.group(2)) == int(match.group(1)) + 4
    stealth = roller.resolve("roll", "stealth")  # from Dexterity 16 -> +3
    assert stealth.startswith("stealth: Okoro rolls 1d20+3 = ")
    # The parser matches the simulator's result to the call, as it does for hand-written ones.
    call = ToolCall("roll", "perception", 1, 1, "[roll: perception]")
    assert match_results([call], [(line, 2)]) == [0]


def test_advantage_and_disadvantage_keep_the_right_die():
    roller = DiceRoller(seed=5)
    for _ in range(30):
        adv = roller.roll("1d20+2", "advantage")
        assert adv.total == max(adv.dice) + 2 and len(adv.dice) == 2
        dis = roller.roll("1d20", "disadvantage")
        assert dis.total == min(dis.dice)
    assert "with advantage = max(" in DiceRoller(seed=1).resolve("roll", "stealth, advantage")


def test_damage_heal_and_attack_lines():
    roller = DiceRoller(seed=2, modifiers={"attack": 5})
    assert re.fullmatch(r"damage: 1d8\+3 = \d\+3 = \d+", roller.resolve("damage", "1d8+3"))
    assert roller.resolve("heal", "Tamsin, 2d8+3").startswith("heal: Tamsin 2d8+3 = ")
    assert roller.resolve("attack", "goblin, longsword").startswith("attack: 1d20+5 against goblin = ")


def test_errors_say_what_is_accepted():
    roller = DiceRoller()
    with pytest.raises(DiceError, match="unknown tool 'teleport'"):
        roller.resolve("teleport", "home")
    with pytest.raises(DiceError, match="not dice notation"):
        roller.roll("1dX")
    with pytest.raises(DiceError, match="between 1 and 100 dice"):
        roller.roll("1000d6")
    with pytest.raises(DiceError, match="no dice expression"):
        roller.resolve("damage", "a lot")
