"""Export: the whole pipeline on the tiny model, GGUF checks, parity, placement, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_dm import bench
from mlx_dm.data.grammar import gbnf
from mlx_dm.errors import ExportError
from mlx_dm.export.fuse import check_adapter
from mlx_dm.export.gguf import gguf_metadata, quantize
from mlx_dm.app_config import cactus_snippet
from mlx_dm.registry import next_version
from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT
from .test_train import make_project


def cli(project: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlx_dm", "-C", str(project), *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("export"), n_files=10)
    result = cli(project, "run", "--dev", "--max-steps", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    return project, result


@pytest.mark.slow
def test_run_dev_places_a_checked_gguf_with_cactus_config(exported):
    project, result = exported
    models = project / "assets" / "models"
    ggufs = sorted(models.glob("*.gguf"))
    run = next((project / "runs").glob("*-train"))
    chosen = json.loads((run / "export" / "export-report.json").read_text())["choice"]["chosen"]["quant"]
    assert [p.name for p in ggufs] == [f"dm-tiny-gemma3n-v1-{chosen}.gguf"]
    manifest = json.loads((models / "manifest.json").read_text())["current"]
    assert manifest["quant"] == chosen and manifest["size_bytes"] == ggufs[0].stat().st_size
    assert manifest["base_model"] == "tiny" and len(manifest["sha256"]) == 64
    config = json.loads((models / "cactus-config.json").read_text())
    assert config["loader"] == "CactusLM" and config["mmprojPath"] is None and "<end_of_turn>" in config["stop"]
    assert (project / config["modelAsset"]).exists()
    snippet = (models / "cactus-config.ts").read_text()
    assert f"require('../assets/models/dm-tiny-gemma3n-v1-{chosen}.gguf')" in snippet and "mmprojPath" not in snippet.split("no mmprojPath")[1]
    assert "export const modelPath" in result.stdout and "initLlama({ model: modelPath" in result.stdout
    # One output per runtime, each naming files that exist.
    llama_rn = (models / "llama-rn.ts").read_text()
    assert "import { initLlama } from 'llama.rn';" in llama_rn and "jinja: true" in llama_rn
    for asset in re.findall(r"require\('\.\./(assets/models/[^']+)'\)", llama_rn + snippet):
        assert (project / asset).is_file(), asset
    screen = json.loads((models / "integration.json").read_text())
    assert (project / screen["model"]["asset"]).is_file() and screen["model"]["sha256"] == manifest["sha256"]
    # The app's tool grammar beside the model: named for the game's screen, passed in llama.rn's lines.
    grammar = models / "dm-tiny-gemma3n-v1.gbnf"
    assert screen["tools"]["grammar"] == f"assets/models/{grammar.name}"
    assert grammar.read_text() == gbnf(screen["tools"]["supported"])
    assert "grammar: toolGrammar" in llama_rn and f"export const toolGrammar = {json.dumps(grammar.read_text())};" in llama_rn
    assert screen["tools"]["supported"] == ["roll", "update", "damage", "heal", "status", "inventory", "skill_check"]
    assert screen["system_prompt"].startswith("Role: Dungeon Master\nWorld: {world}")
    assert all((project / path).is_file() for path in screen["runtimes"].values())
    meta = gguf_metadata(ggufs[0])
    assert meta["general.architecture"] == "gemma3n" and meta["general.name"] == "dm-tiny-gemma3n v1"
    assert meta["quantize.imatrix.chunks_count"] >= 2  # quantised with the matrix of the training scenarios


@pytest.mark.slow
def test_run_chooses_the_quantisation_by_measurement_on_held_out_cases(exported):
    """The dev profile's two candidates, both under the budget, each scored on the same cases as f16."""
    project, result = exported
    run = next((project / "runs").glob("*-train"))
    report = json.loads((run / "export" / "export-report.json").read_text())
    choice = report["choice"]
    assert [c["quant"] for c in choice["candidates"]] == ["Q4_K_M", "Q8_0"]  # smallest first
    assert choice["cases"] == 8 and choice["reference_f1"] is not None and choice["imatrix"].endswith("imatrix.gguf")
    for candidate in choice["candidates"]:
        assert Path(candidate["path"]).is_file() and candidate["tool_f1"] is not None
        assert 0 <= candidate["identical"] <= 1 and candidate["size_bytes"] == Path(candidate["path"]).stat().st_size
        assert 0 < candidate["same_top1"] <= 1 and candidate["mean_kl"] > -1e-3  # teacher-forced against f16
    assert choice["forced_positions"] > 8
    assert choice["chosen"]["quant"] == report["quant"] and "KL" in choice["reason"] and choice["max_kl"] == 0.05
    for candidate in choice["candidates"]:  # the paired bootstrap against f16 on the same cases
        assert candidate["f1_drop"] is None or candidate["f1_drop_lower"] <= candidate["f1_drop"]
    said = " ".join(result.stdout.split())
    assert "quantisation: 8 held-out cases" in said and "chose " in said
    markdown = (run / "export" / "export-report.md").read_text()
    assert "| Q8_0" in markdown and "| Q4_K_M" in markdown and "importance matrix" in markdown
    assert (run / "export" / "quantisation.png").stat().st_size > 5000


