"""The trainer: packing and masks, exact resume after SIGKILL, Ctrl-C, early stopping."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_dm.train import batching
from mlx_dm.train.step import attention_mask
from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT

STARTER = sorted((STARTER_DIR).rglob("*.md"))


def make_project(tmp_path: Path, n_files: int = 8, extra_toml: str = "") -> Path:
    project = tmp_path / "project"
    for source in STARTER[:: max(1, len(STARTER) // n_files)][:n_files]:
        target = project / "ai-training" / source.relative_to(STARTER_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    # These tests are about training mechanics on these few files: the starter corpus stays out (test_e2e keeps it).
    (project / "mlx-dm.toml").write_text(
        '[data]\ninclude_starter = "never"\n\n'
        "[train]\nsteps_per_checkpoint = 2\nsteps_per_eval = 2\nmax_seq_length = 128\nbatch_size = 2\n" + extra_toml)
    return project


def mlx_dm(project: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlx_dm", "-C", str(project), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


def run_dirs(project: Path) -> list[Path]:
    return sorted((project / "runs").iterdir()) if (project / "runs").exists() else []


def test_tokenize_masks_only_model_turns(tmp_path):
    from mlx_dm.data.render import render_messages
    from mlx_dm.model.tiny import build_tiny_model
    from mlx_dm.model.load import load_model

    tokenizer = load_model(build_tiny_model(tmp_path / "tiny", STARTER_DIR)).tokenizer
    rendered = render_messages([{"role": "user", "content": "I look around."},
                                {"role": "assistant", "content": "Roll! [roll: perception]"}])
    example = batching.tokenize_record(tokenizer, {"text": rendered.text, "train_spans": rendered.train_spans}, 512)
    masked = tokenizer._tokenizer.decode([t for t, m in zip(example.ids, example.loss_mask) if m])
    assert masked == "Roll! [roll: perception]<end_of_turn>"


def test_calls_and_the_end_of_a_reply_weigh_call_weight(tmp_path):
    """What the app acts on (the call, and ending a reply with or without one) gets the weight;
    narration keeps 1 and the player's text 0."""
    from mlx_dm.data.render import render_messages
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model

    tokenizer = load_model(build_tiny_model(tmp_path / "tiny", STARTER_DIR)).tokenizer
    rendered = render_messages([{"role": "user", "content": "I sneak past."},
                                {"role": "assistant", "content": "Quietly now. [roll: stealth] Go on."},
                                {"role": "user", "content": "Tool results:\nstealth: 17"},
                                {"role": "assistant", "content": "They never see you."}])
    record = {"text": rendered.text, "train_spans": rendered.train_spans}
    example = batching.tokenize_record(tokenizer, record, 512, call_weight=4.0)
    decode = tokenizer._tokenizer.decode
    by_weight = {w: decode([t for t, m in zip(example.ids, example.loss_mask) if m == w]) for w in (1.0, 4.0)}
    assert by_weight[4.0].strip() == "[roll: stealth]<end_of_turn><end_of_turn>"  # " [" carries the call
    assert by_weight[1.0].replace(" ", "") == "Quietlynow.Goon.Theyneverseeyou."
    plain = batching.tokenize_record(tokenizer, record, 512)
    assert [bool(m) for m in plain.loss_mask] == [bool(m) for m in example.loss_mask]
    assert set(plain.loss_mask) == {0.0, 1.0} and plain.trainable_tokens == example.trainable_tokens


