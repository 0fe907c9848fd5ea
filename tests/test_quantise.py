"""Quantisation: llama.cpp's own tools built from the pinned sdist, the importance matrix from the
training scenarios, sizes known before writing, and the choice under the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGUFReader

from mlx_dm.data.render import BOS
from mlx_dm.data.starter import STARTER_DIR
from mlx_dm.errors import ExportError
from mlx_dm.export.choose import BUDGET_MIX, Candidate, coarse_f1_notes, pick, plan_candidates
from mlx_dm.export.gguf import convert_to_gguf, estimated_size, gguf_metadata, quantize
from mlx_dm.export.imatrix import calibration_text, compute_imatrix
from mlx_dm.llama.tools import TOOLS, llama_tool, tools_dir


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory) -> Path:
    from mlx_dm.model.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp("quantise")
    base = build_tiny_model(folder / "tiny", STARTER_DIR)
    return convert_to_gguf(base, folder / "tiny-f16.gguf", "f16", model_name="dm-tiny v3")


@pytest.fixture(scope="module")
def calibration(tiny_f16) -> str:
    return "\n".join(path.read_text() for path in sorted(STARTER_DIR.rglob("*.md"))[:12])


def test_the_tools_are_built_once_into_the_cache_for_this_build():
    for name in TOOLS:
        path = llama_tool(name)
        assert path.is_file() and path.parent == tools_dir()
    assert llama_tool("llama-quantize").stat().st_mtime == (tools_dir() / "llama-quantize").stat().st_mtime
    with pytest.raises(ValueError):
        llama_tool("llama-server")


def test_general_name_is_the_models_own(tiny_f16, tmp_path):
    assert gguf_metadata(tiny_f16)["general.name"] == "dm-tiny v3"  # the converter's own guess was "Fused"
    out = quantize(tiny_f16, tmp_path / "q8.gguf", "Q8_0")
    assert gguf_metadata(out)["general.name"] == "dm-tiny v3"


def test_the_importance_matrix_changes_how_weights_are_rounded(tiny_f16, calibration, tmp_path):
    """Without the matrix reaching llama-quantize the two files would be identical."""
    matrix = compute_imatrix(tiny_f16, calibration, tmp_path / "imatrix.gguf", chunks=4, n_ctx=256)
    assert matrix.stat().st_size > 0 and not list(tmp_path.glob(".*partial"))
    plain = quantize(tiny_f16, tmp_path / "plain.gguf", "Q4_K_M")
    weighted = quantize(tiny_f16, tmp_path / "weighted.gguf", "Q4_K_M", imatrix=matrix)
    meta = gguf_metadata(weighted)
    assert meta["quantize.imatrix.chunks_count"] >= 4 and meta["quantize.imatrix.entries_count"] > 100
    assert "quantize.imatrix.file" not in gguf_metadata(plain)
    plain_tensors, weighted_tensors = (GGUFReader(str(path)).tensors for path in (plain, weighted))
    assert [(t.name, t.tensor_type) for t in plain_tensors] == [(t.name, t.tensor_type) for t in weighted_tensors]
    rounded_otherwise = [t.name for t, u in zip(plain_tensors, weighted_tensors) if bytes(t.data) != bytes(u.data)]
    assert any(name.endswith("ffn_down.weight") for name in rounded_otherwise), rounded_otherwise


def test_short_calibration_text_is_repeated_to_two_chunks(tiny_f16, tmp_path):
    matrix = compute_imatrix(tiny_f16, "The goblin snarls. [roll: perception]", tmp_path / "short.gguf", chunks=2)
    assert matrix.stat().st_size > 0


def test_dry_run_sizes_match_the_written_files(tiny_f16, tmp_path):
    for quant, types in (("Q4_K_M", None), ("Q8_0", None), ("Q4_K_M", BUDGET_MIX)):
        predicted = estimated_size(tiny_f16, quant, types)
        written = quantize(tiny_f16, tmp_path / f"{quant}-{bool(types)}.gguf", quant, tensor_types=types).stat().st_size
        assert abs(predicted - written) / written < 0.01, (quant, types, predicted, written)


def test_plan_applies_the_budget_mix_to_k_types_only(tiny_f16):
    stock = {c.quant: c.size_bytes for c in plan_candidates(tiny_f16, ["Q4_K_M", "Q8_0"], None)}
    budget = stock["Q4_K_M"] - 1
    planned = {c.quant: c for c in plan_candidates(tiny_f16, ["q4_k_m", "Q8_0", "Q4_K_M"], budget)}
    assert sorted(planned) == ["Q4_K_M", "Q8_0"]  # names normalised, duplicates dropped
    assert planned["Q4_K_M"].tensor_types == BUDGET_MIX and planned["Q4_K_M"].size_bytes < budget
    assert planned["Q8_0"].tensor_types is None and planned["Q8_0"].size_bytes > budget  # kept, unwritten, for the report


def test_quantize_names_a_bad_tensor_type(tiny_f16, tmp_path):
    with pytest.raises(ExportError, match="unknown tensor type"):
        quantize(tiny_f16, tmp_path / "bad.gguf", "Q4_K_M", tensor_types={"x": "Q9"})


def _scored(quant: str, size: int, kl: float, drop_lower: float | None = -0.05) -> Candidate:
    return Candidate(quant, None, size, path=Path(f"{quant}.gguf"), tool_f1=0.5, mean_kl=kl,
                     f1_drop=None if drop_lower is None else drop_lower + 0.05, f1_drop_lower=drop_lower)


def test_pick_keeps_the_smallest_close_to_f16_by_kl_and_not_significantly_worse_in_f1():
    # The real 270M's frontier (KL from f16, nats per reply position), Q8_0 over the budget.
    candidates = [_scored("Q3_K_M", 242, 0.145), _scored("Q4_K_M", 253, 0.067), _scored("Q5_K_S", 258, 0.029),
                  _scored("Q6_K", 283, 0.010), Candidate("Q8_0", None, 292)]
    chosen, reason = pick(candidates, 0.05)
    assert chosen.quant == "Q5_K_S" and "smallest file within KL 0.05" in reason and "not significantly below" in reason
    candidates[2].f1_drop_lower = 0.01  # the paired bootstrap says Q5_K_S lost calls: the next one is kept
    assert pick(candidates, 0.05)[0].quant == "Q6_K"
    chosen, reason = pick(candidates, 0.005)  # none that close: the closest by KL
    assert chosen.quant == "Q6_K" and "closest by KL" in reason
    assert pick([_scored("Q4_K_M", 253, 0.067, None)], 0.1)[0].quant == "Q4_K_M"  # no calls either side: KL decides


def test_the_paired_bootstrap_tells_a_real_loss_from_the_noise_of_few_cases():
    from mlx_dm.evaluate.score import CallScore, ExampleScore, paired_f1_drop

    def scores(hits: list[bool]) -> list[ExampleScore]:
        return [ExampleScore(f"s{i}.md#1", "combat", "validation", "", "",
                             CallScore([("roll", "stealth")], [("roll", "stealth")] if hit else [], int(hit), 0, [], []),
                             None, None) for i, hit in enumerate(hits)]

    reference = scores([True] * 30)
    drop, lower = paired_f1_drop(reference, scores([True] * 20 + [False] * 10))
    assert drop > 0.15 and lower > 0  # ten calls fewer of thirty: significantly below
    drop, lower = paired_f1_drop(reference, scores([True] * 29 + [False]))
    assert 0 < drop < 0.05 and lower <= 0  # one call fewer: within the noise
    assert paired_f1_drop(scores([False] * 3), scores([False] * 3)) is not None
    assert paired_f1_drop(reference, reference)[1] == 0


def test_calibration_is_the_training_split_without_bos(tmp_path):
    messages = [{"role": "user", "content": "I open the door."}, {"role": "assistant", "content": "It creaks. [roll: perception]"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"messages": messages}) for _ in range(2)) + "\n")
    text = calibration_text(tmp_path)
    assert BOS not in text and text.count("<start_of_turn>model\nIt creaks. [roll: perception]<end_of_turn>") == 2
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(ExportError, match="no training conversations"):
        calibration_text(tmp_path)


def test_without_cases_the_choice_is_the_largest_candidate_that_fits(tiny_f16, tmp_path):
    """Nothing to measure on: one file, the most faithful that fits, and the report says why."""
    from mlx_dm.export.choose import choose_quant

    made = []

    def make(path, what, build):
        made.append(path.name)
        return build()

    choice = choose_quant(tiny_f16, tmp_path, "dm", ["Q4_K_M", "Q8_0"], None, None, [], set(), 0.05, 8, 256, make)
    assert choice.chosen.quant == "Q8_0" and made == ["dm-Q8_0.gguf"] and "no held-out cases" in choice.reason
    assert [c.quant for c in choice.candidates] == ["Q4_K_M", "Q8_0"] and choice.candidates[0].path is None


def test_teacher_forced_agreement_orders_the_types_by_what_they_keep(tiny_f16, tmp_path):
    """f16 against itself agrees everywhere; Q8_0 stays closer to f16 than Q4_K_M does."""
    from mlx_dm.evaluate.cases import independent_cases
    from mlx_dm.export.agreement import agreement, f16_reference

    reference = f16_reference(tiny_f16, independent_cases(), max_reply_tokens=16, max_cases=4)
    assert len(reference.sequences) == 4 and all(len(ids) > start for ids, start in reference.sequences)
    assert sum(p.shape[0] for p in reference.log_probs) == sum(len(ids) - start for ids, start in reference.sequences)
    itself = agreement(tiny_f16, reference)
    assert itself.same_top1 == 1.0 and abs(itself.mean_kl) < 1e-3 and itself.positions > 16
    q8, q4 = (agreement(quantize(tiny_f16, tmp_path / f"{q}.gguf", q), reference) for q in ("Q8_0", "Q4_K_M"))
    assert 0 < q8.mean_kl < q4.mean_kl and q4.same_top1 <= q8.same_top1 <= 1.0


def test_a_note_says_when_f1_ranks_the_types_against_their_distance_from_f16():
    close = Candidate("Q8_0", None, 300, path=Path("q8.gguf"), tool_f1=0.12, mean_kl=0.004)
    far = Candidate("Q6_K", None, 280, path=Path("q6.gguf"), tool_f1=0.18, mean_kl=0.010)
    (note,) = coarse_f1_notes([far, close], 0.02)
    assert "Q8_0, closer to f16 (KL 0.0040), scored 12.0 against Q6_K's 18.0" in note and "choice_cases" in note
    close.tool_f1 = 0.17
    assert coarse_f1_notes([far, close], 0.02) == []  # within the tolerance: no contradiction


def test_an_unknown_type_stops_a_run_before_it_trains(tmp_path):
    """`--quant` is only used at export, hours in: a typo must fail first, with the types to choose from."""
    import subprocess
    import sys

    from .test_train import make_project

    project = make_project(tmp_path, n_files=4)
    result = subprocess.run([sys.executable, "-m", "mlx_dm", "-C", str(project), "run", "--dev", "--quant", "Q9_X"],
                            capture_output=True, text=True, timeout=300)
    said = " ".join(result.stderr.split())
    assert result.returncode == 6 and "unknown quantisation type Q9_X" in said and "Q4_K_M" in said, said
    assert not list(project.glob("runs/*-train"))  # no training began