@pytest.mark.slow
def test_export_report_parity_and_checks(exported):
    project, _ = exported
    run = next((project / "runs").glob("*-train"))
    report = json.loads((run / "export" / "export-report.json").read_text())
    f16_check, q_check = report["checks"]
    for check in (f16_check, q_check):
        assert check["loads"] and check["architecture"] == "gemma3n"
        assert check["chat_template_matches"] and check["has_end_of_turn"] and check["problems"] == []
    f16_parity, q_parity = report["parity"]
    # The f16 file holds the trained weights: it predicts what MLX predicts, and writes what MLX writes.
    assert f16_parity["argmax_agreement"] >= 0.97
    assert f16_parity["max_logit_diff"] < 0.2  # measured: 0.04 over 8 scenario prompts
    # Greedy continuations are equal (measured: all of them). Two correct implementations that round
    # differently can only part where MLX's top two logits are closer than the measured difference:
    # such a tie is reported, and tolerated, never anything else.
    for divergence in f16_parity["greedy_divergences"]:
        assert divergence["mlx_margin"] < f16_parity["max_logit_diff"], divergence
    # What is left once MLX uses llama.cpp's sample-std sparsity cut-off is f16 arithmetic.
    assert f16_parity["llama_cpp_std_max_logit_diff"] < 0.1  # measured: 0.02
    assert f16_parity["llama_cpp_std_max_logit_diff"] < f16_parity["max_logit_diff"]
    assert (run / "export" / "export-report.md").read_text().count("|") > 20


def test_f32_gguf_computes_the_mlx_graph_up_to_llama_cpps_conventions(tmp_path):
    """The converted graph is the trained one: an f32 GGUF with an f32 KV cache matches MLX to float32
    rounding once MLX uses llama.cpp's two numeric conventions, and those conventions are what
    separates them otherwise (so the check would see a real difference)."""
    import mlx.core as mx
    import numpy as np
    from llama_cpp import Llama

    from mlx_dm.evaluate.diagnostics import llama_cpp_numerics
    from mlx_dm.export.gguf import convert_to_gguf
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "tiny", STARTER_DIR)
    gguf = convert_to_gguf(base, tmp_path / "tiny-f32.gguf", "f32")
    loaded = load_model(base, dtype="float32")
    text = ("<bos><start_of_turn>user\nYou enter the dark cave. What do you see?<end_of_turn>\n<start_of_turn>model\n"
            "The cave walls glitter with damp stone and a goblin watches you. It hisses and draws a rusty blade.")
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
    plain = np.array(loaded.model(mx.array([ids]))[0], dtype=np.float32)
    with llama_cpp_numerics():
        matched = np.array(loaded.model(mx.array([ids]))[0], dtype=np.float32)
    llm = Llama(str(gguf), n_ctx=256, logits_all=True, verbose=False, type_k=0, type_v=0)  # 0: GGML_TYPE_F32
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)], dtype=np.float32)[:, : plain.shape[-1]]
    llm.close()
    assert np.abs(matched - theirs).max() < 0.01  # measured: 0.002
    assert np.abs(plain - theirs).max() > 2 * np.abs(matched - theirs).max()  # measured: 0.032


