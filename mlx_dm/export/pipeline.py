"""Export stage: fuse → f16 GGUF → importance matrix → quantised GGUF (chosen by measurement) →
checks and parity → place in assets/models.

Everything is written inside the run folder first; assets/models only changes once the checks
pass, and then only by adding a new version's files.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..config import ExportConfig
from ..errors import ExportError
from ..evaluate.cases import EvalCase
from ..evaluate.gguf_checks import GgufCheck, MmprojCheck, check_gguf, check_mmproj
from ..evaluate.parity import Parity, mlx_reference, parity
from ..files import atomic_write_json, sha256_of
from ..registry import PlacedModel, stage
from .choose import Progress, QuantChoice, choose_quant, plan_candidates, raise_over_budget
from .fuse import fuse
from .gguf import check_export_types, check_quant, convert_mmproj, convert_to_gguf, gguf_metadata, has_vision_tower, quantize
from .imatrix import calibration_text, compute_imatrix
from .report import write_report


@dataclass(frozen=True)
class ExportSpec:
    """What one export needs: the trained adapter and its base, where to work, how to name and size it.
    `cases` and `vocabulary` are what "auto" scores the candidates on (held-out cases only)."""
    base_dir: Path
    adapter_dir: Path
    work_dir: Path
    project_dir: Path
    dataset_dir: Path
    name: str
    base_model: str
    run_name: str
    version: str = "v1"  # the version it will be stored as: part of the file's general.name
    quant: ExportConfig = field(default_factory=ExportConfig)  # [export]: a forced type or "auto" (choose.py)
    n_ctx: int = 2048
    vision: bool = False
    cases: tuple[EvalCase, ...] = ()
    vocabulary: frozenset[str] = frozenset()


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
    imatrix: Path | None = None
    choice: QuantChoice | None = None

    def to_dict(self) -> dict:
        return {"fused_dir": str(self.fused_dir), "f16_gguf": str(self.f16_gguf), "gguf": str(self.gguf),
                "mmproj": str(self.mmproj) if self.mmproj else None,
                "mmproj_check": asdict(self.mmproj_check) if self.mmproj_check else None,
                "quant": self.quant, "checks": [asdict(c) for c in self.checks],
                "parity": [p.to_dict() for p in self.parity], "placed": asdict(self.placed) if self.placed else None,
                "timings": self.timings, "sizes": self.sizes, "tensor_types": self.tensor_types,
                "imatrix": str(self.imatrix) if self.imatrix else None,
                "choice": self.choice.to_dict() if self.choice else None}


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


def export_model(spec: ExportSpec, say: Callable[[str], None] = print, progress: Progress | None = None) -> ExportResult:
    """Fuse, convert, quantise (chosen by measurement unless a type is forced), check and stage one
    adapter as a new version (or the version an earlier, interrupted export of the same files staged)."""
    if spec.vision and not has_vision_tower(spec.base_dir):
        raise ExportError(f"a vision projector (mmproj) was asked for, but the base {spec.base_dir} has no vision tower",
                          "export from a Gemma 3n base with its vision tower (google/gemma-3n-E2B-it; offline: "
                          "--base tiny-vision), or drop --vision: a text DM needs no mmproj")
    check_export_types(spec.quant.quant, spec.quant.candidates)
    work_dir, name, budget = Path(spec.work_dir), spec.name, spec.quant.size_budget_bytes
    work_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    fused_dir, fused_key = fused_checkpoint(spec.base_dir, spec.adapter_dir, work_dir, say, timings)
    gguf_name = f"{name} {spec.version}"
    f16_key = _digest(fused_key, "f16", gguf_name)
    f16 = _step(work_dir, work_dir / f"{name}-f16.gguf", f16_key, "converting with llama.cpp's convert_hf_to_gguf.py (f16)",
                lambda: convert_to_gguf(fused_dir, work_dir / f"{name}-f16.gguf", "f16", log_file=work_dir / "convert.log",
                                        model_name=gguf_name),
                say, timings, "convert_s")
    imatrix = _importance_matrix(spec, f16, f16_key, say, timings) if spec.quant.imatrix else None
    quant_key = _digest(f16_key, sha256_of(imatrix) if imatrix else "no imatrix")

    def make(path: Path, what: str, build: Callable[[], Path]) -> Path:
        return _step(work_dir, path, _digest(quant_key, path.name), what, build, say, timings, "quantize_s")

    choice = None
    if spec.quant.quant.lower() == "auto":
        say(f"choosing the quantisation: candidates {', '.join(spec.quant.candidates)} under "
            f"{_budget_text(budget)}, scored on {len(spec.cases)} held-out cases against f16")
        start = time.perf_counter()
        choice = choose_quant(f16, work_dir, name, list(spec.quant.candidates), budget, imatrix,
                              list(spec.cases), set(spec.vocabulary), spec.quant.max_kl, spec.quant.choice_max_tokens,
                              spec.n_ctx, make, progress)
        timings["choose_s"] = time.perf_counter() - start
        gguf, quant, tensor_types = choice.chosen.path, choice.chosen.quant, choice.chosen.tensor_types
        say(f"chose {choice.chosen.label} ({choice.chosen.size_bytes / 1e6:.0f} MB): {choice.reason}")
    else:
        quant = check_quant(spec.quant.quant)
        forced = plan_candidates(f16, [quant], budget)[0]
        if budget and forced.size_bytes > budget:
            raise_over_budget(forced, budget)
        tensor_types = forced.tensor_types
        if tensor_types:
            say(f"stock {quant} is over {_budget_text(budget)}: with per-tensor types {tensor_types}")
        target = work_dir / f"{name}-{forced.file_stem}.gguf"
        gguf = make(target, f"quantising to {forced.label}", lambda: quantize(f16, target, quant, tensor_types=tensor_types,
                                                                              imatrix=imatrix))
    mmproj = None
    if spec.vision:
        target = work_dir / f"{name}-mmproj-f16.gguf"
        mmproj = _step(work_dir, target, _digest(fused_key, "mmproj"),
                       "writing the vision projector (mmproj, f16) with llama.cpp's converter",
                       lambda: convert_mmproj(fused_dir, target, log_file=work_dir / "convert-mmproj.log"),
                       say, timings, "mmproj_s")
    say("checking the GGUF files with llama.cpp")
    result = _check(spec, fused_dir, f16, gguf, quant, mmproj, timings, tensor_types)
    result.imatrix, result.choice = imatrix, choice
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
                          adapter_dir=spec.adapter_dir, data_files=json.loads(files.read_text()) if files.exists() else None,
                          version=spec.version)
    write_report(work_dir, result, gguf_metadata(gguf))
    return result


def _budget_text(budget: float | None) -> str:
    return f"the {budget / 1e9:.2f} GB budget" if budget else "no size budget"


def _importance_matrix(spec: ExportSpec, f16: Path, f16_key: str, say: Callable[[str], None],
                       timings: dict[str, float]) -> Path:
    """The matrix of the training conversations on the f16 file: made once per adapter and data."""
    text = calibration_text(spec.dataset_dir)
    target = Path(spec.work_dir) / "imatrix.gguf"
    key = _digest(f16_key, hashlib.sha256(text.encode()).hexdigest(), spec.quant.imatrix_chunks)
    return _step(Path(spec.work_dir), target, key,
                 f"computing the importance matrix over the training scenarios (llama-imatrix, "
                 f"{spec.quant.imatrix_chunks} chunks of 512 tokens at most)",
                 lambda: compute_imatrix(f16, text, target, spec.quant.imatrix_chunks), say, timings, "imatrix_s")


def _check(spec: ExportSpec, fused_dir: Path, f16: Path, gguf: Path, quant: str, mmproj: Path | None,
           timings: dict[str, float], tensor_types: dict[str, str] | None) -> ExportResult:
    """Load checks of both GGUFs, the mmproj check, and parity of both with the fused MLX model."""
    from ..model.load import load_model

    start = time.perf_counter()
    loaded = load_model(fused_dir, dtype="float32")
    sequences = parity_sequences(loaded.tokenizer, spec.dataset_dir)
    prompt = loaded.tokenizer.decode(sequences[0][0][: sequences[0][1]]) if sequences else "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"
    checks = [check_gguf(f16, prompt), check_gguf(gguf, prompt)]
    mmproj_check = check_mmproj(gguf, mmproj) if mmproj else None
    parities = []
    if sequences:
        reference = mlx_reference(loaded.model, sequences)
        parities = [parity(reference, path) for path in (f16, gguf)]
    timings["check_s"] = time.perf_counter() - start
    sizes = {"f16_bytes": f16.stat().st_size, "gguf_bytes": gguf.stat().st_size}
    if mmproj:
        sizes["mmproj_bytes"] = mmproj.stat().st_size
    return ExportResult(fused_dir, f16, gguf, quant, checks, parities, None, timings, sizes, tensor_types,
                        mmproj, mmproj_check)
