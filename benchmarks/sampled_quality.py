"""Greedy scores against the app's sampling: does the yardstick see what a player would?

    python benchmarks/sampled_quality.py --project DIR --model DIR/assets/models/versions/.../x.gguf [--seeds 3]

`mlx-dm validate` decodes greedily so that a score repeats exactly; the app samples (temperature
0.7, top_p 0.9, cactus-app.md). A weak model's greedy reply often repeats one sentence to the
token limit, which a sampled reply escapes, so the two can differ in when the model calls a tool.
This scores one GGUF both ways on the text no training saw (the independent set and, when it is
beside this checkout, the game's real files), with every seed's F1 and calls where none belong,
their mean and spread, and the ratio of the sampled mean to the greedy figure of the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from quality_real_model import held_out_sources


def scores_of(model: Path, cases: list, vocabulary: set[str], temperature: float, seed: int) -> dict:
    from mlx_dm.config import ValidateConfig
    from mlx_dm.evaluate.validate import evaluate_backend
    from mlx_dm.inference import GgufBackend

    settings = ValidateConfig()
    backend = GgufBackend(model, n_ctx=settings.n_ctx, temperature=temperature, top_p=0.9 if temperature else 1.0,
                          seed=seed)
    overall = evaluate_backend("sampled" if temperature else "greedy", backend, cases, vocabulary,
                               settings.max_tokens, max_reply_tokens=settings.max_reply_tokens).overall
    return {"tool_f1": overall["tool_f1"], "false_call_rate": overall["false_call_rate"],
            "tool_f1_interval": overall["tool_f1_interval"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="the project the model was trained in")
    parser.add_argument("--model", type=Path, required=True, help="the GGUF to score")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.7, help="the app's temperature")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    from mlx_dm.config import load_config
    from mlx_dm.pipeline.project import Project
    from mlx_dm.pipeline.validate import tool_vocabulary

    vocabulary = tool_vocabulary(Project(load_config(args.project)))
    results = {}
    for source, cases in held_out_sources(args.project / "ai-training").items():
        greedy = scores_of(args.model, cases, vocabulary, 0.0, 0)
        sampled = [scores_of(args.model, cases, vocabulary, args.temperature, seed) for seed in range(args.seeds)]
        f1s = [s["tool_f1"] for s in sampled]
        results[source] = {"cases": len(cases), "greedy": greedy, "sampled": sampled,
                           "sampled_f1_mean": statistics.mean(f1s), "sampled_f1_spread": max(f1s) - min(f1s)}
        calls = ", ".join(f"{s['tool_f1']:.3f}/{s['false_call_rate']:.3f}" for s in sampled)
        ratio = f"{statistics.mean(f1s) / greedy['tool_f1']:.2f}x" if greedy["tool_f1"] else "n/a (greedy F1 0)"
        print(f"{source:12} {len(cases):3} cases  greedy F1/no-call errors {greedy['tool_f1']:.3f}/"
              f"{greedy['false_call_rate']:.3f}  sampled (T {args.temperature}) {calls}  "
              f"mean F1 {statistics.mean(f1s):.3f} ({ratio} greedy), spread {max(f1s) - min(f1s):.3f}")
    if args.out:
        args.out.write_text(json.dumps({"model": str(args.model), "temperature": args.temperature,
                                        "sources": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
