"""Scoring of DM replies on hand-written outputs, case selection, memory parsing, the validation decision."""

from __future__ import annotations

import pytest

from mlx_dm.errors import ConfigError, DataError

from mlx_dm.config import ValidateConfig
from mlx_dm.evaluate.cases import reply_budget, select_cases, suite_cases, validation_cases
from mlx_dm.evaluate.compat import CompatReport, agent_tool_report, memory_from_logs
from mlx_dm.evaluate.score import (
    Facts,
    aggregate,
    f1_text,
    normalise_arguments,
    score_calls,
    score_context,
    score_interaction,
    ExampleScore,
)
from mlx_dm.evaluate.validate import TUNED_GGUF, TUNED_MLX, BackendEval, ValidationReport, decide
from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT

VOCAB = {"roll", "attack", "damage", "heal", "save", "inventory"}
FACTS = Facts(party=["Tamsin", "Odo"], location="Collapsed watchtower on the High Road", world="Forgotten Realms")
PROMPT = ("<bos><start_of_turn>user\nRole: Dungeon Master\nWorld: Forgotten Realms\n"
          "Location: Collapsed watchtower on the High Road\nParty:\n- Tamsin (Halfling Rogue)\n- Odo (Human Cleric)\n\n"
          "Tamsin creeps up the stairs.<end_of_turn>\n<start_of_turn>model\n")
REFERENCE = "Tamsin, something shifts above. Make a Perception check. [roll: perception]"


def example(output: str, reference: str = REFERENCE, category: str = "exploration") -> ExampleScore:
    return ExampleScore("case", category, "suite", output, reference, score_calls(reference, output, VOCAB),
                        score_context(PROMPT, reference, output, FACTS),
                        score_interaction(output, "Tamsin creeps up the stairs.", FACTS))


def test_right_call_scores_full_marks():
    score = score_calls(REFERENCE, "Tamsin hears a scrape. Roll Perception. [roll: Perception ]", VOCAB)
    assert (score.name_matches, score.argument_matches, score.exact) == (1, 1, True)


def test_wrong_skill_is_the_right_tool_with_the_wrong_argument():
    score = score_calls(REFERENCE, "Roll for it. [roll: stealth]", VOCAB)
    assert (score.name_matches, score.argument_matches, score.exact) == (1, 0, False)


def test_missing_call_and_call_where_none_belongs():
    missing = aggregate([example("Tamsin sees nothing.")])
    assert missing["tool_recall"] == 0.0 and missing["tool_f1"] == 0.0 and missing["call_detection"] == 0.0
    extra = aggregate([example("The road is quiet. [roll: perception]", reference="The road is quiet.")])
    assert extra["false_call_rate"] == 1.0 and extra["tool_precision"] == 0.0
    quiet = aggregate([example("The road is quiet.", reference="The road is quiet.")])
    assert quiet["tool_f1"] is None and quiet["tool_exact_match"] == 1.0 and quiet["false_call_rate"] == 0.0


def test_an_f1_over_no_calls_reads_not_applicable():
    """No call on either side: not a perfect 1.000 (a `--dev` run's random model read as one)."""
    quiet = aggregate([example("The road is quiet.", reference="The road is quiet.")])
    assert f1_text(quiet) == "n/a (no calls)"
    assert f1_text(aggregate([example("Tamsin sees nothing.")])) == "0.000"
    right = aggregate([example("Tamsin hears a scrape. [roll: perception]")])
    assert f1_text(right) == "1.000" and (right["reference_calls"], right["predicted_calls"]) == (1, 1)


def test_malformed_and_unknown_calls_are_reported():
    score = score_calls(REFERENCE, "Roll! [roll perception] and [summon: dragon]", VOCAB)
    assert score.malformed == ["[roll perception]"] and score.unknown_tools == ["summon"]
    assert not score.exact
    agg = aggregate([example("Roll! [roll perception] and [summon: dragon]")])
    assert agg["syntax_valid"] == 0.5 and agg["unknown_tools"] == ["summon"]


def test_dice_arguments_normalise():
    assert normalise_arguments(" 1D8 + 3 ") == normalise_arguments("1d8+3") == "1d8+3"
    assert normalise_arguments("d20+5") == "1d20+5"
    assert normalise_arguments("Brenna,  1d8+3") == "brenna,1d8+3"


def test_context_uses_party_and_flags_invented_names_and_speakers():
    good = score_context(PROMPT, REFERENCE, "Tamsin, the stairs creak. [roll: perception]", FACTS)
    assert good.expected == ["Tamsin"] and good.mentioned == ["Tamsin"] and good.new_names == []
    invented = score_context(PROMPT, REFERENCE, "Gorbag: Who goes there? Elminster steps out of the dark.", FACTS)
    assert invented.mentioned == [] and "Gorbag" in invented.invented_speakers and "Elminster" in invented.new_names


