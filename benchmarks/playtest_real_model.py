"""Does the tuned real model hold up in a game? `mlx-dm playtest` on the GGUF of quality_real_model.py.

    python benchmarks/quality_real_model.py            # trains and exports the real Gemma 3 270M first
    python benchmarks/playtest_real_model.py [--gguf FILE] [--sessions 10] [--turns 12] [--out docs/real-model/playtest]

Plays the built-in scripts with the app's settings (context 2048, temperature 0.7, top_p 0.9,
n_predict 256, the game's stop words through llama.cpp's end-of-generation tokens) and the
Cactus-era agent profile, the same seeds every run, then prints the totals and ends with:

    playtest: parsed P, invented results I, player decisions D, repeated R, context trimmed in T games, crashes C
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mlx-dm" / "quality-real-model" / "project"


def newest_gguf(project: Path) -> Path | None:
    found = sorted(project.glob("runs/*-train/export/*-Q*.gguf"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="default: the newest export of quality_real_model.py's project")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "real-model" / "playtest")
    args = parser.parse_args()
    gguf = args.gguf or newest_gguf(WORK)
    if gguf is None or not gguf.is_file():
        print("no GGUF: run benchmarks/quality_real_model.py first, or pass --gguf")
        return 2
    project = args.out.parent / ".playtest-project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    command = [sys.executable, "-m", "mlx_dm", "-C", str(project), "playtest", "--model", str(gguf),
               "--sessions", str(args.sessions), "--turns", str(args.turns)]
    start = time.perf_counter()
    code = subprocess.call(command)  # exit 7 when a threshold fails: the figures are what matter here
    seconds = time.perf_counter() - start
    (run,) = sorted((project / "runs").glob("*-playtest"))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("playtest.md", "playtest.json", "playtest.png"):
        shutil.copy(run / name, args.out / name)
    shutil.rmtree(project)
    report = json.loads((args.out / "playtest.json").read_text())
    s = report["summary"]
    from quality_real_model import machine  # noqa: E402 - the benchmark beside this one

    print(f"\n{gguf.name} on {machine()}: {s['games']} games, {s['replies']} replies in {seconds / 60:.1f} min "
          f"(exit {code}); {s['seconds_per_reply']:.2f} s per reply, {s['tokens_per_second']:.1f} tokens/s")
    print(f"playtest: parsed {s['parsed']:.3f}, invented results {s['invented_results']}, player decisions "
          f"{s['player_decisions']}, repeated {s['repeated']:.3f}, context trimmed in {s['games_trimmed']} games, "
          f"crashes {len(s['errors'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
