"""A LoRA adapter to a checked GGUF for llama.cpp, outside any mlx-dm project.

    python converters/fuse_to_gguf.py ADAPTER_DIR --base BASE [--quant auto|Q4_K_M|...] [--scenarios DIR] [--out DIR]

ADAPTER_DIR: the `adapters/` folder of `mlx-dm train`, or of `mlx_lm.lora` (mlx-lm's own format:
adapters.safetensors and adapter_config.json). BASE: what it was trained on: a Hugging Face repo
id, a local folder, `gemma3-270m` or `tiny`. The export is mlx-dm's own (mlx_dm/export): fuse,
convert with llama.cpp's converter, an importance matrix of the scenarios, the quantisation (by
default chosen by measurement: the smallest type close to f16 by KL and not significantly worse in
tool-call F1), the load and template checks. `--scenarios`: a folder of scenario .md files for the
importance matrix and the held-out cases (default: the starter corpus mlx-dm ships).

The work happens in `--out` (default `./gguf-out`), a project of its own: the adapter is copied in,
so nothing is written beside it; the GGUF is printed at the end, with the export report beside it.
Nothing is validated or promoted into an app: that is `mlx-dm run` in the game's repository.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def convert(adapter: Path, base: str, quant: str, out: Path, scenarios: Path | None = None) -> Path:
    """The GGUF of `adapter` on `base`, exported by mlx-dm in the project `out`; returns its path."""
    from mlx_dm.config import load_config
    from mlx_dm.errors import ConfigError
    from mlx_dm.pipeline.data import build
    from mlx_dm.pipeline.export import run_export
    from mlx_dm.pipeline.project import Project
    from mlx_dm.pipeline.settings import dev_validation
    from mlx_dm.model.hub import TINY_BASES

    if not (adapter / "adapters.safetensors").is_file():
        raise ConfigError(f"no adapters.safetensors in {adapter}", "pass the adapters/ folder of a training run")
    copied = out / "runs" / "converted" / "adapters"
    if copied.exists():
        shutil.rmtree(copied)
    shutil.copytree(adapter, copied)
    overrides = {"model": {"base_model": base}, "export": {"quant": quant}}
    if scenarios is not None:
        overrides["data"] = {"scenarios_dir": str(Path(scenarios).resolve()), "include_starter": "never"}
    config = load_config(out, overrides)
    project = Project(dev_validation(config) if base in TINY_BASES else config)
    build(project.config)  # the importance matrix and the held-out cases read it
    result = run_export(project, project.base(), copied, _say())
    return result.gguf


def _say():
    """The export pipeline's Reporter, printing its steps as plain lines (progress bars left out)."""
    from mlx_dm.pipeline.reporter import Reporter

    class Say(Reporter):
        def stage(self, name: str, text: str = "", run_dir=None) -> None:
            print(f"{name}: {text}", flush=True)

        def note(self, text: str) -> None:
            print(text, flush=True)

        def warn(self, text: str) -> None:
            print(f"warning: {text}", flush=True)

    return Say()


def main() -> int:
    from mlx_dm.errors import MlxDmError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", type=Path, help="the adapters/ folder (mlx-dm train or mlx_lm.lora)")
    parser.add_argument("--base", required=True, help="the base it was trained on")
    parser.add_argument("--quant", default="auto", help="auto (chosen by measurement) or a llama.cpp type")
    parser.add_argument("--scenarios", type=Path, default=None, help="scenario files for the matrix and the cases")
    parser.add_argument("--out", type=Path, default=Path("gguf-out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        gguf = convert(args.adapter.resolve(), args.base, args.quant, args.out.resolve(), args.scenarios)
    except MlxDmError as error:
        print(f"error: {error.message}\nhint: {error.hint}", file=sys.stderr)
        return error.exit_code
    print(f"GGUF: {gguf} (report: {gguf.parent / 'export-report.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
