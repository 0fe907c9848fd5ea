"""converters/fuse_to_gguf.py: an adapter made elsewhere (stock mlx_lm.lora) to a checked GGUF
through mlx-dm's own export, outside any project."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_dm.data.starter import STARTER_DIR

from .conftest import ROOT


@pytest.mark.slow
def test_an_mlx_lm_lora_adapter_becomes_a_gguf_that_loads(tmp_path):
    from mlx_dm import bench
    from mlx_dm.inference import GgufBackend
    from mlx_dm.model.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "tiny", STARTER_DIR)
    scenarios = tmp_path / "scenarios"
    for source in sorted(STARTER_DIR.rglob("*.md"))[::40][:8]:
        target = scenarios / source.relative_to(STARTER_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    project = tmp_path / "data"
    project.mkdir()
    (project / "mlx-dm.toml").write_text(f'[data]\nscenarios_dir = "{scenarios}"\ninclude_starter = "never"\n')
    built = subprocess.run([sys.executable, "-m", "mlx_dm", "-C", str(project), "data", "build"], capture_output=True,
                           text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    data = bench.stock_lora_data(project / ".mlx-dm" / "dataset", tmp_path / "lora-data")
    (tmp_path / "work").mkdir()
    stock = bench.train_stock(base, data, tmp_path / "work", steps=2, seq=128, batch=1, lr=1e-4)
    adapter = tmp_path / "work" / "stock-adapters"
    assert stock["adapter_dir"] == str(adapter) and (adapter / "adapters.safetensors").is_file()
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "converters" / "fuse_to_gguf.py"), str(adapter), "--base",
                             str(base), "--quant", "Q8_0", "--scenarios", str(scenarios), "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gguf = re.search(r"^GGUF: (\S+\.gguf)", result.stdout, re.M)
    assert gguf and gguf.group(1).endswith("-Q8_0.gguf"), result.stdout
    assert not list(adapter.parent.glob("export"))  # nothing written beside the user's adapter
    report = json.loads((Path(gguf.group(1)).parent / "export-report.json").read_text())
    assert [c["loads"] and c["chat_template_matches"] and not c["problems"] for c in report["checks"]] == [True, True]
    assert report["parity"][0]["argmax_agreement"] > 0.95  # the f16 file computes what the fused MLX model does
    backend = GgufBackend(gguf.group(1), n_ctx=256)
    list(backend.stream("<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n", 4))
    assert 0 < backend.last_tokens <= 4  # it generates
