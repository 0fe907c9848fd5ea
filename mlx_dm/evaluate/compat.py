"""Will the game run this GGUF as trained? Template, stop tokens, tool calls the agent reads, phone memory, speed.

Memory figures come from llama.cpp itself: the KV cache and compute buffer sizes it reports when
it creates a context of the app's length, plus the file (mapped whole on the phone).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.render import render_messages
from ..data.toolcalls import find_calls, find_look_alikes
from ..data.render import STOP_WORDS
from ..llama.runtime import captured_llama_logs, open_gguf

_MIB = re.compile(r"([\d.]+)\s*MiB")

# Phone tiers the memory check reports on: RAM, and the share of it an app in the foreground can
# count on before the OS kills it (iOS's per-app limit and Android's low-memory killer leave about
# half on 6-8 GB phones, less on 4 GB ones; these shares are estimates, not measurements).
PHONE_TIERS = (
    ("4 GB (older iPhones, budget Android)", 4.0, 0.40),
    ("6 GB (iPhone 13-15, mid-range Android)", 6.0, 0.50),
    ("8 GB (iPhone 15 Pro and later, most flagships)", 8.0, 0.55),
    ("12 GB (large Android flagships)", 12.0, 0.60),
)


@dataclass
class MemoryEstimate:
    file_bytes: int
    kv_cache_bytes: int
    compute_buffer_bytes: int
    n_ctx: int
    budget_bytes: int
    phone_ram_gb: float

    @property
    def total_bytes(self) -> int:
        return self.file_bytes + self.kv_cache_bytes + self.compute_buffer_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.budget_bytes

    def tiers(self) -> list[dict]:
        """Which phone tiers this fits (PHONE_TIERS), for the report beside the configured phone."""
        return [{"tier": name, "ram_gb": ram, "app_share": share, "budget_bytes": int(ram * share * 1e9),
                 "fits": self.total_bytes <= ram * share * 1e9} for name, ram, share in PHONE_TIERS]

    def to_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes, "fits": self.fits, "tiers": self.tiers()}


def memory_from_logs(lines: list[str]) -> tuple[int, int]:
    """KV cache and runtime buffer bytes from llama.cpp's context-creation log.

    Runtime buffers: compute and output buffers, and weights repacked for the CPU (copies beside
    the mapped file). The SWA and full-attention caches each log one `llama_kv_cache: size =` line."""
    kv = compute = 0.0
    for line in lines:
        if re.search(r"(compute|output) buffer size|REPACK model buffer size", line) and (m := _MIB.search(line)):
            compute += float(m.group(1))
        elif re.match(r"llama_kv_cache: size\s*=", line) and (m := _MIB.search(line)):
            kv += float(m.group(1))
    return int(kv * 2**20), int(compute * 2**20)


@dataclass
class CompatReport:
    gguf: str
    loads: bool
    architecture: str = ""
    template_renders_training_text: bool = False
    template_mismatch: str = ""
    end_of_turn_is_eog: bool = False
    eos_token: str = ""
    stop_words: list[str] = field(default_factory=lambda: list(STOP_WORDS))
    trained_context: int = 0
    n_ctx: int = 0
    context_ok: bool = False
    memory: dict = field(default_factory=dict)
    decode_tokens_per_second: float = 0.0
    prompt_tokens_per_second: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.loads and not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def prompt_as_trained(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The conversation before the reply (a final assistant message dropped) and the text training
    rendered it as, ending in the generation prompt: what a runtime's template must reproduce."""
    history = messages[:-1] if messages[-1]["role"] == "assistant" else messages
    return history, render_messages(history, add_generation_prompt=True).text


