"""The export report: what was written, how the quantisation was chosen (a table and a PNG of the
size–quality frontier), the llama.cpp checks and the parity with the fused MLX model."""

from __future__ import annotations

from pathlib import Path

from ..app_config import cactus_snippet
from ..files import atomic_write_json, atomic_write_text
from .choose import QuantChoice


def choice_lines(choice: QuantChoice, f16_bytes: int) -> list[str]:
    """The frontier as a table: every candidate's size and, for those that fit, its scores."""
    lines = ["## Quantisation, chosen by measurement", "",
             f"Every candidate replied greedily in llama.cpp to the same {choice.cases} held-out cases (the "
             f"validation split and the independent set, balanced) as the f16 file, which scored tool-call F1 "
             f"{_points(choice.reference_f1)} in {choice.reference_seconds:.0f}s. "
             + ("All were quantised with the importance matrix. " if choice.imatrix else "")
             + f"Kept: **{choice.chosen.label}**, {choice.reason}. Teacher-forced on the first tokens of "
             f"the reference replies ({choice.forced_positions} positions), each file's next-token distribution "
             "against f16's: the share where both choose the same token, and the mean KL divergence.", "",
             "| candidate | MB | share of f16 | tool-call F1 | drift (points) | 90% bound of the drift "
             "| replies identical to f16 | same first choice as f16 | KL from f16 | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in choice.candidates:
        scored = c.tool_f1 is not None
        drift = f"{((choice.reference_f1 or 0) - c.tool_f1) * 100:+.1f}" if scored else "over the budget"
        kept = " (kept)" if c.label == choice.chosen.label else ""
        identical = "" if c.identical is None else f"{c.identical:.0%}"
        same = "" if c.same_top1 is None else f"{c.same_top1:.1%}"
        kl = "" if c.mean_kl is None else f"{c.mean_kl:.4f}" + (" (over max_kl)" if c.mean_kl > choice.max_kl else "")
        bound = "" if c.f1_drop_lower is None else (f"{c.f1_drop_lower * 100:+.1f}"
                                                    + (" (significantly below)" if c.significantly_below else ""))
        lines.append(f"| {c.label}{kept} | {c.size_bytes / 1e6:.1f} | {c.size_bytes / f16_bytes:.0%} | "
                     f"{_points(c.tool_f1)} | {drift} | {bound} | {identical} | {same} | {kl} | {c.seconds:.0f} |")
    lines += [f"- note: {note}" for note in choice.notes]
    lines += ["", f"Drift is the F1 points a candidate loses against f16; its bound, the one-sided 90% lower bound "
              f"of that loss over the same cases drawn for both (above 0: significantly below f16). Kept: the smallest "
              f"file with KL from f16 at most {choice.max_kl:g} and not significantly below. The figures mean something on trained "
              "real weights only: the built-in tiny model's random weights make every candidate's F1 noise.", ""]
    return lines


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}"


def plot_frontier(choice: QuantChoice, path: Path) -> None:
    """Size against tool-call F1 (the f16 line, each file's 90% bound, the kept file marked), and size
    against the teacher-forced KL divergence from f16 (the max_kl line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [c for c in choice.candidates if c.tool_f1 is not None]
    sizes = [c.size_bytes / 1e6 for c in scored]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    reference = (choice.reference_f1 or 0) * 100
    bounds = [c for c in scored if c.f1_drop_lower is not None]
    left.errorbar([c.size_bytes / 1e6 for c in bounds], [c.tool_f1 * 100 for c in bounds],
                  yerr=[[0] * len(bounds), [max(0.0, c.f1_drop - c.f1_drop_lower) * 100 for c in bounds]],
                  fmt="none", ecolor="tab:blue", alpha=0.4, capsize=3, label="up to f16 less the 90% bound (at the f16 line: not significantly below)")
    left.axhline(reference, color="tab:green", lw=1, label=f"f16 ({reference:.1f})")
    left.plot(sizes, [c.tool_f1 * 100 for c in scored], "o-", color="tab:blue")
    chosen = choice.chosen
    left.plot([chosen.size_bytes / 1e6], [(chosen.tool_f1 or 0) * 100], "*", ms=16, color="tab:red",
              label=f"kept: {chosen.label}")
    left.set_ylabel("tool-call F1 (points)")
    left.set_title(f"greedy replies to {choice.cases} held-out cases")
    left.legend(fontsize=8, loc="lower right")
    kl = [c.mean_kl if c.mean_kl is not None else float("nan") for c in scored]
    right.plot(sizes, kl, "o-", color="tab:purple")
    right.axhline(choice.max_kl, color="tab:green", lw=1, ls="--", label=f"max_kl {choice.max_kl:g}")
    right.legend(fontsize=8, loc="upper right")
    right.set_yscale("log")
    right.set_ylabel("mean KL divergence from f16 (nats, log scale)")
    right.set_title(f"teacher-forced, {choice.forced_positions} reply positions")
    for axis, values in ((left, [c.tool_f1 * 100 for c in scored]), (right, kl)):
        for c, x, y in zip(scored, sizes, values):
            axis.annotate(c.label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set_xlabel("file size (MB)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(work_dir: Path, result, metadata: dict) -> None:
    """export-report.json and .md for an ExportResult (pipeline.py's; not imported: it imports this)."""
    data = result.to_dict()
    data["metadata"] = {k: v for k, v in metadata.items() if not k.startswith("tokenizer.chat_template")}
    atomic_write_json(work_dir / "export-report.json", data)
    matrix = (f"`{result.imatrix.name}`, from the training scenarios ({metadata.get('quantize.imatrix.chunks_count', '?')} "
              "chunks)" if result.imatrix else "none (export.imatrix = false)")
    lines = ["# Export report", "",
             f"- GGUF: `{result.gguf.name}` ({result.sizes['gguf_bytes'] / 1e6:.1f} MB, {result.quant}); "
             f"f16: {result.sizes['f16_bytes'] / 1e6:.1f} MB; `general.name` {metadata.get('general.name')!r}",
             f"- Tensor types: {', '.join(metadata.get('_tensor_types', []))}"
             + (f"; per-tensor overrides for the size budget: `{result.tensor_types}`" if result.tensor_types else ""),
             f"- Importance matrix: {matrix}",
             f"- Timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()), ""]
    if result.choice:
        lines += choice_lines(result.choice, result.sizes["f16_bytes"])
        plot_frontier(result.choice, Path(work_dir) / "quantisation.png")
        lines += ["![size against tool-call F1](quantisation.png)", ""]
    lines += ["## Checks (llama.cpp)", "", "| file | loads | architecture | chat template | <end_of_turn> | context | sample |",
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