def test_long_scenario_is_split_into_windows_that_restart_from_its_context(tmp_path):
    from mlx_dm.data.parse import parse_text
    from mlx_dm.data.dataset import _record
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model

    tokenizer = load_model(build_tiny_model(tmp_path / "tiny", STARTER_DIR)).tokenizer
    source = next(path for path in STARTER if path.name == "icewind-wolves.md")
    record = _record(parse_text(source.read_text(), source.name).scenario)
    whole = batching.tokenize_record(tokenizer, record, 100_000)
    max_seq_length = whole.trainable_tokens // 2 + 150
    assert len(whole.ids) > max_seq_length
    # Before windows, the tail of a long scenario was cut off: its DM replies were never trained.
    assert batching.tokenize_record(tokenizer, record, max_seq_length).trainable_tokens < whole.trainable_tokens

    windows = batching.tokenize_windows(tokenizer, record, max_seq_length)
    assert len(windows) >= 2 and all(len(w.ids) <= max_seq_length and not w.truncated for w in windows)
    assert sum(w.trainable_tokens for w in windows) >= whole.trainable_tokens  # every DM reply is in some window
    decode = tokenizer._tokenizer.decode
    for window in windows:
        text = decode(window.ids)
        assert text.startswith("<bos><start_of_turn>user\n" + record["context"].split("\n")[0]), text[:80]
        assert "<start_of_turn>model" in text
    # A record that fits is one example, unchanged.
    assert batching.tokenize_windows(tokenizer, record, 100_000) == [whole]
    # A window whose context alone fills it keeps its end, where the reply is, not a row with no loss.
    context_only = len(tokenizer._tokenizer(record["context"], add_special_tokens=False)["input_ids"])
    cramped = batching.tokenize_windows(tokenizer, record, context_only)
    assert cramped and all(w.truncated and w.trainable_tokens > 0 for w in cramped)


def test_packing_and_block_diagonal_mask():
    examples = [batching.TokenizedExample(str(i), list(range(1, n + 1)), [1] * n) for i, n in enumerate([5, 3, 4, 2])]
    rows = batching.pack(examples, 8)
    assert sorted(len(r.ids) for r in rows) == [6, 8]  # first fit decreasing: 5+3, 4+2
    batch = batching.make_batch(rows, 9)
    mask = np.array(attention_mask(mx.array(batch.segments)))[:, 0]
    for b in range(2):
        seg = batch.segments[b]
        for i in range(8):
            for j in range(8):
                expected = (j <= i and seg[i] == seg[j]) or i == j
                assert mask[b, i, j] == expected
    # A target never crosses from one scenario into the next.
    row = rows[0]
    boundary = int(np.argmax(row.segments != row.segments[0]))
    assert batch.loss_mask[0, boundary - 1] == 0
    assert batching.padding_fraction(rows, 8) == pytest.approx(1 - 14 / 16)


def test_packed_rows_compute_what_each_scenario_computes_alone(tmp_path):
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model

    model = load_model(build_tiny_model(tmp_path / "tiny", None), dtype="float32").model
    a, b = [2, 5, 40, 41, 42, 43, 44, 45, 46], [2, 5, 50, 51, 52]
    packed = mx.array([a + b])
    segments = mx.array([[1] * len(a) + [2] * len(b)])
    together = model(packed, mask=attention_mask(segments))
    alone_b = model(mx.array([b]))
    assert np.abs(np.array(together[0, len(a):]) - np.array(alone_b[0])).max() < 1e-3  # float32 rounding


def test_epoch_order_is_reproducible():
    assert batching.epoch_order(10, 3, 1) == batching.epoch_order(10, 3, 1)
    assert batching.epoch_order(10, 3, 1) != batching.epoch_order(10, 3, 2)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    steps = "10"
    reference = make_project(tmp_path / "a")
    done = mlx_dm(reference, "train", "--dev", "--max-steps", steps)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    expected = losses(run_dirs(reference)[0])

    project = make_project(tmp_path / "b")
    proc = mlx_dm(project, "train", "--dev", "--max-steps", steps)
    deadline = time.time() + 600
    while time.time() < deadline:
        dirs = run_dirs(project)
        if dirs and (dirs[0] / "checkpoints" / "step-0000004").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dirs(project)[0] / "adapters").exists()  # no result from a killed run
    resumed = mlx_dm(project, "train", "--dev", "--max-steps", steps)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resuming" in out
    assert len(run_dirs(project)) == 1
    got = losses(run_dirs(project)[0])
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5), step
    assert (run_dirs(project)[0] / "adapters" / "adapters.safetensors").exists()
    assert (run_dirs(project)[0] / "loss.png").exists()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    project = make_project(tmp_path)
    proc = mlx_dm(project, "train", "--dev", "--max-steps", "200")
    deadline = time.time() + 600
    while time.time() < deadline:
        dirs = run_dirs(project)
        if dirs and (dirs[0] / "metrics.jsonl").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command again to resume" in out
    state = json.loads((run_dirs(project)[0] / "train_state.json").read_text())
    assert state["status"] == "interrupted"
    assert any(p.name.startswith("step-") for p in (run_dirs(project)[0] / "checkpoints").iterdir())


