"""Export stage: fuse → f16 GGUF → quantised GGUF → checks and parity → place in assets/models.

Everything is written inside the run folder first; assets/models only changes once the checks
pass, and then only by adding a new version's files.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..app_config import cactus_snippet
from ..errors import ExportError
from ..evaluate.gguf_checks import GgufCheck, MmprojCheck, check_gguf, check_mmproj
from ..evaluate.parity import Parity, mlx_reference, parity
from ..files import atomic_write_json, atomic_write_text, sha256_of
from ..registry import PlacedModel, stage
from .fuse import fuse
from .gguf import convert_mmproj, convert_to_gguf, gguf_metadata, has_vision_tower, quantize


# Applied when the standard Q4_K_M mix is over the size budget (E2B: 3.31 GB stock). Chosen with
# benchmarks/export_size.py on the E2B-shaped model; the per-layer embeddings (2B of E2B's 4.5B
# parameters, Q6_K in the stock mix) carry most of the saving.
BUDGET_MIX = {"per_layer_token_embd": "Q2_K", r"^token_embd": "Q2_K", r"ffn_down": "Q4_K"}
DEFAULT_SIZE_BUDGET = 2.0e9


@dataclass(frozen=True)
class ExportSpec:
    """What one export needs: the trained adapter and its base, where to work, how to name and size it."""
    base_dir: Path
    adapter_dir: Path
    work_dir: Path
    project_dir: Path
    dataset_dir: Path
    name: str
    base_model: str
    run_name: str
    quant: str = "Q4_K_M"
    n_ctx: int = 2048
    vision: bool = False
    size_budget: float | None = DEFAULT_SIZE_BUDGET


@dataclass
class ExportResult:
    fused_dir: Path
    f16_gguf: Path
    gguf: Path
    quant: str
    checks: list[GgufCheck]
    parity: list[Parity]
    placed: PlacedModel | None
    timings: dict[str, float]
    sizes: dict[str, int]
    tensor_types: dict[str, str] | None = None
    mmproj: Path | None = None
    mmproj_check: MmprojCheck | None = None

    def to_dict(self) -> dict:
        return {"fused_dir": str(self.fused_dir), "f16_gguf": str(self.f16_gguf), "gguf": str(self.gguf),
                "mmproj": str(self.mmproj) if self.mmproj else None,
                "mmproj_check": asdict(self.mmproj_check) if self.mmproj_check else None,
                "quant": self.quant, "checks": [asdict(c) for c in self.checks],
                "parity": [p.to_dict() for p in self.parity], "placed": asdict(self.placed) if self.placed else None,
                "timings": self.timings, "sizes": self.sizes, "tensor_types": self.tensor_types}


def parity_sequences(tokenizer, dataset_dir: Path, limit: int = 4) -> list[tuple[list[int], int]]:
    """(ids, reply start) for the first model reply of a few validation scenarios."""
    from ..data.render import render_messages

    path = Path(dataset_dir) / "valid.jsonl"
    if not path.exists() or not path.read_text().strip():
        path = Path(dataset_dir) / "train.jsonl"
    sequences = []
    for line in path.read_text().splitlines()[:limit]:
        messages = json.loads(line)["messages"]
        first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = render_messages(messages[:first_reply], add_generation_prompt=True).text
        full = render_messages(messages[: first_reply + 1]).text
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        full_ids = tokenizer.encode(full, add_special_tokens=False)
        sequences.append((full_ids[:768], min(len(prompt_ids), 767)))
    return sequences


ARTIFACTS = "artifacts.json"  # in the export folder: what each finished file was made from


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:24]


def _reused(work_dir: Path, path: Path, inputs: str) -> bool:
    """True when `path` was finished by an earlier export from the same inputs (a resumed run)."""
    record = _read_artifacts(work_dir).get(path.name)
    return bool(record) and record["inputs"] == inputs and path.exists() and _size(path) == record["bytes"]


def _record(work_dir: Path, path: Path, inputs: str) -> None:
    artifacts = _read_artifacts(work_dir)
    artifacts[path.name] = {"inputs": inputs, "bytes": _size(path)}
    atomic_write_json(work_dir / ARTIFACTS, artifacts)


def _read_artifacts(work_dir: Path) -> dict:
    try:
        return json.loads((work_dir / ARTIFACTS).read_text())
    except (OSError, ValueError):
        return {}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _step(work_dir: Path, path: Path, inputs: str, what: str, make: Callable[[], Path], say: Callable[[str], None],
          timings: dict[str, float], timing: str) -> Path:
    """Make one export file, or reuse it when a killed or failed export already finished it from the same inputs."""
    if _reused(work_dir, path, inputs):
        say(f"{what}: reusing {path.name} (finished earlier from the same inputs)")
        return path
    say(what)
    start = time.perf_counter()
    made = make()
    timings[timing] = timings.get(timing, 0.0) + time.perf_counter() - start
    _record(work_dir, made, inputs)
    return made


def fused_checkpoint(base_dir: Path, adapter_dir: Path, work_dir: Path, say: Callable[[str], None],
                     timings: dict[str, float] | None = None) -> tuple[Path, str]:
    """The adapter fused into the base (`work_dir/fused`, reused while adapter and base are the same), and its key."""
    work_dir.mkdir(parents=True, exist_ok=True)
    key = _digest(sha256_of(Path(adapter_dir) / "adapters.safetensors"), Path(base_dir).resolve())
    fused = _step(work_dir, work_dir / "fused", key, "fusing the adapter into the base weights",
                  lambda: fuse(base_dir, adapter_dir, work_dir / "fused"), say, {} if timings is None else timings,
                  "fuse_s")
    return fused, key


def export_model(spec: ExportSpec, say: Callable[[str], None] = print) -> ExportResult:
    """Fuse, convert, quantise, check and stage one adapter as a new version (or the version an
    earlier, interrupted export of the same files already staged)."""
    if spec.vision and not has_vision_tower(spec.base_dir):
        raise ExportError(f"a vision projector (mmproj) was asked for, but the base {spec.base_dir} has no vision tower",
                          "export from a Gemma 3n base with its vision tower (google/gemma-3n-E2B-it; offline: "
                          "--base tiny-vision), or drop --vision: a text DM needs no mmproj")
    work_dir, name, quant = Path(spec.work_dir), spec.name, spec.quant
    work_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    fused_dir, fused_key = fused_checkpoint(spec.base_dir, spec.adapter_dir, work_dir, say, timings)
    f16_key = _digest(fused_key, "f16")
    f16 = _step(work_dir, work_dir / f"{name}-f16.gguf", f16_key, "converting with llama.cpp's convert_hf_to_gguf.py (f16)",
                lambda: convert_to_gguf(fused_dir, work_dir / f"{name}-f16.gguf", "f16", log_file=work_dir / "convert.log"),
                say, timings, "convert_s")
    stock = work_dir / f"{name}-{quant}.gguf"
    gguf = _step(work_dir, stock, _digest(f16_key, quant), f"quantising to {quant}",
                 lambda: quantize(f16, stock, quant), say, timings, "quantize_s")
    candidates, tensor_types = [gguf], None
    if spec.size_budget and gguf.stat().st_size > spec.size_budget:
        if quant != "Q4_K_M":
            raise ExportError(f"{quant} gives {gguf.stat().st_size / 1e9:.2f} GB, over the {spec.size_budget / 1e9:.2f} GB budget",
                              "use the default Q4_K_M (it has a mix for the budget) or raise --size-budget")
        tensor_types = dict(BUDGET_MIX)
        budget = work_dir / f"{name}-{quant}-budget.gguf"
        gguf = _step(work_dir, budget, _digest(f16_key, quant, tensor_types),
                     f"{gguf.stat().st_size / 1e9:.2f} GB is over the {spec.size_budget / 1e9:.2f} GB budget: "
                     f"re-quantising with per-tensor types {BUDGET_MIX}",
                     lambda: quantize(f16, budget, quant, tensor_types=tensor_types), say, timings, "quantize_s")
        candidates.append(gguf)
        if gguf.stat().st_size > spec.size_budget:
            raise ExportError(f"even with the budget mix the model is {gguf.stat().st_size / 1e9:.2f} GB, over "
                              f"{spec.size_budget / 1e9:.2f} GB", "use a smaller base (E2B rather than E4B) or raise --size-budget")
    mmproj = None
    if spec.vision:
        target = work_dir / f"{name}-mmproj-f16.gguf"
        mmproj = _step(work_dir, target, _digest(fused_key, "mmproj"),
                       "writing the vision projector (mmproj, f16) with llama.cpp's converter",
                       lambda: convert_mmproj(fused_dir, target, log_file=work_dir / "convert-mmproj.log"),
                       say, timings, "mmproj_s")
    say("checking the GGUF files with llama.cpp")
    result = _check(spec, fused_dir, f16, gguf, candidates, mmproj, timings, tensor_types)
    failed = [problem for check in result.checks for problem in check.problems] + [
        f"{Path(c.path).name} did not load" for c in result.checks if not c.loads]
    if result.mmproj_check:
        failed += [f"{mmproj.name}: {problem}" for problem in result.mmproj_check.problems]
    if failed:
        write_report(work_dir, result, gguf_metadata(gguf))
        raise ExportError("the exported GGUF failed its checks: " + "; ".join(failed),
                          f"see {work_dir / 'export-report.md'}; the model in assets/models was left as it was")
    files = Path(spec.dataset_dir) / "files.json"
    result.placed = stage(gguf, spec.project_dir, name, quant, spec.base_model, spec.run_name,
                          (Path(spec.dataset_dir) / "fingerprint.txt").read_text().strip(), spec.n_ctx, mmproj=mmproj,
                          adapter_dir=spec.adapter_dir, data_files=json.loads(files.read_text()) if files.exists() else None)
    write_report(work_dir, result, gguf_metadata(gguf))
    return result


def _check(spec: ExportSpec, fused_dir: Path, f16: Path, gguf: Path, candidates: list[Path], mmproj: Path | None,
           timings: dict[str, float], tensor_types: dict[str, str] | None) -> ExportResult:
    """Load checks of both GGUFs, the mmproj check, and parity of every candidate with the fused MLX model."""
    from ..model.load import load_model

    start = time.perf_counter()
    loaded = load_model(fused_dir, dtype="float32")
    sequences = parity_sequences(loaded.tokenizer, spec.dataset_dir)
    prompt = loaded.tokenizer.decode(sequences[0][0][: sequences[0][1]]) if sequences else "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"
    checks = [check_gguf(f16, prompt), check_gguf(gguf, prompt)]
    mmproj_check = check_mmproj(gguf, mmproj) if mmproj else None
    # Quality cost of the budget mix: the stock mix's parity is reported beside it.
    parities = []
    if sequences:
        reference = mlx_reference(loaded.model, sequences)
        parities = [parity(reference, path) for path in [f16, *candidates]]
    timings["check_s"] = time.perf_counter() - start
    sizes = {"f16_bytes": f16.stat().st_size, "gguf_bytes": gguf.stat().st_size,
             "stock_mix_bytes": candidates[0].stat().st_size}
    if mmproj:
        sizes["mmproj_bytes"] = mmproj.stat().st_size
    return ExportResult(fused_dir, f16, gguf, spec.quant, checks, parities, None, timings, sizes, tensor_types,
                        mmproj, mmproj_check)


def write_report(work_dir: Path, result: ExportResult, metadata: dict) -> None:
    data = result.to_dict()
    data["metadata"] = {k: v for k, v in metadata.items() if not k.startswith("tokenizer.chat_template")}
    atomic_write_json(work_dir / "export-report.json", data)
    lines = ["# Export report", "",
             f"- GGUF: `{result.gguf.name}` ({result.sizes['gguf_bytes'] / 1e6:.1f} MB, {result.quant}); "
             f"f16: {result.sizes['f16_bytes'] / 1e6:.1f} MB",
             f"- Tensor types: {', '.join(metadata.get('_tensor_types', []))}"
             + (f"; per-tensor overrides for the size budget: `{result.tensor_types}` "
                f"(the stock {result.quant} mix was {result.sizes['stock_mix_bytes'] / 1e6:.1f} MB)"
                if result.tensor_types else ""),
             f"- Timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()), "",
             "## Checks (llama.cpp)", "", "| file | loads | architecture | chat template | <end_of_turn> | context | sample |",
             "|---|---|---|---|---|---|---|"]
    for c in result.checks:
        lines.append(f"| {Path(c.path).name} | {c.loads} | {c.architecture} | {'Gemma' if c.chat_template_matches else 'WRONG'} "
                     f"| {c.has_end_of_turn} | {c.context_length} | {c.sample[:40]!r} |")
    if result.mmproj_check:
        m = result.mmproj_check
        lines += ["", "## Vision projector (mmproj)", "",
                  f"`{Path(m.path).name}` ({result.sizes['mmproj_bytes'] / 1e6:.1f} MB, f16): loads in llama.cpp's mtmd "
                  f"beside the text model: {m.loads}; a 96x96 test image became {m.image_tokens} tokens "
                  f"of width {m.embedding_width}, finite: {m.finite}, encoded in {m.encode_seconds:.2f}s. "
                  "The audio tower is left out: llama.cpp does not run Gemma 3n's audio encoder."]
    lines += ["", "## Parity with the fused MLX model (float32)", "",
              "Teacher-forced over the first DM reply of validation scenarios, then free-running greedy.", "",
              "| file | positions | argmax agreement | max logit diff | mean logit diff | greedy equal | max diff with llama.cpp's std |",
              "|---|---|---|---|---|---|---|"]
    for p in result.parity:
        lines.append(f"| {Path(p.gguf).name} | {p.positions} | {p.argmax_agreement:.3f} | {p.max_logit_diff:.4f} | "
                     f"{p.mean_logit_diff:.4f} | {p.greedy_equal}/{p.greedy_total} | {p.llama_cpp_std_max_logit_diff:.4f} |")
    for p in result.parity:
        for d in p.greedy_divergences:
            near_tie = ("a near tie" if d["mlx_margin"] < p.max_logit_diff else
                        "quantisation drift" if p.gguf != str(result.f16_gguf) else "not a tie: look into it")
            lines.append(f"- {Path(p.gguf).name}: greedy continuation {d['sequence'] + 1} left MLX's at token "
                         f"{d['token'] + 1}, where MLX's top two logits were {d['mlx_margin']:.4f} apart ({near_tie})")
    lines += ["", "llama.cpp computes Gemma 3n's activation-sparsity cut-off with the sample standard deviation "
              "(n-1); Hugging Face and MLX use the population one (n). The last column shows the difference once "
              "MLX uses llama.cpp's convention: what is left is llama.cpp's f16 arithmetic (weights, KV cache, GELU "
              "table). The convention's effect shrinks with the MLP width: for E2B's 8192 it moves the cut-off by "
              "0.01% of a standard deviation."]
    if result.placed:
        lines += ["", "## In the app (once validated and promoted)", "", f"stored as `{result.placed.gguf_path}` (sha256 `{result.placed.sha256[:16]}…`)", "",
                  "```ts", cactus_snippet(result.placed).rstrip(), "```"]
    atomic_write_text(work_dir / "export-report.md", "\n".join(lines) + "\n")
