"""Render a scenario as Gemma chat turns: the one function training, evaluation, chat and export use.

Gemma's template has only `user` and `model` turns:

    <bos><start_of_turn>user
    {context}

    {first player text}<end_of_turn>
    <start_of_turn>model
    {DM text}<end_of_turn>
    ...

- The SYSTEM text and the parsed context (role, world, location, party, player) are folded into
  the first user turn, exactly as Gemma's template folds a system message (content + blank line).
- DM turns and DM-voiced speaker turns (`Brenna: ...`) are `model` turns; player turns are `user`
  turns (`Zara: ...` when the section is named after the player character); a TOOLCALL section is
  a `user` turn `Tool results:\\n...`. Consecutive turns of one role are merged with a blank line.
- Loss is computed on the text of `model` turns and their `<end_of_turn>` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .scenario import DM, TOOLCALL, USER, Scenario, Turn

BOS = "<bos>"
START = "<start_of_turn>"
END = "<end_of_turn>"
TOOL_RESULTS_PREFIX = "Tool results:\n"
# What ends a Gemma reply: the app, chat and validation stop generating at these.
STOP_WORDS = [END, "<eos>"]

# Gemma 3 / 3n chat template (text part), carried by the tiny model and written into every export.
# The llama.cpp copy inside llama-cpp-python ships Gemma 2's template, which rejects a system role.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}"
    "{%- set role = \"model\" -%}"
    "{%- else -%}"
    "{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{'<start_of_turn>model\n'}}"
    "{%- endif -%}"
)


@dataclass
class Rendered:
    text: str
    messages: list[dict[str, str]]  # OpenAI-style, roles "user" / "assistant"
    train_spans: list[tuple[int, int]] = field(default_factory=list)  # char spans with loss


def context_text(scenario: Scenario, tools: str = "") -> str:
    """The scenario's SYSTEM text and header facts as the model sees them, then `tools` (the list of
    data/profiles.tools_prompt, when data.tools_in_prompt is on)."""
    lines: list[str] = []
    if scenario.system_prompt:
        lines += [scenario.system_prompt.strip(), ""]
    for key, value in (("Role", scenario.role), ("World", scenario.world), ("Location", scenario.location)):
        if value:
            lines.append(f"{key}: {value}")
    if scenario.party:
        lines.append("Party:")
        for member in scenario.party:
            lines.append(f"- {member.name} ({member.description})" if member.description else f"- {member.name}")
    elif scenario.party_none:
        lines.append("Party: none")
    if scenario.player:
        lines.append("Player:")
        lines += [f"- {key}: {value}" for key, value in scenario.player.items()]
    if tools:
        lines += ["", tools]
    return "\n".join(lines).strip()


def turn_content(turn: Turn) -> str:
    text = turn.text.strip()
    if turn.kind == TOOLCALL:
        return TOOL_RESULTS_PREFIX + text
    if turn.speaker:
        return f"{turn.speaker}: {text}"
    return text


def scenario_messages(scenario: Scenario, turns: list[Turn] | None = None, tools: str = "") -> list[dict[str, str]]:
    """Alternating user/assistant messages; the context is folded into the first user message."""
    messages: list[dict[str, str]] = [{"role": "user", "content": context_text(scenario, tools)}]
    for turn in scenario.turns if turns is None else turns:
        role = "assistant" if turn.kind == DM else "user"
        content = turn_content(turn)
        if messages[-1]["role"] == role:
            joiner = "\n\n" if messages[-1]["content"] else ""
            messages[-1]["content"] = messages[-1]["content"] + joiner + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def render_messages(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> Rendered:
    """The exact text Gemma's chat template gives, with the spans the loss is computed on."""
    parts = [BOS]
    spans: list[tuple[int, int]] = []
    offset = len(BOS)
    for index, message in enumerate(messages):
        role = "model" if message["role"] == "assistant" else message["role"]
        if role == "system":
            raise ValueError("fold the system text into the first user message (scenario_messages does)")
        if (role == "user") != (index % 2 == 0):
            raise ValueError("conversation roles must alternate user/model, starting with user")
        head = f"{START}{role}\n"
        body = message["content"].strip() + END
        parts += [head, body, "\n"]
        if role == "model":
            spans.append((offset + len(head), offset + len(head) + len(body)))
        offset += len(head) + len(body) + 1
    if add_generation_prompt:
        parts.append(f"{START}model\n")
    return Rendered("".join(parts), messages, spans)


def render_scenario(scenario: Scenario, tools: str = "") -> Rendered:
    return render_messages(scenario_messages(scenario, tools=tools))


@dataclass
class PromptExample:
    """One DM reply to predict: the conversation so far (ending in the generation prompt)."""

    scenario: str
    turn_index: int
    prompt: str
    messages: list[dict[str, str]]
    reference: str


def dm_examples(scenario: Scenario) -> list[PromptExample]:
    """A prompt for every model message, for evaluation and parity checks."""
    return message_examples(scenario.path, scenario_messages(scenario))


def message_examples(name: str, messages: list[dict[str, str]]) -> list[PromptExample]:
    """A prompt for every model message of a rendered conversation (e.g. a dataset record)."""
    examples = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            history = messages[:index]
            prompt = render_messages(history, add_generation_prompt=True).text
            examples.append(PromptExample(name, index, prompt, history, message["content"]))
    return examples


__all__ = [
    "GEMMA_CHAT_TEMPLATE", "Rendered", "PromptExample", "context_text", "scenario_messages",
    "render_messages", "render_scenario", "dm_examples", "message_examples", "USER", "DM",
]
