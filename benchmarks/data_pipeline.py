"""Scan + parse + validate + render throughput on N synthetic scenario files (tokenisation excluded).

    python benchmarks/data_pipeline.py [N]

Prints files/s for the whole pipeline and, as the baseline measured in the same run, for
reading the same files' bytes alone (the ratio shows how far parsing is from I/O speed).
Target: at least 5,000 files/s on a 2-core CI machine.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from mlx_dm.data.discover import find_scenario_files, scan
from mlx_dm.data.render import render_scenario

TEMPLATE = """# SYSTEM

Role: Dungeon Master
World: {world}
Location: {location}
Party:

- Wren (Gnome Artificer, Level 2, HP: 14/14, AC: 15)
- Okoro (Human Monk, Level 2, HP: {hp}/17, AC: 16)

# USER

Okoro pushes the door open and listens before stepping in.

# DM

Dust hangs in the air. Something shifts in the loft above. Make a Perception check. [roll: perception]

# TOOLCALL

perception: Okoro rolls 1d20+4 = {roll}+4 = {total}

# DM

With a {total} you catch it: yellow eyes between the sacks. [inventory: Okoro, -torch]

# USER

I draw my staff and step closer.

# DM

The creature hisses. Roll for initiative! [roll: initiative]

# TOOLCALL

initiative: Okoro(15), Wren(9), giant rat(12)
"""


def main(n: int) -> None:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ai-training"
        for i in range(n):
            folder = root / ("combat", "roleplay", "exploration")[i % 3] / f"batch{i % 17}"
            folder.mkdir(parents=True, exist_ok=True)
            roll = rng.randint(1, 20)
            (folder / f"s{i:06d}.md").write_text(TEMPLATE.format(world=f"World {i}", location=f"Place {i % 97}",
                                                                 hp=rng.randint(1, 17), roll=roll, total=roll + 4))
        start = time.perf_counter()
        for path in find_scenario_files(root):
            path.read_bytes()
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        result = scan(root)
        characters = sum(len(render_scenario(r.scenario).text) for r in result.accepted)
        pipeline_s = time.perf_counter() - start
    accepted = len(result.accepted)
    print(f"files: {n}, accepted: {accepted}, rendered characters: {characters:,}")
    print(f"read only (baseline): {n / read_s:,.0f} files/s")
    print(f"scan+parse+validate+render: {n / pipeline_s:,.0f} files/s  (target >= 5,000)")
    print(f"ratio pipeline/read-only: {read_s / pipeline_s:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