@pytest.mark.slow
def test_second_export_adds_a_version_and_keeps_the_first(exported):
    project, _ = exported
    models = project / "assets" / "models"
    name = Path(json.loads((models / "manifest.json").read_text())["current"]["gguf_path"]).name  # the choice's
    first = (models / name).read_bytes()
    result = cli(project, "export", "--quant", "Q8_0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (models / "versions" / "dm-tiny-gemma3n-v1" / name).read_bytes() == first
    assert sorted(p.name for p in models.glob("*.gguf")) == ["dm-tiny-gemma3n-v2-Q8_0.gguf"]  # the app bundles one model
    manifest = json.loads((models / "manifest.json").read_text())
    assert [v["version"] for v in manifest["versions"]] == ["v1", "v2"] and manifest["current"]["version"] == "v2"
    assert [v["status"] for v in manifest["versions"]] == ["promoted", "promoted"]
    assert not list(models.rglob(".*partial")) and not list(models.rglob(".*.tmp-*"))
    listing = cli(project, "models", "list")
    assert listing.returncode == 0 and "v2" in listing.stdout and "promoted" in listing.stdout
    back = cli(project, "models", "rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert (models / name).read_bytes() == first
    assert json.loads((models / "cactus-config.json").read_text())["modelFile"] == name
    again = cli(project, "models", "promote", "v2")
    assert again.returncode == 0 and json.loads((models / "manifest.json").read_text())["current"]["version"] == "v2"


@pytest.mark.slow
def test_failed_validation_leaves_the_app_on_its_current_model(exported):
    project, _ = exported
    models = project / "assets" / "models"
    before = {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()}
    settings = project / "mlx-dm.toml"
    original = settings.read_text()
    settings.write_text(original + "[validate]\nphone_ram_gb = 0.05\n")
    try:
        result = cli(project, "export")
    finally:
        settings.write_text(original)
    assert result.returncode == 7, result.stdout + result.stderr
    assert "fits a 0.05 GB phone" in result.stderr and "not used" in result.stdout
    assert {p.name: p.read_bytes() for p in models.iterdir() if p.is_file() and p.name != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["current"] == json.loads(before["manifest.json"])["current"]
    assert manifest["versions"][-1]["status"] == "rejected"
    refused = cli(project, "models", "promote", manifest["versions"][-1]["version"])
    assert refused.returncode == 7 and "--force" in refused.stderr


@pytest.mark.slow
def test_mismatched_adapter_is_refused_and_assets_untouched(exported, tmp_path):
    project, _ = exported
    run = next((project / "runs").glob("*-train"))
    before = sorted(p.name for p in (project / "assets" / "models").iterdir())
    other_base = tmp_path / "other"
    from mlx_dm.model.tiny import TinySpec, build_tiny_model

    build_tiny_model(other_base, None, TinySpec(hidden_size=128))
    result = cli(project, "export", "--adapter", str(run / "adapters"), "--base", str(other_base))
    assert result.returncode == 6
    assert "width 64" in result.stderr and "width 128" in result.stderr and "hint:" in result.stderr
    assert sorted(p.name for p in (project / "assets" / "models").iterdir()) == before


def test_missing_adapter_error(tmp_path):
    with pytest.raises(ExportError, match="no adapter"):
        check_adapter(tmp_path, tmp_path)


def test_export_without_any_run_says_train_first(tmp_path):
    result = cli(tmp_path, "export")
    assert result.returncode == 6 and "train first" in result.stderr


def test_quantize_rejects_unknown_type(tmp_path):
    with pytest.raises(ExportError, match="unknown quantisation type"):
        quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "Q9_X")


def test_next_version_and_snippet(tmp_path):
    assert next_version(tmp_path, "dm") == "v1"
    (tmp_path / "dm-v1-Q4_K_M.gguf").write_bytes(b"x")
    (tmp_path / "versions" / "dm-v7").mkdir(parents=True)
    (tmp_path / "other-v9-Q8_0.gguf").write_bytes(b"x")
    assert next_version(tmp_path, "dm") == "v8"
    from mlx_dm.registry import PlacedModel

    placed = PlacedModel("dm", "v2", "Q4_K_M", "assets/models/dm-v2-Q4_K_M.gguf", "assets/models/dm-v2-mmproj.gguf",
                         "0" * 64, 1, "b", "r", "f", 2048, "now")
    snippet = cactus_snippet(placed)
    assert "CactusVLM.init(vlmConfig" in snippet and "mmproj: mmprojPath" in snippet
    assert "export const mmprojFile = 'dm-v2-mmproj.gguf';" in snippet
    assert "require('../assets/models/dm-v2-mmproj.gguf')" in snippet
    assert re.search(r"mmprojPath = `\$\{FileSystem.documentDirectory\}\$\{mmprojFile\}`", snippet)


@pytest.mark.slow
def test_tensor_type_overrides_reach_llama_cpp(exported, tmp_path):
    from gguf import GGUFReader

    project, _ = exported
    f16 = next((project / "runs").iterdir()) / "export" / "dm-tiny-gemma3n-f16.gguf"
    out = quantize(f16, tmp_path / "mixed.gguf", "Q4_K_M", tensor_types={"per_layer_token_embd": "Q2_K"})
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    assert types["per_layer_token_embd.weight"] == "Q2_K"
    stock = quantize(f16, tmp_path / "stock.gguf", "Q4_K_M")
    assert out.stat().st_size < stock.stat().st_size


@pytest.mark.slow
def test_size_budget_applies_the_per_tensor_mix(exported):
    """A forced K type over the budget gets the budget mix; nothing that fits: an error naming the flag."""
    from gguf import GGUFReader

    project, _ = exported
    result = cli(project, "export", "--quant", "Q4_K_M", "--size-budget", "0.0045", "--no-imatrix")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stock Q4_K_M is over the 0.00 GB budget" in " ".join(result.stdout.split())
    manifest = json.loads((project / "assets" / "models" / "manifest.json").read_text())["current"]
    placed = project / manifest["gguf_path"]
    assert placed.stat().st_size < 0.0045e9 and placed.name.endswith("-Q4_K_M.gguf")
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(placed)).tensors}
    assert types["per_layer_token_embd.weight"] == "Q2_K"
    assert not any(field.startswith("quantize.imatrix") for field in gguf_metadata(placed))  # --no-imatrix
    run = sorted((project / "runs").glob("*-train"))[-1]
    report = json.loads((run / "export" / "export-report.json").read_text())
    assert report["tensor_types"]["per_layer_token_embd"] == "Q2_K" and report["choice"] is None
    assert len(report["parity"]) == 2  # f16 and the file stored
    over = cli(project, "export", "--size-budget", "0.001")
    said = " ".join(over.stderr.split())
    assert over.returncode == 6 and "no candidate fits the 0.00 GB budget" in said and "--size-budget" in said