@pytest.mark.slow
def test_early_stopping_keeps_the_best_adapter(tmp_path):
    # A learning rate this high makes validation loss rise at once: patience 1 stops the run.
    project = make_project(tmp_path, extra_toml='patience = 1\nselect_by = "loss"\n')
    proc = mlx_dm(project, "train", "--dev", "--epochs", "20", "--max-steps", "40", "--learning-rate", "20")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    run = run_dirs(project)[0]
    state = json.loads((run / "train_state.json").read_text())["result"]
    assert state["stopped_early"] and state["steps"] < 40
    best = mx.load(str(run / "best" / "adapters.safetensors"))
    final = mx.load(str(run / "adapters" / "adapters.safetensors"))
    assert all(np.array_equal(np.array(best[k]), np.array(final[k])) for k in best)


def test_metrics_count_dm_tokens_apart_from_the_loss_weight(tmp_path):
    from mlx_dm.config import load_config
    from mlx_dm.pipeline.data import build
    from mlx_dm.model.tiny import build_tiny_model
    from mlx_dm.runs import new_run
    from mlx_dm.train.trainer import train

    project = make_project(tmp_path, n_files=4)
    base = build_tiny_model(tmp_path / "tiny", project / "ai-training")
    records = {}
    for weight in (1.0, 4.0):
        config = load_config(project).override(train={"call_weight": weight, "max_steps": 2, "max_seq_length": 512,
                                                      "steps_per_eval": 100, "steps_per_checkpoint": 100})
        records[weight] = train(config, build(config).path, base, new_run(tmp_path / "runs", f"w{weight}")).history
    plain, weighted = records[1.0], records[4.0]
    assert [r["trainable_tokens"] for r in plain] == [r["trainable_tokens"] for r in weighted]
    assert all(r["loss_weight"] == r["trainable_tokens"] > 0 for r in plain)
    # Calls and each reply's end weigh 4: the weight sum exceeds the count, which stays a count of tokens.
    assert all(r["loss_weight"] > r["trainable_tokens"] for r in weighted)
    assert all(isinstance(r["trainable_tokens"], int) for r in weighted)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_bigger_batch(tmp_path):
    from mlx_dm.config import load_config
    from mlx_dm.pipeline.data import build
    from mlx_dm.model.tiny import build_tiny_model
    from mlx_dm.runs import new_run
    from mlx_dm.train.trainer import train

    project = make_project(tmp_path, n_files=6)
    base = build_tiny_model(tmp_path / "tiny", project / "ai-training")
    results = {}
    for name, batch, accumulation in (("batch2", 2, 1), ("accumulated", 1, 2)):
        config = load_config(project).override(train={
            "batch_size": batch, "grad_accumulation": accumulation, "max_steps": 3, "epochs": 5, "learning_rate": 1e-3,
            "steps_per_eval": 100, "steps_per_checkpoint": 100})
        dataset_dir = build(config).path
        results[name] = train(config, dataset_dir, base, new_run(tmp_path / "runs", name)).history
    assert [r["tokens"] for r in results["batch2"]] == [r["tokens"] for r in results["accumulated"]]
    assert [r["trainable_tokens"] for r in results["batch2"]] == [r["trainable_tokens"] for r in results["accumulated"]]
    for one, other in zip(results["batch2"], results["accumulated"]):
        assert one["loss"] == pytest.approx(other["loss"], rel=1e-4, abs=1e-4)