def render_with_gguf_template(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    """The prompt llama.cpp's Jinja chat formatting (what Cactus applies) makes of the messages."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)
    return formatter(messages=messages).prompt


def check_compat(gguf: Path, conversations: list[list[dict[str, str]]], n_ctx: int, phone_ram_gb: float,
                 app_memory_fraction: float, speed_prompt: str = "", decode_tokens: int = 32) -> CompatReport:
    """Load the GGUF as the app would (context n_ctx) and check everything the game relies on."""
    lines: list[str] = []
    try:
        with captured_llama_logs(lines):
            llm = open_gguf(gguf, n_ctx)
    except Exception as exc:  # noqa: BLE001 - llama.cpp reports load failures as ValueError/RuntimeError
        return CompatReport(str(gguf), False, problems=[f"llama.cpp could not load it: {exc}"])
    report = CompatReport(str(gguf), True)
    problems = report.problems
    meta = llm.metadata
    report.architecture = meta.get("general.architecture", "")
    bos = llm._model.token_get_text(llm.token_bos())
    report.eos_token = llm._model.token_get_text(llm.token_eos())
    if report.eos_token not in ("<eos>", "<end_of_turn>"):
        problems.append(f"the GGUF's end-of-sequence token is {report.eos_token!r}, not <eos>")

    template = meta.get("tokenizer.chat_template", "")
    report.template_renders_training_text = bool(template)
    for messages in conversations:
        history, expected = prompt_as_trained(messages)
        try:
            got = render_with_gguf_template(template, history, bos, report.eos_token) if template else ""
        except Exception as exc:  # noqa: BLE001 - a template error is a finding, not a crash
            got = f"<template error: {exc}>"
        if got != expected:
            report.template_renders_training_text = False
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            report.template_mismatch = f"at character {at}: GGUF gives {got[at:at + 40]!r}, training text has {expected[at:at + 40]!r}"
            break
    if not report.template_renders_training_text:
        problems.append("the embedded chat template does not render conversations as in training "
                        + (report.template_mismatch or "(no template in the GGUF)"))

    import llama_cpp

    end_of_turn = llm.tokenize(b"<end_of_turn>", add_bos=False, special=True)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    report.end_of_turn_is_eog = len(end_of_turn) == 1 and bool(llama_cpp.llama_vocab_is_eog(vocab, end_of_turn[0]))
    if not report.end_of_turn_is_eog:
        problems.append("<end_of_turn> is not an end-of-generation token: replies would run into the next turn")

    report.trained_context = int(meta.get(f"{report.architecture}.context_length", 0) or 0)
    report.n_ctx = llm.n_ctx()
    report.context_ok = report.n_ctx == n_ctx and (not report.trained_context or n_ctx <= report.trained_context)
    if not report.context_ok:
        problems.append(f"context {n_ctx} asked, llama.cpp gave {report.n_ctx} (model trained for {report.trained_context})")

    kv, compute = memory_from_logs(lines)
    memory = MemoryEstimate(Path(gguf).stat().st_size, kv, compute, n_ctx,
                            int(phone_ram_gb * app_memory_fraction * 1e9), phone_ram_gb)
    report.memory = memory.to_dict()
    if not memory.fits:
        problems.append(f"needs {memory.total_bytes / 1e9:.2f} GB (file {memory.file_bytes / 1e9:.2f} + KV cache "
                        f"{kv / 1e9:.2f} + compute {compute / 1e9:.2f}) but a {phone_ram_gb:g} GB phone leaves the app "
                        f"about {memory.budget_bytes / 1e9:.2f} GB: lower n_ctx or use a smaller quant")
    if speed_prompt:
        report.prompt_tokens_per_second, report.decode_tokens_per_second = measure_speed(llm, speed_prompt, decode_tokens)
    llm.close()
    return report


def measure_speed(llm, prompt: str, decode_tokens: int) -> tuple[float, float]:
    """Prompt-processing and decode tokens/s of a loaded llama.cpp model (greedy, EOG ignored)."""
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    prompt_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(decode_tokens):
        token = llm.sample(top_k=1, temp=0.0)
        llm.eval([token])
    decode_seconds = time.perf_counter() - start
    return len(tokens) / prompt_seconds, decode_tokens / decode_seconds


def agent_tool_report(texts: list[str], agent_tools: list[str]) -> dict:
    """Per tool name: how often it appears and whether the app's agent acts on it or drops it;
    plus the bracketed calls its pattern cannot parse."""
    accepted = {name.lower() for name in agent_tools}
    tools: dict[str, dict] = {}
    unparseable: list[str] = []
    for text in texts:
        for call in find_calls(text, 1):
            entry = tools.setdefault(call.name, {"count": 0, "agent": "acts" if call.name in accepted else "drops"})
            entry["count"] += 1
        unparseable += [alike.text for alike in find_look_alikes(text, 1)]
    return {"tools": dict(sorted(tools.items(), key=lambda kv: (-kv[1]["count"], kv[0]))),
            "acts": sum(e["count"] for e in tools.values() if e["agent"] == "acts"),
            "drops": sum(e["count"] for e in tools.values() if e["agent"] == "drops"),
            "unparseable": unparseable}
