"""Echoed action text is capped and sanitised: for any action string, every observation and
stored turn is encodable as UTF-8 and the observation stays within the observation space."""

import pytest

import lmrlgym
from lmrlgym.core import MAX_ACTION_CHARS, clean_text, normalize_action
from lmrlgym.envs import TASK_IDS
from lmrlgym.registry import spec
from tests.conftest import skip_if_missing

FAST_KWARGS = {"Chess-v0": {"opponent": "random"}, "Endgames-v0": {"opponent": "random"}}
HUGE = "Is it a " + "very " * 700_000 + "big thing?"  # 3.5 M characters, no newline


def make(task: str):
    skip_if_missing(spec(task))
    return lmrlgym.make(task, **FAST_KWARGS.get(task, {}))


def assert_valid(env, obs: str, info: dict) -> None:
    obs.encode("utf-8")  # raises on a lone surrogate
    assert len(obs) <= env.observation_space.max_length
    for turn in info["turns"]:
        turn.text.encode("utf-8")
        if turn.is_action:
            assert len(turn.text) <= env.max_action_chars + 1


def play(env, action: str, steps: int) -> list[dict]:
    obs, info = env.reset(seed=0)
    assert_valid(env, obs, info)
    infos = []
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(action)
        assert_valid(env, obs, info)
        infos.append(info)
        if terminated or truncated:
            break
    return infos


@pytest.mark.parametrize("task", TASK_IDS)
def test_huge_actions_are_capped(task):
    env = make(task)
    try:
        infos = play(env, HUGE, steps=4)
        stored = infos[0]["turns"][1].text
        assert len(stored) == env.max_action_chars + 1
    finally:
        env.close()


@pytest.mark.parametrize("task", TASK_IDS)
def test_lone_surrogates_become_replacement_characters(task):
    env = make(task)
    try:
        infos = play(env, "a\ud800b", steps=2)
        assert infos[0]["turns"][1].text == "a\ufffdb\n"
    finally:
        env.close()


def test_normalisation_rules():
    assert normalize_action("x" * 50 + "\ny", max_chars=10) == "x" * 10 + "\n"
    assert normalize_action("move up" + " " * 20, max_chars=10) == "move up\n"
    assert normalize_action("\udfff\ud83d\ude42 ok") == "\ufffd\ufffd\ufffd ok\n"
    assert normalize_action("🙂 é") == "🙂 é\n"
    assert clean_text("fine\n") == "fine\n"
    assert MAX_ACTION_CHARS == lmrlgym.make("Maze-FO-v0").max_action_chars
