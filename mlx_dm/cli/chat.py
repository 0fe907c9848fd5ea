"""`mlx-dm chat`: talk to the model as the game would; dice calls are rolled and fed back."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from ..chat import COMMANDS_HELP, chat_setting, handle, new_session, play
from ..inference import GgufBackend, MlxBackend
from .common import PROJECT_OPTION, app, console, project_of


def _emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@app.command("chat")
def chat_command(
    model: Optional[Path] = typer.Option(None, "--model", help="A .gguf file, or a run's adapters/ folder (MLX). Default: the current model in assets/models."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model for an adapter folder (default: from the run)."),
    scenario: Optional[Path] = typer.Option(None, "--scenario", help="Take world, location, party and player sheet from a scenario file."),
    world: str = typer.Option("", "--world", help="World of the scene, as a scenario's 'World:' key."),
    location: str = typer.Option("", "--location", help="Where the scene starts, as a scenario's 'Location:' key."),
    party: list[str] = typer.Option([], "--party", help="A party member, e.g. 'Wren (Gnome Artificer, Level 2)'; repeat it."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Play one action and exit (non-interactive)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the dice."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy, the same answer every time."),
    max_tokens: int = typer.Option(200, "--max-tokens", min=1, help="Most tokens per DM reply."),
    grammar: Optional[bool] = typer.Option(None, "--grammar/--no-grammar", help="Decode a GGUF with the app's tool grammar, as the phone does (validate.grammar; default on)."),
    project: Optional[Path] = PROJECT_OPTION,
) -> None:
    """Talk to the model as the game would; dice calls are rolled and fed back."""
    where = project_of(project, validate={"grammar": grammar})
    model = where.model_file(model)
    if model.suffix == ".gguf":
        with tempfile.TemporaryDirectory(prefix="mlx-dm-chat-") as folder:  # the backend reads it once
            backend = GgufBackend(model, temperature=temperature, seed=seed, grammar=where.tool_grammar(Path(folder)))
    else:
        backend = MlxBackend(where.base(where.base_of_adapter(model, base)), model, temperature=temperature)
    setting = chat_setting(scenario, world, location, party)
    session = new_session(backend, setting, seed, max_tokens, where.tools_prompt)
    if prompt is not None:
        play(session, prompt, _emit)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401 - arrow keys and history for input()

        console.print(f"[bold]mlx-dm chat[/bold] with {model.name} — {COMMANDS_HELP}")
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            break
        if not interactive and line == "":
            break
        if line.strip() and not handle(line.strip(), session, setting, where.config.data.agent_tools, _emit):
            break