@pytest.mark.slow
def test_run_validates_the_exported_model(exported):
    project, result = exported
    run = next((project / "runs").glob("*-train"))
    report = json.loads((run / "validation" / "validation.json").read_text())
    assert report["passed"], report["checks"]
    assert report["compat"]["eos_token"] == "<eos>"  # fuse writes one EOS id the converter can read
    assert report["compat"]["template_renders_training_text"] and report["compat"]["end_of_turn_is_eog"]
    assert 0 < report["compat"]["memory"]["total_bytes"] < report["compat"]["memory"]["budget_bytes"]
    labels = [e["label"] for e in report["evaluations"]]
    assert labels == ["tuned GGUF", "tuned MLX", "base MLX"]
    assert all(e["overall"]["examples"] == report["cases"] > 0 for e in report["evaluations"])
    assert (run / "validation" / "scores.png").stat().st_size > 10_000
    assert "## Cactus compatibility" in (run / "validation" / "validation.md").read_text()
    assert any("decoded with the app's tool grammar (tools.gbnf)" in note for note in report["notes"])
    assert (run / "validation" / "tools.gbnf").is_file()
    assert "4/4 validate" in result.stdout


@pytest.mark.slow
def test_validate_fails_below_thresholds_naming_the_checks(exported):
    project, _ = exported
    settings = project / "mlx-dm.toml"
    original = settings.read_text()
    settings.write_text(original + "[validate]\nmin_tool_f1 = 0.99\nphone_ram_gb = 0.05\n")
    try:
        result = cli(project, "validate", "--no-base", "--no-mlx", "--max-cases", "3", "--max-tokens", "8")
    finally:
        settings.write_text(original)
    assert result.returncode == 7, result.stdout + result.stderr
    assert "tool-call F1" in result.stderr and "fits a 0.05 GB phone" in result.stderr
    report = json.loads(next((project / "runs").glob("*-validate/validation.json")).read_text())
    assert report["cases"] == 3 and not report["passed"]
    # --no-mlx: the GGUF alone, and the report says which check that leaves out.
    labels = [e["label"] for e in report["evaluations"]]
    assert labels[0] == "tuned GGUF" and "tuned MLX" not in labels and "base MLX" not in labels
    assert any("compare_mlx" in note for note in report["notes"])