def test_interaction_rules():
    assert score_interaction("Tamsin, you see a shadow move.", "Tamsin creeps up.", FACTS).problems == []
    leak = score_interaction("The door opens.<end_of_turn>\n<start_of_turn>user", "Tamsin creeps up.", FACTS)
    assert not leak.in_role and "template tokens" in leak.problems[0]
    fake_dice = score_interaction("Tool results:\nperception: 18", "Tamsin creeps up.", FACTS)
    assert not fake_dice.in_role
    assistant = score_interaction("As an AI language model I cannot roll dice.", "Tamsin creeps up.", FACTS)
    assert not assistant.in_role
    agency = score_interaction("You decide to jump into the pit.", "Tamsin creeps up.", FACTS)
    assert not agency.respects_agency
    speaking_for = score_interaction("Odo: I will heal you!", "Tamsin creeps up.", FACTS)
    assert not speaking_for.respects_agency
    ignores = score_interaction("The mountains are tall.", "Tamsin creeps up.", FACTS)
    assert not ignores.addresses_actor
    assert not score_interaction("", "Tamsin creeps up.", FACTS).well_formed


def test_aggregate_counts_per_call():
    scores = [example("Tamsin: [roll: perception]"), example("Nothing here."),
              example("[attack: goblin, dagger]", reference="[attack: goblin, dagger] [damage: 1d4+3]")]
    agg = aggregate(scores)
    # 2 predicted, both right; 4 expected (the second case expected a call too)
    assert agg["tool_precision"] == 1.0 and agg["tool_recall"] == 0.5
    assert abs(agg["tool_f1"] - 2 / 3) < 1e-9 and agg["call_detection"] == 2 / 3


def test_the_f1_interval_draws_scenarios_and_brackets_the_f1():
    from dataclasses import replace

    from mlx_dm.evaluate.score import f1_interval

    right, wrong = example(REFERENCE), example("Tamsin reaches the top.")
    scores = [replace(right if i % 3 else wrong, case=f"s{i}.md#1") for i in range(12)]
    low, high = aggregate(scores)["tool_f1_interval"]
    assert low < aggregate(scores)["tool_f1"] < high <= 1.0
    assert f1_interval(scores) == f1_interval(scores)  # seeded: the same report twice
    assert f1_interval([replace(right, case=f"s{i}.md#1") for i in range(5)]) == [1.0, 1.0]
    assert f1_interval([replace(s, case="one.md#1") for s in scores]) is None  # one scenario: nothing to draw


def test_by_tool_says_which_tools_a_model_misses_and_invents():
    from mlx_dm.evaluate.score import by_tool

    scores = [example(REFERENCE), example("No call."), example("Here. [roll: stealth] [status: prone]")]
    assert by_tool(scores) == {"roll": {"reference": 3, "predicted": 2, "matched": 2},
                               "status": {"reference": 0, "predicted": 1, "matched": 0}}


def test_suite_cases_cover_categories_and_expected_calls():
    cases = suite_cases()
    assert {c.category for c in cases} == {"combat", "exploration", "roleplay"}
    assert sum("[" in c.reference for c in cases) >= 8 and sum("[" not in c.reference for c in cases) >= 3
    assert all(c.prompt.endswith("<start_of_turn>model\n") for c in cases)
    assert any(c.facts.party for c in cases)


def test_select_cases_is_balanced_and_deterministic():
    cases = suite_cases()
    chosen = select_cases(cases, 6)
    assert len(chosen) == 6 and {c.category for c in chosen} == {"combat", "exploration", "roleplay"}
    assert [c.case for c in chosen] == [c.case for c in select_cases(cases, 6)]
    assert select_cases(cases, 0) == cases


def test_validation_cases_carry_facts(tmp_path):
    import json

    record = {"path": "a.md", "category": "combat", "facts": {"party": ["Brenna"], "location": "Mill", "world": "FR"},
              "messages": [{"role": "user", "content": "Brenna attacks."}, {"role": "assistant", "content": "[attack: x, y]"}]}
    (tmp_path / "valid.jsonl").write_text(json.dumps(record) + "\n")
    (case,) = validation_cases(tmp_path)
    assert case.facts.party == ["Brenna"] and case.reference == "[attack: x, y]" and case.last_user_message == "Brenna attacks."


