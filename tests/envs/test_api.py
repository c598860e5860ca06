"""Registry-wide contract tests: every registered id passes our checker and Gymnasium's."""

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import lmrlgym
from lmrlgym.checker import PROBE_ACTIONS
from lmrlgym.envs import TASK_IDS
from tests.conftest import skip_if_missing

SPECS = list(lmrlgym.registry.values())

# A one-node Stockfish opponent: the fastest deterministic one, for the registry-wide runs.
FAST_KWARGS = {"Chess-v0": {"opponent": "stockfish-nodes:1"},
               "Endgames-v0": {"opponent": "stockfish-nodes:1"}}


def test_ids_exactly_as_specified():
    # Tests may register toy envs of their own; TASK_IDS are the package's.
    assert list(TASK_IDS) == [
        "Maze-FO-v0", "Maze-PO-v0", "TextNav-FO-v0", "TextNav-PO-v0", "Wordle-v0",
        "Chess-v0", "Endgames-v0", "TwentyQuestions-v0", "GuessCity-v0", "CarDealer-v0",
    ]


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_check_env(spec):
    skip_if_missing(spec)
    env = lmrlgym.make(spec.id, **FAST_KWARGS.get(spec.id, {}))
    try:
        lmrlgym.check_env(env, n_steps=60)
    finally:
        env.close()


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_gymnasium_checker(spec):
    skip_if_missing(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gymnasium.make(f"lmrlgym/{spec.id}", **FAST_KWARGS.get(spec.id, {}))
        try:
            gym_check_env(env.unwrapped, skip_render_check=True)
        finally:
            env.close()


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_lockstep_instances(spec):
    """Two instances with the same seed and actions agree exactly (no shared hidden state)."""
    skip_if_missing(spec)
    kwargs = FAST_KWARGS.get(spec.id, {})
    a, b = lmrlgym.make(spec.id, **kwargs), lmrlgym.make(spec.id, **kwargs)
    if not a.deterministic:
        pytest.skip(f"{spec.id} is nondeterministic with {kwargs}")
    rng = np.random.default_rng(7)
    try:
        for seed in (11, 12):
            assert a.reset(seed=seed) == b.reset(seed=seed)
            for _ in range(30):
                action = PROBE_ACTIONS[int(rng.integers(len(PROBE_ACTIONS)))]
                out_a, out_b = a.step(action), b.step(action)
                assert out_a == out_b
                if out_a[2] or out_a[3]:
                    break
    finally:
        a.close()
        b.close()


def test_unknown_id_suggests_close_match():
    with pytest.raises(KeyError, match="Did you mean 'Maze-FO-v0'"):
        lmrlgym.make("Maze-F0-v0")
