"""The Cactus 1.x hand-off (export --target cactus): mlx-dm finds `cactus`, hands it the fused
checkpoint offline, and places its bundle with the React Native lines, or says how to install it.

cactus-compute is never a dependency (its own licence; it pins transformers 5.x and pulls torch), so
CI tests the hand-off with a stand-in program that records what it was given; the real converter
runs in the last test when MLX_DM_CACTUS names one (docs/cactus-integration.md says what it did here)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mlx_dm.errors import ExportError
from mlx_dm.export.cactus import CACTUS_ENV, cactus_snippet, export_cactus, find_cactus

STAND_IN = """#!/bin/sh
# records its arguments and environment, then writes a bundle the way `cactus convert` does: into $3
printf '%s\\n' "$@" > "{record}"
echo "HF_HUB_OFFLINE=$HF_HUB_OFFLINE" >> "{record}"
[ -n "{fail}" ] && {{ echo "Conversion error: unsupported architecture"; exit 3; }}
mkdir -p "$3" && echo weights > "$3/layer_0_attn_q.weights" && echo "model_type=gemma3n" > "$3/config.txt"
"""


def stand_in(tmp_path: Path, fail: bool = False) -> Path:
    program = tmp_path / "bin" / "cactus"
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_text(STAND_IN.format(record=tmp_path / "argv.txt", fail="yes" if fail else ""))
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return program


def test_without_cactus_the_error_says_how_to_install_it_and_names_its_licence(tmp_path, monkeypatch):
    monkeypatch.delenv(CACTUS_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ExportError) as caught:
        find_cactus()
    assert "cactus-compute" in caught.value.message
    assert "pip install 'cactus-compute[convert]'" in caught.value.hint and "licence" in caught.value.hint
    monkeypatch.setenv(CACTUS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ExportError, match="not an executable file"):
        find_cactus()


def test_the_fused_checkpoint_goes_to_cactus_convert_and_the_bundle_is_placed(tmp_path, monkeypatch):
    monkeypatch.setenv(CACTUS_ENV, str(stand_in(tmp_path)))
    fused = tmp_path / "run" / "export" / "fused"
    fused.mkdir(parents=True)
    bundle = export_cactus(fused, tmp_path / "game", "dm-gemma-3n-e2b-run1-cq4", 4, 2048, ["<end_of_turn>", "<eos>"],
                           tmp_path / "run" / "export")
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    assert argv[:2] == ["convert", str(fused)] and argv[3:6] == ["--bits", "4", "--local-files-only"]
    assert "HF_HUB_OFFLINE=1" in argv  # a hub lookup would fail offline, or fetch another model
    assert bundle.folder == tmp_path / "game" / "assets" / "models" / "cactus" / "dm-gemma-3n-e2b-run1-cq4"
    assert (bundle.folder / "layer_0_attn_q.weights").is_file() and not list(bundle.folder.parent.glob("*.partial"))
    snippet = bundle.snippet.read_text()
    assert "new CactusLM({ model: cactusModel, contextSize: 2048 })" in snippet
    assert "cactus/models/dm-gemma-3n-e2b-run1-cq4/" in snippet and '["<end_of_turn>", "<eos>"]' in snippet
    assert snippet == cactus_snippet("dm-gemma-3n-e2b-run1-cq4", 2048, ["<end_of_turn>", "<eos>"])


def test_a_failed_conversion_names_its_output_and_places_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(CACTUS_ENV, str(stand_in(tmp_path, fail=True)))
    fused = tmp_path / "fused"
    fused.mkdir()
    with pytest.raises(ExportError) as caught:
        export_cactus(fused, tmp_path / "game", "dm", 4, 2048, ["<end_of_turn>"], tmp_path / "work")
    assert "exit 3" in caught.value.message and "unsupported architecture" in caught.value.message
    assert str(tmp_path / "work" / "cactus-convert.log") in caught.value.hint
    assert not (tmp_path / "game" / "assets").exists()


@pytest.mark.skipif(not os.environ.get(CACTUS_ENV), reason=f"{CACTUS_ENV} names no real cactus program")
def test_the_real_cactus_convert_makes_a_bundle_of_the_tiny_checkpoint(tmp_path):
    from mlx_dm.data.starter import STARTER_DIR
    from mlx_dm.model.tiny import build_tiny_model

    checkpoint = build_tiny_model(tmp_path / "tiny", STARTER_DIR)
    bundle = export_cactus(checkpoint, tmp_path / "game", "dm-tiny-cq4", 4, 2048, ["<end_of_turn>"], tmp_path / "work",
                           weights_only=True)
    assert (bundle.folder / "config.txt").is_file() and len(list(bundle.folder.glob("*.weights"))) > 100
