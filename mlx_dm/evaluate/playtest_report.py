"""A playtest run: the games played, their totals, the checks against `[playtest]`, and the report
(playtest.md, playtest.json, playtest.png) beside them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..config import PlaytestConfig
from ..data.profiles import AgentProfile
from ..errors import ConfigError, ValidationFailed
from ..files import atomic_write_json, atomic_write_text
from .playtest import Game, PlaySettings, load_scripts, play_game
from .validate import Check


@dataclass
class PlaytestReport:
    model: str
    profile: str
    settings: dict
    games: list[Game]
    summary: dict
    checks: list[Check] = field(default_factory=list)
    thresholds: bool = True

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks) or not self.thresholds

    def to_dict(self) -> dict:
        return {"model": self.model, "profile": self.profile, "settings": self.settings, "passed": self.passed,
                "thresholds": self.thresholds, "summary": self.summary,
                "checks": [asdict(c) for c in self.checks], "games": [asdict(g) for g in self.games]}


def summarise(games: list[Game]) -> dict:
    replies = [r for g in games for r in g.replies]
    calls = sum(len(r.calls) for r in replies)
    missed = sum(len(r.look_alikes) for r in replies)
    seconds = sum(r.seconds for r in replies)
    tokens = sum(r.tokens for r in replies)
    latencies = sorted(r.seconds for r in replies)
    return {
        "games": len(games), "player_turns": sum(len({r.turn for r in g.replies}) for g in games),
        "replies": len(replies), "calls": calls, "look_alikes": missed,
        "parsed": calls / (calls + missed) if calls + missed else 1.0,
        **{verdict: sum(r.verdicts[verdict] for r in replies) for verdict in ("acts", "drops", "rejects")},
        "invented_results": sum(r.invented_result for r in replies),
        "player_decisions": sum(r.for_player for r in replies),
        "repeated": sum(r.repeated for r in replies) / len(replies) if replies else 0.0,
        "garbage": sum(r.garbage for r in replies),
        "garbage_after_trim": sum(r.garbage and r.after_trim for r in replies),
        "games_trimmed": sum(g.trims > 0 for g in games), "replies_after_trim": sum(r.after_trim for r in replies),
        "errors": [f"{g.script}: {g.error}" for g in games if g.error],
        "seconds_per_reply": seconds / len(replies) if replies else 0.0,
        "p90_seconds": latencies[int(0.9 * (len(latencies) - 1))] if latencies else 0.0,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
    }


def checks_for(summary: dict, config: PlaytestConfig) -> list[Check]:
    return [
        Check("calls the app's pattern reads", summary["parsed"] >= config.min_parsed, summary["parsed"],
              config.min_parsed, f"{summary['look_alikes']} call-like texts it misses"),
        Check("no invented tool results", summary["invented_results"] <= config.max_invented_results,
              summary["invented_results"], config.max_invented_results),
        Check("never decides or speaks for a player", summary["player_decisions"] <= config.max_player_decisions,
              summary["player_decisions"], config.max_player_decisions),
        Check("replies not repeated", summary["repeated"] <= config.max_repeated, summary["repeated"],
              config.max_repeated),
        Check("no crash and no garbage when the context fills",
              not summary["errors"] and summary["garbage_after_trim"] == 0, None, None,
              "; ".join(summary["errors"][:3]) or f"{summary['games_trimmed']} games trimmed"),
    ]


def run_playtest(backend, model_name: str, config: PlaytestConfig, profiles: dict[str, AgentProfile],
                 scripts_dir: Path | None = None, progress: Callable[[int, int], None] | None = None,
                 tools: str = "") -> PlaytestReport:
    """`config.sessions` games, game i on script i (cycling), seeded by `config.seed + i`."""
    if config.profile not in profiles:
        raise ConfigError(f"playtest.profile '{config.profile}' is not an agent profile",
                          f"use one of {', '.join(profiles)}, or define it under [data.agent_profiles]")
    scripts = load_scripts(scripts_dir)
    settings = PlaySettings(config.turns, config.n_ctx, config.max_tokens, config.seed, tools=tools)
    games = []
    for index in range(config.sessions):
        games.append(play_game(backend, scripts[index % len(scripts)], settings, profiles[config.profile],
                               config.seed + index))
        if progress:
            progress(index + 1, config.sessions)
    summary = summarise(games)
    return PlaytestReport(model_name, config.profile, asdict(config), games, summary, checks_for(summary, config),
                          config.thresholds)


def raise_if_playtest_failed(report: PlaytestReport, path: Path) -> None:
    if report.passed:
        return
    failed = "; ".join(c.name for c in report.checks if not c.passed)
    raise ValidationFailed(f"the model failed its playtest: {failed}",
                           f"see {path}; the games are in playtest.json. Train on more scenarios, or change "
                           "the thresholds in mlx-dm.toml [playtest]")


def _value(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(report: PlaytestReport) -> str:
    s = report.summary
    verdict = "PASSED" if all(c.passed for c in report.checks) else "FAILED" if report.thresholds else "REPORTED"
    lines = [f"# Playtest: {report.model}", "",
             f"**{verdict}**: {s['games']} games, {s['player_turns']} player turns, {s['replies']} DM replies; "
             f"context {report.settings['n_ctx']}, temperature {report.settings['temperature']}, top_p "
             f"{report.settings['top_p']}, n_predict {report.settings['max_tokens']}, seed {report.settings['seed']}; "
             f"calls read by the `{report.profile}` profile."
             + ("" if report.thresholds else " Thresholds off (the tiny dev model)."), "",
             "| check | result | value | threshold | detail |", "|---|---|---|---|---|"]
    lines += [f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {_value(c.value)} | {_value(c.threshold)} "
              f"| {c.detail} |" for c in report.checks]
    lines += ["", "| calls | read | acted on | dropped | rejected | invented results | for a player | repeated "
              "| trimmed games | s/reply (p90) | tokens/s |", "|---|---|---|---|---|---|---|---|---|---|---|",
              f"| {s['calls']} | {s['parsed']:.1%} | {s['acts']} | {s['drops']} | {s['rejects']} "
              f"| {s['invented_results']} | {s['player_decisions']} | {s['repeated']:.1%} | {s['games_trimmed']} "
              f"| {s['seconds_per_reply']:.2f} ({s['p90_seconds']:.2f}) | {s['tokens_per_second']:.1f} |", "",
              "## Games", "", "| game | seed | replies | calls | acted on | invented | for a player | repeated "
              "| trims | error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for game in report.games:
        r = game.replies
        lines.append(f"| {game.script} | {game.seed} | {len(r)} | {sum(len(x.calls) for x in r)} "
                     f"| {sum(x.verdicts['acts'] for x in r)} | {sum(x.invented_result for x in r)} "
                     f"| {sum(x.for_player for x in r)} | {sum(x.repeated for x in r)} | {game.trims} "
                     f"| {game.error} |")
    flagged = [(g, x) for g in report.games for x in g.replies if x.invented_result or x.for_player or x.garbage]
    if flagged:
        lines += ["", "## Flagged replies", ""]
        for game, reply in flagged[:12]:
            why = ", ".join(w for w, on in (("invented result", reply.invented_result), ("for a player", reply.for_player),
                                            ("garbage", reply.garbage)) if on)
            lines.append(f"- {game.script} turn {reply.turn} ({why}): {reply.text[:240]!r}")
    lines += ["", "![latency and calls per game](playtest.png)", ""]
    return "\n".join(lines)


def plot(report: PlaytestReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for game in report.games:
        left.plot(range(1, len(game.replies) + 1), [r.seconds for r in game.replies], alpha=0.6)
    left.set(title="seconds per DM reply", xlabel="reply in the game", ylabel="s")
    names = [str(i + 1) for i in range(len(report.games))]
    bottom = [0] * len(report.games)
    for key, colour in (("acts", "#4caf50"), ("drops", "#ffb300"), ("rejects", "#e53935")):
        values = [sum(r.verdicts[key] for r in g.replies) for g in report.games]
        right.bar(names, values, bottom=bottom, color=colour, label=key)
        bottom = [b + v for b, v in zip(bottom, values)]
    right.set(title=f"calls per game ({report.profile})", xlabel="game", ylabel="calls")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_playtest(report: PlaytestReport, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "playtest.json", report.to_dict())
    plot(report, out_dir / "playtest.png")
    atomic_write_text(out_dir / "playtest.md", markdown(report))
    return out_dir / "playtest.md"