def test_memory_is_read_from_llama_cpp_logs():
    lines = ["llama_kv_cache:        CPU KV buffer size =     1.00 MiB\n",
             "llama_kv_cache: size =    1.00 MiB (  2048 cells,   4 layers,  1/1 seqs), K (f16):    0.50 MiB\n",
             "llama_kv_cache: size =    4.00 MiB (  2048 cells,  16 layers,  1/1 seqs), K (f16):    2.00 MiB\n",
             "llama_context:        CPU  output buffer size =     1.00 MiB\n",
             "sched_reserve:        CPU compute buffer size =    52.50 MiB\n"]
    kv, compute = memory_from_logs(lines)
    assert kv == 5 * 2**20 and compute == int(53.5 * 2**20)


def test_agent_report_acts_drops_and_unparseable():
    report = agent_tool_report(["[roll: perception] [spellcast: fire bolt, wolf] [transition wilderness]"], ["roll"])
    assert report["tools"]["roll"]["agent"] == "acts" and report["tools"]["spellcast"]["agent"] == "drops"
    assert report["unparseable"] == ["[transition wilderness]"] and (report["acts"], report["drops"]) == (1, 1)


def _report(gguf_output: str, mlx_output: str, compat: CompatReport) -> ValidationReport:
    evaluations = [BackendEval(TUNED_GGUF, [example(gguf_output)], 1.0), BackendEval(TUNED_MLX, [example(mlx_output)], 1.0)]
    return ValidationReport("m.gguf", 1, evaluations, compat, None, {})


def _compat(**overrides) -> CompatReport:
    values = dict(gguf="m.gguf", loads=True, template_renders_training_text=True, end_of_turn_is_eog=True,
                  eos_token="<eos>", n_ctx=2048, context_ok=True,
                  memory={"fits": True, "total_bytes": 1e9, "budget_bytes": 3e9})
    values.update(overrides)
    return CompatReport(**values)


def test_decide_passes_a_good_model_and_names_what_fails():
    good = _report(REFERENCE, REFERENCE, _compat())
    decide(good, ValidateConfig())
    assert good.passed, [c for c in good.checks if not c.passed]
    drift = _report("Nothing.", REFERENCE, _compat(memory={"fits": False, "total_bytes": 4e9, "budget_bytes": 3e9}))
    decide(drift, ValidateConfig())
    failed = {c.name for c in drift.failed}
    assert {"tool-call F1", "GGUF tool-call F1 vs tuned MLX", "fits a 6 GB phone"} <= failed


def test_the_drift_check_refuses_a_real_loss_not_the_noise_of_few_cases():
    """The GGUF against the tuned MLX model on the same 30 scenarios, paired: one call fewer is
    noise and passes, ten fewer is a loss and fails (score.paired_f1_drop, as the export's choice)."""
    from dataclasses import replace

    def scored(hits: int) -> list:
        return [replace(example(REFERENCE if i < hits else "Nothing."), case=f"s{i}.md#1") for i in range(30)]

    for hits, passes in ((29, True), (20, False)):
        report = ValidationReport("m.gguf", 30, [BackendEval(TUNED_GGUF, scored(hits), 1.0),
                                                 BackendEval(TUNED_MLX, scored(30), 1.0)], _compat(), None, {})
        decide(report, ValidateConfig())
        check = next(c for c in report.checks if c.name == "GGUF tool-call F1 vs tuned MLX")
        assert check.passed == passes and check.value > 0 and "lower bound" in check.detail, check


def test_dev_profile_keeps_compatibility_checks_only():
    report = _report("Nothing.", REFERENCE, _compat(eos_token="<bos>"))
    decide(report, ValidateConfig(quality_thresholds=False))
    assert [c.name for c in report.failed] == ["end-of-sequence token"] and report.notes


def test_a_users_own_cases_folder_is_scored_and_files_training_has_are_left_out(tmp_path):
    from mlx_dm.evaluate.cases import user_cases

    training = tmp_path / "ai-training"
    own = tmp_path / "held-out"
    for folder in (training, own):
        folder.mkdir()
    text = ("# SYSTEM\nRole: Dungeon Master\nWorld: W\nLocation: L\n\n# USER\nI listen at the door.\n\n"
            "# DM\nMake a check. [roll: perception]\n\n# TOOLCALL\nperception: 14\n\n# DM\nVoices, two of them.\n")
    (training / "door.md").write_text(text)
    (own / "door-copy.md").write_text(text)  # the same bytes as a training file
    (own / "cellar.md").write_text(text.replace("the door", "the cellar hatch"))
    (own / "README.md").write_text("# Held-out scenarios\nNotes for the team.\n")
    cases, left_out = user_cases(own, training)
    assert left_out == [str(own / "door-copy.md")]
    assert len(cases) == 2 and all(case.case.startswith("cases/held-out/cellar.md#") for case in cases)
    assert {case.source for case in cases} == {"cases/held-out"}
    with pytest.raises(DataError, match="no folder of cases"):
        user_cases(tmp_path / "missing", training)


