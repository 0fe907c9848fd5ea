"""The parser on each variant of the format and each rule of validation."""

from __future__ import annotations

import textwrap

from mlx_dm.data.parse import clean_text, parse_text
from mlx_dm.data.scenario import DM, TOOLCALL, USER
from mlx_dm.data.toolcalls import APP_CALL_PATTERN, find_look_alikes, match_results

COMMON = """\
# SYSTEM

Role: Dungeon Master
World: Forgotten Realms
Location: Old mill outside Triboar
Party:

- Wren (Gnome Artificer, Level 2, HP: 14/14, AC: 15)
- Okoro (Human Monk, Level 2, HP: 17/17, AC: 16)

# USER

Okoro pushes the mill door open and listens before stepping in.

# DM

Dust hangs in the air. Make a Perception check. [roll: perception]

# TOOLCALL

perception: Okoro rolls 1d20+4 = 11+4 = 15

# DM

With a 15 you catch it: a pair of yellow eyes between the sacks.
"""


def parse(text: str, rel: str = "s.md"):
    return parse_text(textwrap.dedent(text), rel)


def codes(result) -> list[str]:
    return [p.code for p in result.problems]


def test_common_form_metadata_party_turns_and_calls():
    result = parse(COMMON)
    s = result.scenario
    assert result.problems == []
    assert (s.role, s.world, s.location) == ("Dungeon Master", "Forgotten Realms", "Old mill outside Triboar")
    assert [m.name for m in s.party] == ["Wren", "Okoro"]
    assert s.party[0].attributes == {"Race/Class": "Gnome Artificer", "Level": "2", "HP": "14/14", "AC": "15"}
    assert s.party[1].line == 9
    assert [t.kind for t in s.turns] == [USER, DM, TOOLCALL, DM]
    assert [t.line for t in s.turns] == [13, 17, 21, 25]
    call = s.turns[1].calls[0]
    assert (call.name, call.arguments, call.line, call.column) == ("roll", "perception", 17, 49)
    assert s.turns[2].results[0].answers == 0


def test_bold_keys_and_bold_colon_inside():
    result = parse("""\
        # SYSTEM
        **Role**: Dungeon Master
        **World:** Eberron
        **Location** : Sharn
        **Mood**: tense
        # DM
        Hello.
        """)
    s = result.scenario
    assert (s.role, s.world, s.location) == ("Dungeon Master", "Eberron", "Sharn")
    assert s.metadata == {"Mood": "tense"}


def test_party_section_with_name_blocks_and_player_sheet():
    result = parse("""\
        # SYSTEM
        Role: Dungeon Master
        World: Greyhawk
        Location: Hommlet

        ## Player
        - Name: Zara
        - Class: Bard
        - Level: 3

        ## Party
        ### Ilse
        - Class: Wizard
        - HP: 12/12
        ### Marek
        - Class: Barbarian

        # Zara
        Hello there.

        # Gorrik
        "Who's asking?"
        """)
    s = result.scenario
    assert s.player == {"Name": "Zara", "Class": "Bard", "Level": "3"}
    assert [m.name for m in s.party] == ["Ilse", "Marek"]
    assert s.party[0].attributes == {"Class": "Wizard", "HP": "12/12"}
    assert [(t.kind, t.speaker) for t in s.turns] == [(USER, "Zara"), (DM, "Gorrik")]


def test_party_none_marker():
    result = parse("""\
        # SYSTEM
        Role: Dungeon Master
        World: W
        Location: L
        ## Party
        _NONE_
        # DM
        You are alone.
        """)
    assert result.scenario.party_none and result.scenario.party == []


def test_tag_form():
    result = parse("""\
        <SYSTEM>
        Role: Dungeon Master
        World: Faerun
        Location: Inn
        Party: Cato, Pell
        </SYSTEM>
        <User>Hi</User>
        <DM>
        Roll. [roll: insight]
        </DM>
        <TOOLCALL>insight: 16</TOOLCALL>
        """)
    s = result.scenario
    assert s.form == "tags"
    assert [m.name for m in s.party] == ["Cato", "Pell"]
    assert [t.kind for t in s.turns] == [USER, DM, TOOLCALL]
    assert s.turns[1].calls[0].line == 9
    assert result.problems == []


def test_section_level_two_with_title_and_preamble_keys():
    result = parse("""\
        # A title
        World: Dark Sun
        Location: Camp
        Role: Dungeon Master
        ## SYSTEM
        Water matters.
        ## TOOLCALL (if applicable)
        nothing
        ## DM
        The dunes sing.
        ### A deeper heading stays content
        More.
        """)
    s = result.scenario
    assert s.title == "A title" and s.world == "Dark Sun"
    assert s.system_prompt == "Water matters."
    assert s.turns[-1].text.endswith("More.") and "### A deeper" in s.turns[-1].text
    assert "result-without-call" in codes(result)


