"""The TextEnv base class and check_env, on tiny in-test envs (good and deliberately broken)."""

import numpy as np
import pytest

from lmrlgym.checker import EnvCheckError, check_env
from lmrlgym.core import Episode, TextEnv, Turn, normalize_action


class Counter(TextEnv):
    """Say "up" to count to 3 (reward 1 at the end); anything else costs -1. Cap: 5 steps."""

    return_range = (-5.0, 1.0)

    def _reset(self, rng, options):
        self.n, self.steps = 0, 0
        self.start = int(rng.integers(2))
        self.n = self.start
        return f"count {self.n}\n", {}

    def _step(self, action):
        self.steps += 1
        legal = action.strip().lower() == "up"
        if legal:
            self.n += 1
        if self.n >= 3:
            return "done\n", 1.0, True, False, {"success": True, "action": "up\n"}
        truncated = self.steps >= 5
        info = {"illegal": not legal}
        if legal:
            info["action"] = "up\n"
        return f"count {self.n}\n", 0.0 if legal else -1.0, False, truncated, info


def test_normalize_action():
    assert normalize_action("move up") == "move up\n"
    assert normalize_action("  move up  \n junk") == "  move up\n"
    assert normalize_action("") == "\n"
    assert normalize_action("\n\nx") == "\n"


def test_turns_info_and_canonical_actions():
    env = Counter()
    obs, info = env.reset(seed=0)
    assert obs == f"count {env.start}\n" and info["turns"] == [Turn(obs, False, 0.0)]
    obs, r, term, trunc, info = env.step("  UP  \nignored")
    assert info["turns"][1] == Turn("up\n", True, 0.0)  # canonical form stored
    obs, r, term, trunc, info = env.step("down")
    assert info["turns"][3] == Turn("down\n", True, -1.0) and info["illegal"] and r == -1.0
    assert [t.is_action for t in info["turns"]] == [False, True, False, True, False]


def test_step_after_end_raises_and_needs_str():
    env = Counter()
    env.reset(seed=1)
    with pytest.raises(TypeError):
        env.step(3)  # type: ignore[arg-type]
    while True:
        *_, term, trunc, _ = env.step("up")
        if term or trunc:
            break
    with pytest.raises(RuntimeError):
        env.step("up")


def test_seed_none_is_replayable():
    env = Counter()
    env.reset(seed=5)
    obs_a, info_a = env.reset()
    obs_b, info_b = env.reset(seed=5)
    obs_c, info_c = env.reset()
    assert info_a["seed"] == info_c["seed"]  # the stream restarts from the explicit seed
    assert env.reset(seed=info_a["seed"])[0] == obs_a


def test_check_env_passes_good_env():
    check_env(Counter())


class NoNewline(Counter):
    def _step(self, action):
        text, r, term, trunc, info = super()._step(action)
        return text.rstrip("\n"), r, term, trunc, info


class Nondeterministic(Counter):
    def _reset(self, rng, options):
        text, info = super()._reset(np.random.default_rng(), options)  # ignores the seed
        return f"{text[:-1]} {np.random.default_rng().integers(10**9)}\n", info


class WrongWindow(Counter):
    def reset(self, **kw):
        obs, info = super().reset(**kw)
        return obs + "x", info


class OutOfRange(Counter):
    return_range = (0.0, 0.5)


class NoEnd(Counter):
    def _step(self, action):
        text, r, term, trunc, info = super()._step("down\n")
        return text, r, False, False, info


class NewlineInActionSet(Counter):
    def action_set(self):
        return ("up\n",)


class StaleActionSetInInfo(Counter):
    action_set_in_info = True

    def _step(self, action):
        text, r, term, trunc, info = super()._step(action)
        return text, r, term, trunc, {**info, "action_set": ("down",)}


class TinySpace(Counter):
    def __init__(self):
        super().__init__(max_obs_length=4)  # "count 0\n" does not fit


@pytest.mark.parametrize(
    "cls, match",
    [
        (Nondeterministic, "same seed"),
        (WrongWindow, "window"),
        (OutOfRange, "return_range"),
        (NewlineInActionSet, "action_set"),
        (StaleActionSetInInfo, "action_set"),
        (TinySpace, "max_length"),
    ],
)
def test_check_env_catches_broken_envs(cls, match):
    with pytest.raises(EnvCheckError, match=match):
        check_env(cls())


def test_env_text_without_newline_fails_loudly():
    env = NoNewline()
    env.reset(seed=0)
    with pytest.raises(AssertionError, match="exactly one newline"):
        env.step("down")


def test_check_env_max_turns_via_registry():
    env = NoEnd()
    env.spec_id = "Wordle-v0"  # max_turns 6: an episode that never ends must be caught
    with pytest.raises(EnvCheckError, match="max_turns"):
        check_env(env, n_steps=10)
    # without an end at all and no spec, n_steps bounds the run and nothing is claimed
    check_env(NoEnd(), n_steps=10)


def test_episode_record_round_trip():
    ep = Episode("Counter", [Turn("a\n", False), Turn("up\n", True, -1.0), Turn("b\n", False)],
                 terminated=False, truncated=True, success=False, seed=3)
    rec = ep.to_json()
    assert rec["return"] == -1.0 and rec["format"] == "lmrlgym.episode/1"
    assert ep.n_actions == 1 and ep.actions == ["up\n"]


def test_parse_env_kwargs_names_the_flag_on_bad_input():
    from lmrlgym.registry import parse_env_kwargs

    assert parse_env_kwargs('{"grid": "umaze"}') == {"grid": "umaze"}
    with pytest.raises(ValueError, match="--env-kwargs is not valid JSON"):
        parse_env_kwargs("{grid: 1}")
    with pytest.raises(ValueError, match="--kw must be a JSON object"):
        parse_env_kwargs("[1, 2]", "--kw")