@pytest.mark.slow
def test_retraining_stops_when_nothing_changed_and_continues_on_new_scenarios(exported):
    project, _ = exported
    unchanged = cli(project, "run", "--dev", "--max-steps", "2")
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "nothing to do" in unchanged.stdout
    # A copy with one new line is a new scenario; an unedited copy would be a duplicate and left out.
    source = next(p for p in sorted((project / "ai-training").rglob("*.md")) if "\n# USER\n" in p.read_text())
    added = source.parent / "zz-new-scenario.md"
    added.write_text(source.read_text().replace("\n# USER\n", "\n# USER\n\nA brand new opening line.\n", 1))
    assert added.read_text() != source.read_text()
    current = json.loads((project / "assets/models/manifest.json").read_text())["current"]["version"]
    result = cli(project, "run", "--dev", "--max-steps", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 new since the app's model" in result.stdout and "incremental: continuing from" in result.stdout
    manifest = json.loads((project / "assets/models/manifest.json").read_text())
    assert manifest["current"]["version"] != current
    run = sorted((project / "runs").glob("*-train"))[-1]
    assert json.loads((run / "config.json").read_text())["train"]["init_adapter"].endswith("adapters")


@pytest.mark.slow
def test_bench_measures_training_and_generation_and_flags_regressions(exported):
    """The stored baseline of the tiny model (benchmarks/baselines/bench-tiny.json) sets the settings
    and the ratios a run must measure; whether this machine is as fast is the benchmark's question,
    not the test's (the GGUF/MLX decode ratio differs 2x between CI's CPUs), so the pass and the
    fail of the comparison are checked against baselines made from this run's own report."""
    project, _ = exported
    baseline_path = ROOT / "benchmarks" / "baselines" / "bench-tiny.json"
    baseline = json.loads(baseline_path.read_text())
    args = ("bench", "--steps", str(baseline["steps"]), "--seq", str(baseline["seq"]), "--batch", str(baseline["batch"]),
            "--repetitions", "2", "--max-tokens", str(baseline["max_tokens"]))
    result = cli(project, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    out = sorted((project / "runs").glob("*-bench"))[-1]
    report = json.loads((out / "bench.json").read_text())
    names = [m["name"] for m in report["measurements"]]
    assert names[:2] == ["mlx_lm.lora train", "mlx-dm train"] and "MLX + adapter" in names and "GGUF f16" in names
    for measurement in report["measurements"]:
        for metric, values in measurement["summary"].items():
            assert len(values["runs"]) == 2 and values["median"] > 0, (measurement["name"], metric)
    assert set(baseline["ratios"]) <= set(report["ratios"]) and (out / "bench.png").stat().st_size > 5000
    assert bench.compare(report, report, 0.5) == ([], [])  # same machine, same settings: all compared, none worse
    # A baseline where GGUF decoding was 10x faster, relative to MLX in the same run, is a regression.
    faster = json.loads((out / "bench.json").read_text())
    key = next(k for k in faster["ratios"] if k.startswith("decode tokens/s (GGUF"))
    faster["ratios"][key] *= 10
    for measurement in faster["measurements"]:
        if "decode_tps" in measurement["summary"]:
            measurement["summary"]["decode_tps"]["median"] *= 10
    old = project / "old-bench.json"
    old.write_text(json.dumps(faster))
    compared = cli(project, "bench", "--no-train", "--repetitions", "1", "--max-tokens", str(baseline["max_tokens"]),
                   "--compare", str(old))
    said = " ".join(compared.stdout.split())  # rich wraps long lines
    assert compared.returncode == 7 and "regression" in said
    assert f"ratio {key}" in said and "decode_tps" in said
    assert "not measured now" in said  # the training ratios: --no-train


def test_bench_refuses_a_baseline_that_is_not_a_bench_report_before_measuring(tmp_path):
    (tmp_path / "notes.json").write_text('{"x": 1}')
    for baseline, reason in ((tmp_path / "missing.json", "FileNotFoundError"), (tmp_path / "notes.json", "KeyError")):
        result = cli(tmp_path, "bench", "--compare", str(baseline))
        said = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 2 and f"is not a bench report ({reason}" in said and "bench-tiny.json" in said
        assert not (tmp_path / "runs").exists()  # nothing was measured


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="node and npm are not installed")
def test_the_export_in_llama_rns_engine_with_nodes_own_test_runner(exported, tmp_path):
    """@fugood/llama.node (llama.rn's Node twin): loads with the app's options, renders several-turn
    conversations with tool results as training did, generates with both stop lists (tests/js/)."""
    from mlx_dm.evaluate.cases import suite_cases
    from mlx_dm.evaluate.llama_node import ensure_installed, request_for

    project, _ = exported
    gguf = project / json.loads((project / "assets" / "models" / "cactus-config.json").read_text())["modelAsset"]
    folder, why = ensure_installed()
    assert folder is not None, why
    conversations = [case.messages for case in suite_cases()[:3]]
    rows = [json.loads(line)["messages"] for line in (project / ".mlx-dm" / "dataset" / "train.jsonl").read_text().splitlines()]
    long = max(rows, key=lambda messages: sum(m["content"].startswith("Tool results:") for m in messages))
    request = tmp_path / "request.json"
    grammar = next((project / "assets" / "models").glob("*.gbnf"))  # what llama-rn.ts passes
    request.write_text(json.dumps(request_for(gguf, conversations + [long], folder, 2048, grammar=grammar)))
    run = subprocess.run(["node", "--test", str(ROOT / "tests" / "js" / "llama_node.test.mjs")], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "MLX_DM_NODE_REQUEST": str(request)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "# pass 5" in run.stdout and "decode " in run.stdout
    # The run's own validation made the same check.
    (validation,) = sorted((project / "runs").glob("*-train/validation/validation.json"))[-1:]
    report = json.loads(validation.read_text())
    assert report["llama_node"]["loaded"] and report["llama_node"]["renders_training_text"]
    assert any(c["name"].startswith("loads and renders in llama.rn's engine") and c["passed"] for c in report["checks"])