def test_loss_on_dm_positions_equals_the_full_logits_loss(tmp_path):
    """The head runs on the DM tokens only; the loss is the weighted mean over full logits all the same."""
    import mlx.nn as nn

    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model
    from mlx_dm.train.step import batch_arrays, loss_fn

    model = load_model(build_tiny_model(tmp_path / "tiny", None), dtype="float32").model
    rng = np.random.default_rng(0)
    examples = [batching.TokenizedExample(str(i), list(rng.integers(7, 600, n)), list(rng.choice([0.0, 1.0, 4.0], n)))
                for i, n in enumerate([40, 30, 25])]
    batch = batching.make_batch(batching.pack(examples, 64), 65)
    positions, weights = batch.loss_positions()
    assert len(positions) % 64 == 0 and weights.sum() == batch.loss_mask.sum()
    loss, tokens = loss_fn(model, *batch_arrays(batch))
    logits = model(mx.array(batch.inputs), mask=attention_mask(mx.array(batch.segments)))
    full = (nn.losses.cross_entropy(logits, mx.array(batch.targets)) * mx.array(batch.loss_mask)).sum() / batch.loss_mask.sum()
    assert tokens.item() == batch.loss_mask.sum()
    assert loss.item() == pytest.approx(full.item(), rel=1e-5)


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_doubled_batch(tmp_path):
    """`mlx.launch -n 2` (ring backend, local CPU): each process trains on 1 row per step and the
    token-weighted gradients are summed; one process with 2 rows per step must give the same run."""
    from safetensors.numpy import load_file

    launcher = Path(sys.executable).parent / "mlx.launch"
    if not launcher.exists():
        pytest.skip("mlx.launch is not installed beside this Python")
    # The same adapter both ways: the best by held-out loss (the generated round of select_by = "calls"
    # runs in a process of its own only).
    project = make_project(tmp_path, n_files=6, extra_toml='select_by = "loss"\n')
    common = ("train", "--base", "tiny", "--max-steps", "3", "--max-seq-length", "256", "--learning-rate", "1e-3",
              "--no-resume")
    single = subprocess.run([sys.executable, "-m", "mlx_dm", "-C", str(project), *common, "--batch-size", "2"],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    single_run = run_dirs(project)[-1]
    both = subprocess.run([str(launcher), "-n", "2", "--backend", "ring", sys.executable, "-m", "mlx_dm",
                           "-C", str(project), *common, "--batch-size", "1"],
                          capture_output=True, text=True, timeout=600)
    assert both.returncode == 0, both.stdout + both.stderr
    assert "distributed training: 2 processes" in both.stdout
    runs = run_dirs(project)
    assert len(runs) == 2, "only process 0 writes a run folder"
    pair_run = runs[-1]

    assert losses(pair_run).keys() == losses(single_run).keys() == {1, 2, 3}
    for step, loss in losses(single_run).items():
        assert losses(pair_run)[step] == pytest.approx(loss, rel=1e-4), step
    one = load_file(str(single_run / "adapters" / "adapters.safetensors"))
    two = load_file(str(pair_run / "adapters" / "adapters.safetensors"))
    assert one.keys() == two.keys()
    # lora_b starts at zero, so it is what the three steps learned. Summation order differs between
    # the two runs and Adam magnifies that on near-zero gradients; half a batch would be ~50% off.
    learned = [name for name in one if name.endswith("lora_b")]
    assert learned and sum(np.linalg.norm(one[name]) > 0 for name in learned) > len(learned) // 2
    for name in one:
        assert np.linalg.norm(two[name] - one[name]) <= 0.01 * np.linalg.norm(one[name]), name


def test_memory_probe_splits_the_batch_to_fit_and_keeps_the_effective_batch(tmp_path):
    """Real forward/backward passes on the tiny model: the probe picks the largest micro-batch under
    the budget, and accumulation keeps batch_size rows per optimizer step."""
    from mlx_dm.config import load_config
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model
    from mlx_dm.train.setup import apply_lora, choose_micro_batch, step_memory_probe

    base = build_tiny_model(tmp_path / "tiny", STARTER_DIR)
    config = load_config(tmp_path)
    loaded = load_model(base)
    apply_lora(loaded.model, config)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(4):
        ids = rng.integers(5, 600, size=256).astype(np.int32)
        rows.append(batching.PackedRow(ids, np.ones(256, np.float32), np.ones(256, np.int32), [index]))
    measure = step_memory_probe(loaded.model, rows, 255)
    peaks = {n: measure(n) for n in (1, 2, 4)}
    assert peaks[1] < peaks[2] < peaks[4], peaks  # activations grow with the rows in a pass

    assert choose_micro_batch(measure, 4, peaks[4] * 2)[0] == 4
    micro, probe = choose_micro_batch(measure, 4, (peaks[2] + peaks[4]) // 2)
    assert micro == 2 and [p["rows"] for p in probe] == [4, 2] and [p["fits"] for p in probe] == [False, True]
    assert choose_micro_batch(measure, 4, (peaks[1] + peaks[2]) // 2)[0] == 1
    assert choose_micro_batch(lambda n: None if n > 1 else 10, 6, 100)[0] == 1  # allocation failures count as "no"


def test_training_under_a_small_memory_limit_accumulates(tmp_path):
    project = make_project(tmp_path, n_files=6, extra_toml="memory_limit_gb = 0.000001\n")
    result = subprocess.run([sys.executable, "-m", "mlx_dm", "-C", str(project), "train", "--base", "tiny",
                             "--max-steps", "2", "--batch-size", "4", "--no-resume"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads((run_dirs(project)[-1] / "train_state.json").read_text())
    assert state["micro_batch_size"] == 1 and state["grad_accumulation"] == 4
    probe = state["batch_probe"]
    assert [p["rows"] for p in probe] == [4, 2, 1, 4, 2, 1] and not any(p["fits"] for p in probe)
    # Not even one row fitted, so the probe turned gradient checkpointing on and measured again: less memory.
    assert [bool(p.get("grad_checkpoint")) for p in probe] == [False] * 3 + [True] * 3 and state["grad_checkpoint"]
    assert probe[5]["peak_bytes"] < probe[2]["peak_bytes"]
    assert "1 rows per pass × 4 accumulated" in " ".join(result.stdout.split())
    assert "gradient checkpointing: on" in result.stdout


def test_grad_checkpoint_asked_for_in_the_toml_is_kept_for_a_small_base(tmp_path):
    """The hardware profile's savings are dropped for a base that fits anyway, the user's are not."""
    from mlx_dm.config import explicit_settings

    project = make_project(tmp_path, n_files=6, extra_toml="grad_checkpoint = true\n")
    assert {"train.grad_checkpoint", "train.batch_size"} <= explicit_settings(project)
    result = subprocess.run([sys.executable, "-m", "mlx_dm", "-C", str(project), "train", "--base", "tiny",
                             "--max-steps", "1", "--no-resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads((run_dirs(project)[-1] / "train_state.json").read_text())
    assert state["grad_checkpoint"] is True and state["result"]["grad_checkpoint"] is True


def test_float32_size_is_read_from_the_headers_whatever_the_stored_dtype(tmp_path):
    """A float32 checkpoint is not counted twice: the profile once put a 2.5 GB float32 base on a
    4-bit copy (MLX's 4-bit CPU matmuls made each step 15x slower) because its size was doubled."""
    import mlx.core as mx

    from mlx_dm.hardware import float32_bytes, fits_without_savings

    weights = {"a": mx.zeros((1000, 250)), "b": mx.zeros((10,))}
    for dtype in (mx.float32, mx.bfloat16):
        folder = tmp_path / str(dtype)
        folder.mkdir()
        mx.save_safetensors(str(folder / "model.safetensors"), {k: v.astype(dtype) for k, v in weights.items()})
        assert float32_bytes(folder) == 4 * (1000 * 250 + 10)
    import dataclasses

    from mlx_dm.hardware import detect

    quarter = 4 * (1000 * 250 + 10)
    assert fits_without_savings(dataclasses.replace(detect(), mlx_memory_limit_bytes=4 * quarter + 4), tmp_path / str(mx.float32))
    assert not fits_without_savings(dataclasses.replace(detect(), mlx_memory_limit_bytes=4 * quarter - 4),
                                    tmp_path / str(mx.float32))

    # Training keeps a few rows of Gemma 3n's per-layer embedding table: it does not count.
    folder = tmp_path / "gemma3n"
    folder.mkdir()
    mx.save_safetensors(str(folder / "model.safetensors"),
                        {**weights, "model.language_model.embed_tokens_per_layer.weight": mx.zeros((4000, 250), mx.bfloat16)})
    assert float32_bytes(folder) == quarter + 4 * 4000 * 250
    assert float32_bytes(folder, training=True) == quarter
    assert fits_without_savings(dataclasses.replace(detect(), mlx_memory_limit_bytes=4 * quarter + 4), folder)


def test_per_layer_table_keeps_the_rows_of_the_data_and_computes_the_same_loss(tmp_path):
    """Gemma 3n's per-layer embedding table (E2B: 262,144 rows, 4 GB in bf16) is cut to the ids the
    data feeds, read from the file through a memory map: same loss, and the full table never loaded."""
    from dataclasses import replace

    from mlx.utils import tree_flatten

    from mlx_dm.model import per_layer_embeddings
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import TinySpec, build_tiny_model
    from mlx_dm.train.step import batch_arrays, loss_fn

    spec = replace(TinySpec(), per_layer_vocab=8192, extra_vocab=8192 - 640)
    base = build_tiny_model(tmp_path / "tiny", None, spec)
    rng = np.random.default_rng(0)
    examples = [batching.TokenizedExample(str(i), list(rng.integers(7, 600, n)), list(rng.choice([0.0, 1.0, 4.0], n)))
                for i, n in enumerate([40, 30, 25])]
    batch = batching.make_batch(batching.pack(examples, 64), 65)
    fed = {int(i) for e in examples for i in e.ids}

    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    compact = load_model(base, dtype="float32", lazy=True).model
    result = per_layer_embeddings.keep_rows(compact, base, (i for e in examples for i in e.ids))
    mx.eval(compact.parameters())
    loaded_peak = mx.get_peak_memory() - before
    assert result.read_from_file and result.rows_total == 8192 and result.rows_kept == len(fed | {0})
    table_bytes = 8192 * 22 * 256 * 4
    assert result.bytes_before == table_bytes and result.bytes_after == (len(fed | {0}) + 1) * 22 * 256 * 4
    assert loaded_peak < table_bytes / 4, f"{loaded_peak} bytes at load: the full table was read"

    full = load_model(base, dtype="float32").model
    size = lambda model: sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    assert size(full) - size(compact) == table_bytes - result.bytes_after
    expected, _ = loss_fn(full, *batch_arrays(batch))
    got, _ = loss_fn(compact, *batch_arrays(batch))
    assert got.item() == expected.item()
    # An id the data never fed reads NaN rather than a wrong row.
    outside = mx.array([[next(i for i in range(7, 600) if i not in fed)]])
    assert mx.isnan(compact.model.language_model.embed_tokens_per_layer(outside)).all().item()


def test_kv_shared_layers_at_the_loss_positions_give_the_same_loss_and_gradients(tmp_path):
    """Gemma 3n's KV-shared layers run on the DM positions only (patches, extension 6): loss and
    LoRA gradients equal those of the full forward pass, selected afterwards."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from mlx_dm.model import patches
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model
    from mlx_dm.train.step import batch_arrays, loss_fn

    model = load_model(build_tiny_model(tmp_path / "tiny", None), dtype="float32").model
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 2.0, "dropout": 0.0,
                                                     "keys": list(patches.GEMMA3N_LORA_KEYS)})
    mx.random.seed(1)
    # LoRA's B starts at zero, which would leave every A without a gradient.
    model.update(tree_map(lambda v: mx.random.normal(v.shape) * 0.05, model.trainable_parameters()))
    rng = np.random.default_rng(0)
    examples = [batching.TokenizedExample(str(i), list(rng.integers(7, 600, n)), list(rng.choice([0.0, 1.0, 4.0], n)))
                for i, n in enumerate([40, 30, 25, 50, 60])]
    batch = batching.make_batch(batching.pack(examples, 64), 65)
    assert batch.inputs.shape[0] > 1  # rows laid end to end in the shared layers

    def selected_afterwards(model, inputs, targets, positions, weights, segments):
        hidden = patches.hidden_states(model, inputs, mask=attention_mask(segments))
        logits = patches.output_logits(model, hidden.reshape(-1, hidden.shape[-1])[positions])
        losses = nn.losses.cross_entropy(logits, targets.reshape(-1)[positions]) * weights
        return losses.sum() / weights.sum(), weights.sum()

    arrays = batch_arrays(batch)
    (loss, _), grads = nn.value_and_grad(model, loss_fn)(model, *arrays)
    (expected, _), expected_grads = nn.value_and_grad(model, selected_afterwards)(model, *arrays)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    got, want = dict(tree_flatten(grads)), dict(tree_flatten(expected_grads))
    assert got.keys() == want.keys()
    nonzero = 0
    for name in want:  # the shared layers' own K/V projections are unused: zero in both
        scale = mx.abs(want[name]).max().item()
        nonzero += scale > 0
        assert mx.abs(got[name] - want[name]).max().item() <= 1e-3 * scale, name
    assert nonzero >= len(want) - 4 * 2  # k_proj and v_proj (A and B) of the 2 shared layers


def test_a_truncated_checkpoint_gets_an_error_that_says_what_to_do(tmp_path):
    import os

    from mlx_dm.errors import ModelError
    from mlx_dm.model.load import load_model
    from mlx_dm.model.tiny import build_tiny_model

    base = tmp_path / "base"
    shutil.copytree(build_tiny_model(tmp_path / "tiny", None), base)
    weights = base / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(ModelError) as error:
        load_model(base, lazy=True)
    assert "incomplete or corrupt" in error.value.hint and str(base) in str(error.value)


def test_a_memory_limit_binds_mlx_itself_not_only_the_probe():
    """Runs sharing one GPU each set train.memory_limit_gb: MLX must keep to it (its limit and its
    cache of freed buffers), or one process's cache starves the others."""
    from mlx_dm.config import Config
    from mlx_dm.train.setup import limit_mlx_memory

    before_limit, before_cache = mx.get_memory_limit(), mx.set_cache_limit(0)
    mx.set_cache_limit(before_cache)
    try:
        assert limit_mlx_memory(Config()) is None and mx.get_memory_limit() == before_limit  # unset: MLX's own
        config = Config().override("test", train={"memory_limit_gb": 0.5})
        assert limit_mlx_memory(config) == 500_000_000 == mx.get_memory_limit()
        cache = mx.set_cache_limit(0)
        assert 0 < cache <= 500_000_000 and cache <= max(before_cache, 1)
    finally:
        mx.set_memory_limit(before_limit)
        mx.set_cache_limit(before_cache)
