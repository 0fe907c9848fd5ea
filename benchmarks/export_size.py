"""GGUF size of the E2B-shaped random Gemma 3n per quantisation plan, against the 2 GB budget.

    python benchmarks/export_size.py [--plans stock,ple-q2k,...] [--keep]
    python benchmarks/export_size.py --route [--cases 8]

File size depends on tensor shapes and types, not on values, so random weights of
google/gemma-3n-E2B-it's exact shapes (mlx_dm.model.tiny.E2B_SPEC) give the real sizes. The
checkpoint (~9 GB) and its f16 GGUF (~9 GB) are built once under .mlx-dm/ and never committed.
Prints bytes per tensor group and the total for each plan; the baseline is the stock Q4_K_M mix
measured in the same run.

`--route` runs the export's quantisation route on that f16 file instead: the importance matrix
(here of the starter corpus's text), every candidate of ROUTE_CANDIDATES sized by --dry-run under
the 2 GB budget (with the budget mix where stock is over), quantised with the matrix, scored
against f16 on held-out cases in llama.cpp, and the choice. Random weights make the scores noise:
it shows that the route runs at E2B's size and what it costs in time, not what it keeps.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

from mlx_dm.data.starter import STARTER_DIR

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 2.0e9
PLANS: dict[str, tuple[str, dict[str, str]]] = {
    "stock": ("Q4_K_M", {}),
    "ple-q3k": ("Q4_K_M", {"per_layer_token_embd": "Q3_K"}),
    "ple-q2k": ("Q4_K_M", {"per_layer_token_embd": "Q2_K"}),
    "ple-q2k-emb-q3k": ("Q4_K_M", {"per_layer_token_embd": "Q2_K", r"^token_embd": "Q3_K"}),
    "ple-q2k-emb-q2k-ffn-q4k": ("Q4_K_M", {"per_layer_token_embd": "Q2_K", r"^token_embd": "Q2_K", r"ffn_down": "Q4_K"}),
    "q3km-ple-q2k": ("Q3_K_M", {"per_layer_token_embd": "Q2_K"}),
}
GROUPS = [("per_layer_token_embd", r"^per_layer_token_embd"), ("token_embd", r"^token_embd"),
          ("attention", r"\.attn_"), ("feed-forward", r"\.ffn_"), ("altup/laurel/per-layer", r"altup|laurel|inp_gate|proj|per_layer"),
          ("norms and other", r".")]


ROUTE_CANDIDATES = ["Q3_K_M", "Q4_K_S", "Q4_K_M"]


def route(f16: Path, work: Path, cases: int) -> None:
    from mlx_dm.config import DEFAULT_AGENT_TOOLS
    from mlx_dm.dice import DICE_TOOLS
    from mlx_dm.evaluate.cases import independent_cases, select_cases
    from mlx_dm.export.choose import choose_quant
    from mlx_dm.export.imatrix import compute_imatrix
    from mlx_dm.export.report import choice_lines, plot_frontier

    start = time.perf_counter()
    text = "\n".join(path.read_text() for path in sorted(STARTER_DIR.rglob("*.md")))
    matrix = compute_imatrix(f16, text, work / "imatrix.gguf", chunks=4)
    matrix_seconds = time.perf_counter() - start
    print(f"importance matrix (4 chunks of 512 tokens): {matrix_seconds:.0f}s", flush=True)

    def make(path: Path, what: str, build) -> Path:
        print(what, flush=True)
        begin = time.perf_counter()
        made = build()
        print(f"  {path.name}: {made.stat().st_size / 1e9:.3f} GB in {time.perf_counter() - begin:.0f}s", flush=True)
        return made

    vocabulary = set(DICE_TOOLS) | {t.lower() for t in DEFAULT_AGENT_TOOLS}
    choice = choose_quant(f16, work, "e2b-shaped", ROUTE_CANDIDATES, BUDGET, matrix, select_cases(independent_cases(), cases),
                          vocabulary, 0.02, 16, 1024, make)
    for candidate in choice.candidates:
        state = "over the budget" if candidate.path is None else f"F1 {candidate.tool_f1:.3f}, {candidate.seconds:.0f}s"
        print(f"{candidate.label:20} {candidate.size_bytes / 1e9:.3f} GB  {state}")
    print(f"chose {choice.chosen.label} ({choice.chosen.size_bytes / 1e9:.3f} GB): {choice.reason}; "
          f"route {time.perf_counter() - start:.0f}s")
    plot_frontier(choice, work / "route.png")
    (work / "route.md").write_text("\n".join(choice_lines(choice, f16.stat().st_size)) + "\n")
    (work / "route.json").write_text(json.dumps({**choice.to_dict(), "imatrix_seconds": matrix_seconds,
                                                 "seconds": time.perf_counter() - start}, indent=2))


def group_of(name: str) -> str:
    return next(group for group, pattern in GROUPS if re.search(pattern, name))


def main() -> None:
    from mlx_dm.cpu_blas import warn_if_slow

    warn_if_slow()  # before a run that the reference BLAS would make many times slower
    from gguf import GGUFReader

    from mlx_dm.export.gguf import convert_to_gguf, quantize
    from mlx_dm.model.tiny import E2B_SPEC, build_tiny_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", default=",".join(PLANS))
    parser.add_argument("--keep", action="store_true", help="keep the quantised files")
    parser.add_argument("--route", action="store_true", help="the export's measured choice under the budget instead")
    parser.add_argument("--cases", type=int, default=8, help="with --route: held-out cases each file replies to")
    args = parser.parse_args()
    work = ROOT / ".mlx-dm" / "e2b-shaped"
    start = time.perf_counter()
    checkpoint = build_tiny_model(work / "checkpoint", STARTER_DIR, E2B_SPEC)
    f16 = work / "e2b-shaped-f16.gguf"
    if not f16.exists():
        convert_to_gguf(checkpoint, f16, "f16", log_file=work / "convert.log")
    print(f"E2B-shaped checkpoint and f16 GGUF ready in {time.perf_counter() - start:.0f}s "
          f"(f16: {f16.stat().st_size / 1e9:.2f} GB)")
    if args.route:
        return route(f16, work, args.cases)
    results = {}
    for plan in args.plans.split(","):
        quant, overrides = PLANS[plan]
        out = work / f"e2b-shaped-{plan}.gguf"
        begin = time.perf_counter()
        quantize(f16, out, quant, tensor_types=overrides)
        reader = GGUFReader(str(out))
        groups: dict[str, int] = defaultdict(int)
        types: dict[str, set] = defaultdict(set)
        for tensor in reader.tensors:
            group = group_of(tensor.name)
            groups[group] += int(tensor.n_bytes)
            types[group].add(tensor.tensor_type.name)
        total = out.stat().st_size
        results[plan] = {"quant": quant, "overrides": overrides, "file_bytes": total, "groups": dict(groups),
                         "types": {k: sorted(v) for k, v in types.items()}, "seconds": time.perf_counter() - begin}
        if not args.keep:
            out.unlink()
        print(f"\n{plan}: {quant} {overrides or ''} -> {total / 1e9:.3f} GB "
              f"({'under' if total < BUDGET else 'OVER'} the {BUDGET / 1e9:.1f} GB budget)")
        for group, size in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"  {group:26} {size / 1e9:7.3f} GB  {', '.join(sorted(types[group]))}")
    if "stock" in results:
        base = results["stock"]["file_bytes"]
        print("\nratio to stock Q4_K_M: " + ", ".join(f"{p} {r['file_bytes'] / base:.2f}" for p, r in results.items()))
    (work / "export_size.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({p: r["file_bytes"] for p, r in results.items()}))


if __name__ == "__main__":
    main()
