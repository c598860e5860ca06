"""``check_env``: the contract every lmrlgym env must keep (docs/tasks.md §1), checked from outside.

Checks the API types, the observation/window identity, the turn-history invariants, the action
set's form, the reward range, seed determinism (two seeded rollouts with the same random actions, hostile strings
included, must match exactly) and the ``seed=None`` replay rule. Runs a handful of short
episodes, so it is cheap enough to run over the whole registry in CI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmrlgym.core import TextEnv, Turn

# Actions drawn by the checker: legal moves of several tasks (so episodes make progress on
# some of them) and hostile strings (empty, whitespace, control characters, unicode, huge).
PROBE_ACTIONS: tuple[str, ...] = (
    "move up",
    "move down",
    "move left",
    "Move Right\n",
    "crane",
    "s l a t e",
    "e4",
    "e2e4",
    "Nf3",
    "Is it alive?",
    "Is the city in Europe?",
    "go west",
    "take stale food from table",
    "I can offer you a Toyota sedan for $25,000.",
    "",
    "   ",
    "\n",
    "\n\nmove up",
    "\x00\x07\x1b[31m",
    "ünïcødé ☃ 漢字 🚗",
    "a" * 10_000,
    "a\ud800b",
    "move up\nmove down",
)


class EnvCheckError(AssertionError):
    """An env broke the contract; the message says which rule and where."""


def _fail(msg: str) -> None:
    raise EnvCheckError(msg)


def _rollout(env: TextEnv, seed: int, n_steps: int, max_turns: int | None) -> list[Any]:
    """Seeded episode with seeded random probe actions; returns everything observable."""
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    _check_obs(env, obs, info, "reset")
    trace: list[Any] = [obs, _strip(info)]
    lo, hi = env.return_range
    ret, steps = 0.0, 0
    while steps < n_steps:
        action = PROBE_ACTIONS[int(rng.integers(len(PROBE_ACTIONS)))]
        out = env.step(action)
        steps += 1
        if not (isinstance(out, tuple) and len(out) == 5):
            _fail("step() must return (obs, reward, terminated, truncated, info)")
        obs, reward, terminated, truncated, info = out
        where = f"step {steps} (action {action[:30]!r})"
        if not isinstance(reward, float):
            _fail(f"{where}: reward must be a float, got {type(reward).__name__}")
        if not isinstance(terminated, bool) or not isinstance(truncated, bool):
            _fail(f"{where}: terminated/truncated must be bools")
        _check_obs(env, obs, info, where)
        last_action = info["turns"][-2]
        if not last_action.is_action or last_action.reward != reward:
            _fail(f"{where}: the second-to-last turn must be the action, carrying the step reward")
        ret += reward
        trace.append((obs, reward, terminated, truncated, _strip(info)))
        if max_turns is not None and steps > max_turns:
            _fail(f"{where}: the episode did not end within max_turns={max_turns} agent turns")
        if terminated or truncated:
            if not lo - 1e-9 <= ret <= hi + 1e-9:
                _fail(f"{where}: episode return {ret} outside return_range {env.return_range}")
            try:
                env.step("move up")
            except RuntimeError:
                pass
            else:
                _fail(f"{where}: step() after the episode ended must raise RuntimeError")
            break
    return trace


def _strip(info: dict[str, Any]) -> dict[str, Any]:
    # Compare infos by value; turns are compared as tuples.
    return {k: (list(map(tuple, v)) if k == "turns" else v) for k, v in info.items()}


def _check_obs(env: TextEnv, obs: Any, info: Any, where: str) -> None:
    if not isinstance(obs, str):
        _fail(f"{where}: observation must be a str, got {type(obs).__name__}")
    if not isinstance(info, dict):
        _fail(f"{where}: info must be a dict")
    for key in ("turns", "seed", "deterministic", "illegal", "success"):
        if key not in info:
            _fail(f"{where}: info is missing the key {key!r}")
    turns = info["turns"]
    _check_turns(turns, where)
    if obs != env.window(turns):
        _fail(f"{where}: observation != window(info['turns'])")
    if obs not in env.observation_space or len(obs) > env.observation_space.max_length:
        _fail(f"{where}: observation not in observation_space (or longer than its max_length)")
    try:
        obs.encode("utf-8")
    except UnicodeEncodeError:
        _fail(f"{where}: observation cannot be encoded as UTF-8 (a lone surrogate?)")
    _check_action_set(env, info, where)


def _check_action_set(env: TextEnv, info: dict[str, Any], where: str) -> None:
    actions = env.action_set()
    if actions is not None and not (
        isinstance(actions, tuple) and all(isinstance(a, str) and "\n" not in a for a in actions)
    ):
        _fail(f"{where}: action_set() must be None or a tuple of str without newlines")
    if "action_set" in info and info["action_set"] != actions:
        _fail(f"{where}: info['action_set'] differs from action_set()")


def _check_turns(turns: list[Turn], where: str) -> None:
    if not turns or turns[0].is_action:
        _fail(f"{where}: the history must start with an env text")
    for i, t in enumerate(turns):
        if not isinstance(t, Turn):
            _fail(f"{where}: turns[{i}] is not a Turn")
        if t.is_action != (i % 2 == 1):
            _fail(f"{where}: turns[{i}] breaks the env/agent alternation")
        if not t.is_action and t.reward != 0.0:
            _fail(f"{where}: env turn {i} has nonzero reward {t.reward}")
        if not t.text.endswith("\n") or t.text.endswith("\n\n"):
            _fail(f"{where}: turns[{i}] must end with exactly one newline: {t.text[-30:]!r}")
        if t.is_action and "\n" in t.text[:-1]:
            _fail(f"{where}: action turn {i} contains an inner newline")


def check_env(env: TextEnv, seeds: tuple[int, ...] = (0, 1, 2), n_steps: int = 200) -> None:
    """Raise :class:`EnvCheckError` if ``env`` breaks the lmrlgym env contract."""
    if not isinstance(env, TextEnv):
        _fail(f"expected a lmrlgym TextEnv, got {type(env).__name__}")
    spec_id = getattr(env, "spec_id", None)
    max_turns = None
    if spec_id is not None:
        from lmrlgym.registry import spec

        max_turns = spec(spec_id).max_turns
    deterministic = env.deterministic
    for seed in seeds:
        first = _rollout(env, seed, n_steps, max_turns)
        if deterministic:
            again = _rollout(env, seed, n_steps, max_turns)
            if first != again:
                _fail(f"seed {seed}: same seed and actions gave a different transcript")
    # seed=None draws the next episode seed from the stream and reports it; replaying it with
    # that explicit seed must give the same first observation.
    env.reset(seed=seeds[0])
    obs, info = env.reset()
    if not isinstance(info["seed"], int):
        _fail("reset(seed=None): info['seed'] must be the int episode seed")
    if deterministic and env.reset(seed=info["seed"])[0] != obs:
        _fail("reset(seed=info['seed']) does not replay the episode started with seed=None")