REAL_APP = ROOT.parent / "shared" / "real-app" / "ai-training"


@pytest.mark.skipif(not REAL_APP.is_dir(), reason="the game's real files (../shared/real-app) are not beside this checkout")
def test_the_games_real_files_parse_as_cases_as_they_are_written():
    from mlx_dm.evaluate.cases import user_cases

    cases, left_out = user_cases(REAL_APP, STARTER_DIR)
    assert not left_out and len(cases) >= 25  # 30 DM turns, less those that open a file with no turn before them
    assert len({case.case.split("#")[0] for case in cases}) == 10


def test_a_long_reference_reply_gets_room_for_its_calls_up_to_the_apps_n_predict():
    tail = " [roll: perception]"
    assert reply_budget("Make a Perception check." + tail, 96, 256) == 96
    assert reply_budget("x" * 600, 96, 256) == 200  # three characters a token: room for the reference's length
    assert reply_budget("x" * 2000, 96, 256) == 256 and reply_budget("x" * 2000, 96, 0) == 96


@pytest.mark.skipif(not REAL_APP.is_dir(), reason="the game's real files (../shared/real-app) are not beside this checkout")
def test_every_call_of_the_games_files_lies_within_its_cases_budget():
    # Their replies are long with the call late: a fixed 96 tokens (~4 characters each) stops short of half of them.
    from mlx_dm.evaluate.cases import user_cases

    cases, _ = user_cases(REAL_APP, STARTER_DIR)
    offsets = [(case.reference.index("[" + name), case.reference) for case in cases
               for name, _ in score_calls(case.reference, "", VOCAB).reference]
    assert sum(offset > 96 * 4 for offset, _ in offsets) >= len(offsets) // 3
    assert all(offset + len("[roll: perception]") <= 4 * reply_budget(reference, 96, 256) for offset, reference in offsets
               if offset < 256 * 4)


def test_agent_profiles_say_which_calls_each_parser_acts_on_drops_or_rejects(tmp_path):
    from mlx_dm.config import load_config
    from mlx_dm.data.profiles import agent_profiles, profile_report

    (tmp_path / "mlx-dm.toml").write_text('[data.agent_profiles.dice-only]\ntools = ["roll"]\ndice_first = ["roll"]\n')
    config = load_config(tmp_path)
    profiles = agent_profiles(config.data.agent_tools, config.data.agent_profiles)
    assert list(profiles) == ["cactus-agent", "model-screen", "command-parser", "dice-only"]
    replies = ["Make a check. [roll: perception]", "Roll to hit. [roll: 1d20+5]", "[Heal: Brakka, 1d8+3]", "[spellcast: Fireball]"]
    report = profile_report(replies, profiles)
    assert {k: report["cactus-agent"][k] for k in ("acts", "drops", "rejects")} == {"acts": 3, "drops": 1, "rejects": 0}
    assert report["model-screen"]["drops"] == 2  # "Heal" is not "heal" to a case-sensitive parser
    assert report["command-parser"]["rejects"] == 1 and report["command-parser"]["examples"]["rejects"] == ["[roll: perception]"]
    assert report["dice-only"] == {"acts": 1, "drops": 2, "rejects": 1,
                                   "examples": {"drops": ["[Heal: Brakka, 1d8+3]", "[spellcast: Fireball]"],
                                                "rejects": ["[roll: perception]"]}}
    (tmp_path / "mlx-dm.toml").write_text('[data.agent_profiles.bad]\ntool = ["roll"]\n')
    with pytest.raises(ConfigError, match="agent profile 'bad'"):
        agent_profiles([], load_config(tmp_path).data.agent_profiles)


def test_the_memory_check_reports_each_phone_tier_it_fits():
    from mlx_dm.evaluate.compat import PHONE_TIERS, MemoryEstimate

    # E2B's budget-mix export at n_ctx 2048, in round figures: 1.99 GB file, 0.1 GB KV cache, 0.3 GB buffers.
    e2b = MemoryEstimate(1_990_000_000, 100_000_000, 300_000_000, 2048, 3_000_000_000, 6.0)
    tiers = {t["ram_gb"]: t["fits"] for t in e2b.to_dict()["tiers"]}
    assert tiers == {4.0: False, 6.0: True, 8.0: True, 12.0: True}
    assert len(e2b.tiers()) == len(PHONE_TIERS) and e2b.fits
