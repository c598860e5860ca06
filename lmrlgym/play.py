"""``lmrlgym play``: a person (or a scripted policy) plays one task in the terminal.

Before the first turn it prints the task's rules (the env's ``play_help``); after each step what
is new in the transcript, why an action was penalised (``info["illegal_reason"]``, never part of
the observation) and the reward; when an episode ends, the hidden state (the env's
``play_reveal`` info keys), the return and its normalised score. Lines starting with ``:`` are
meta-commands for the player and never reach the env. With ``show_agent_view`` every
observation is printed verbatim instead, exactly as a policy receives it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from lmrlgym.core import TextEnv

META_HELP = "Meta-commands (never sent to the task): :help shows these rules again, :quit ends."
AGENT_VIEW_START = "---- agent view (the observation, verbatim) ----"
AGENT_VIEW_END = "---- end of agent view ----"


class Quit(Exception):
    """The player typed ``:quit`` or closed the input."""


def rules_text(task_id: str, env: TextEnv, description: str) -> str:
    """What a player reads before the first turn: the task's rules, actions and examples."""
    body = env.play_help or description
    return f"=== {task_id} ===\n{body}\n{META_HELP}"


def penalty_text(info: dict[str, Any]) -> str | None:
    """Why the last action was penalised, or None if it was legal."""
    if not info.get("illegal"):
        return None
    return "illegal action: " + info.get("illegal_reason", "the task did not accept it")


def reveal_text(env: TextEnv, info: dict[str, Any]) -> list[str]:
    """The hidden state named by the env's ``play_reveal``, one ``name: value`` line each."""
    return [f"{key.replace('_', ' ')}: {_plain(info[key])}" for key in env.play_reveal
            if key in info]


def score_text(task_id: str, ret: float) -> str | None:
    """The episode's normalised score with what its scale means (None without constants)."""
    from lmrlgym.eval.normalize import PROJECT, score

    constants = PROJECT.get(task_id)
    if constants is None:
        return None
    return (f"normalised score {score(ret, constants):.1f} (0 = return {constants.min:g}, "
            f"50 = the dataset's average {constants.avg:g}, 100 = the best scripted policy's "
            f"{constants.max:g})")


def _plain(value: Any) -> str:
    """A value of ``info`` for people: dicts and lists without JSON punctuation."""
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) if value else "none"
    return "none" if value is None else str(value)


def enable_line_editing() -> None:
    """Arrow keys, line editing and in-session history for ``input()`` in a real terminal."""
    if not sys.stdin.isatty():
        return
    try:
        import readline  # noqa: F401  (importing it is what makes input() use it)
    except ImportError:  # e.g. Windows without pyreadline: plain input() still works
        pass


@dataclasses.dataclass
class Session:
    """One ``lmrlgym play`` run: an env, an optional scripted player, and the output options."""

    task_id: str
    env: TextEnv
    rules: str
    bot: Any = None
    show_agent_view: bool = False

    def read_action(self) -> str:
        """The next action: the scripted policy's, else a typed line that is not a meta-command.

        Raises :class:`Quit` on ``:quit`` or end of input.
        """
        while True:
            try:
                line = input("> ")
            except EOFError:
                print()
                raise Quit from None
            if not sys.stdin.isatty():  # a terminal echoes what was typed; a pipe does not
                print(line)
            command = line.strip()
            if command == ":quit":
                raise Quit
            if command == ":help":
                print(self.rules)
            elif command.startswith(":"):
                print(f"unknown meta-command {command!r}; {META_HELP}")
            elif command:
                return line

    def show(self, obs: str, new_text: str) -> None:
        if self.show_agent_view:
            print(f"{AGENT_VIEW_START}\n{obs}{AGENT_VIEW_END}")
        else:
            print(new_text, end="")

    def episode(self, seed: int | None, rng: np.random.Generator) -> bool:
        """Play one episode; False when the player quit."""
        env, bot = self.env, self.bot
        options = bot.reset_options(env, rng) if bot else {}
        obs, info = env.reset(seed=seed, options=options)
        print(f"--- {self.task_id}, seed {info['seed']} ---")
        self.show(obs, obs)
        ret, steps, shown = 0.0, 0, len(info["turns"])
        while True:
            if bot:
                action = bot.act(env, obs, info, rng)
                print(f"> {action.rstrip()}")
            else:
                try:
                    action = self.read_action()
                except Quit:
                    print(f"--- quit after {_actions(steps)}; return {ret:+g} ---")
                    _print_lines(reveal_text(env, info))
                    return False
            obs, reward, terminated, truncated, info = env.step(action)
            ret += reward
            steps += 1
            # Only what is new since the last step (dialogue windows grow; the action is echoed
            # by the terminal, so the new env text starts after it).
            self.show(obs, "".join(t.text for t in info["turns"][shown + 1 :]))
            shown = len(info["turns"])
            penalty = penalty_text(info)
            if penalty:
                print(f"  {penalty}")
            print(f"  [reward {reward:+g}, return {ret:+g}]")
            if terminated or truncated:
                break
        end = "terminated" if terminated else "truncated"
        print(f"--- {end} after {_actions(steps)}; return {ret:+g}; success {info['success']} ---")
        _print_lines(reveal_text(env, info) + [score_text(self.task_id, ret) or ""])
        return True


def _actions(n: int) -> str:
    return f"{n} action" if n == 1 else f"{n} actions"


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        if line:
            print(line)


def play(
    task_id: str,
    policy: str | None = None,
    seed: int | None = None,
    episodes: int = 1,
    show_agent_view: bool = False,
) -> None:
    """Run ``episodes`` episodes of ``task_id`` typed by a person or played by ``policy``."""
    from lmrlgym.data.policies import make_policy
    from lmrlgym.registry import spec

    task = spec(task_id)
    env = task.make()
    bot = make_policy(policy, task.id) if policy else None
    session = Session(task.id, env, rules_text(task.id, env, task.description), bot,
                      show_agent_view)
    rng = np.random.default_rng(seed)
    if bot is None:
        enable_line_editing()
    print(session.rules)
    try:
        for _ in range(episodes):
            if not session.episode(seed, rng):
                return
            seed = None if seed is None else seed + 1
    finally:
        if bot:
            bot.close()
        env.close()