def test_headings_in_code_fences_are_content():
    result = parse("""\
        # SYSTEM
        Role: Dungeon Master
        World: W
        Location: L
        # DM
        ```
        # USER
        ```
        """)
    assert [t.kind for t in result.scenario.turns] == [DM]


def test_look_alike_calls_reported_with_line_and_column():
    result = parse("""\
        # SYSTEM
        Role: Dungeon Master
        World: W
        Location: L
        # DM
        You leave. [transition wilderness]
        A bard appears [generate character: Bard 1] and [roll: perception
        See [the map](http://x) and [ ] and [He pauses].
        """)
    problems = [p for p in result.problems if p.code == "call-look-alike"]
    assert [(p.line, p.column) for p in problems] == [(6, 12), (7, 16), (7, 49)]
    assert "[transition: wilderness]" in problems[0].hint
    assert "[generate_character: Bard 1]" in problems[1].hint
    assert "closing" in problems[2].hint


def test_call_spanning_lines_is_what_the_app_would_read():
    text = "[roll: perception\nand more]"
    assert APP_CALL_PATTERN.search(text)  # the JS pattern crosses lines; we warn about it
    result = parse("""\
        # SYSTEM
        Role: Dungeon Master
        World: W
        Location: L
        # DM
        Roll [roll: perception
        and then] ok.
        """)
    assert "call-spans-lines" in codes(result)


def test_uppercase_tool_name_warns_and_is_lowercased():
    result = parse("# SYSTEM\nRole: Dungeon Master\nWorld: W\nLocation: L\n# DM\n[ROLL: 1d20+3]\n# TOOLCALL\n[roll: 1d20+3] => 9\n")
    assert result.scenario.calls[0].name == "roll"
    assert codes(result) == ["call-case"]


def test_unanswered_call_and_orphan_result_are_warnings():
    result = parse("""\
        # SYSTEM
        Role: Dungeon Master
        World: W
        Location: L
        # USER
        hi
        # TOOLCALL
        perception: 12
        # DM
        Roll! [roll: stealth]
        # USER
        ok
        """)
    assert codes(result) == ["result-without-call", "call-unanswered"]
    assert result.scenario is not None


def test_errors_no_dm_turn_and_no_sections():
    no_dm = parse("# SYSTEM\nRole: Dungeon Master\n# USER\nhello\n")
    assert no_dm.scenario is None and codes(no_dm)[0] == "no-dm-turn"
    looks_like = parse("Role: Dungeon Master\nThe goblin attacks [roll: initiative]\n")
    assert looks_like.scenario is None and codes(looks_like) == ["no-sections"]
    notes = parse("Just some notes about the campaign.\n")
    assert notes.scenario is None and notes.skipped_reason and notes.problems == []


def test_empty_section_and_missing_keys():
    result = parse("# SYSTEM\nRole: Dungeon Master\n# USER\n\n# DM\nHi.\n")
    assert codes(result) == ["empty-section", "missing-world", "missing-location"]
    assert result.problems[0].line == 3


def test_unknown_category_falls_back_to_inference():
    result = parse("# SYSTEM\nRole: Dungeon Master\nWorld: W\nLocation: L\nCategory: shopping\n# DM\nHi.\n")
    assert codes(result) == ["unknown-category"]
    assert result.scenario.category == "" and result.scenario.metadata["Category"] == "shopping"


def test_cleaning_keeps_meaning():
    raw = "# DM  \r\nShe said \u201chi\u201d [roll: \u201cstealth\u201d]\r\n\r\n\r\n\r\nEnd\u00a0"
    cleaned = clean_text(raw)
    assert cleaned == '# DM\nShe said \u201chi\u201d [roll: "stealth"]\n\nEnd\n'


def test_result_matching_prefers_skill_over_names():
    from mlx_dm.data.scenario import ToolCall

    calls = [ToolCall("inventory", "Brenna, -rope", 1, 1, "[inventory: Brenna, -rope]"),
             ToolCall("roll", "athletics", 1, 2, "[roll: athletics]")]
    assert match_results(calls, [("athletics: Brenna rolls 1d20+5 = 17", 3)]) == [1]
    assert match_results(calls, [("[roll: athletics] => 12", 3)]) == [1]
    dice = [ToolCall("damage", "1d8+3", 1, 1, "[damage: 1d8+3]")]
    assert match_results(dice, [("Okoro deals 1d8+3 = 9", 2)]) == [0]


def test_markdown_links_and_checkboxes_are_not_look_alikes():
    assert find_look_alikes("[link](http://a) - [ ] todo - [x] done - [Aside text]", 1) == []
