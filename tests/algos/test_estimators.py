"""The group estimators of docs/algorithms.md §3.8 (GRPO, RLOO, GiGPO): hand-computed
advantages, anchor-state grouping, spreading over tokens, and a numerical unbiasedness check
on a toy env where the policy controls the episode length."""

import functools
import math

import numpy as np
import pytest
import torch

from lmrlgym.algos.dataset import context_fn
from lmrlgym.algos.gigpo import anchor_groups, gigpo_advantages, observation_keys
from lmrlgym.algos.grpo import center_tokens, grpo_advantages, spread, token_turns
from lmrlgym.algos.rloo import rloo_advantages
from lmrlgym.core import Episode, Turn
from lmrlgym.models.render import Segment

# --- hand-computed advantages ------------------------------------------------------------------


def test_grpo_group_mean_and_std_per_group():
    # Group 0: returns 1, 2, 3 (mean 2, population std sqrt(2/3)); group 1: all equal -> 0.
    s = math.sqrt(2 / 3)
    adv = grpo_advantages([1.0, 2.0, 3.0, -5.0, -5.0], [0, 0, 0, 1, 1])
    assert adv == pytest.approx([-1 / s, 0.0, 1 / s, 0.0, 0.0], abs=1e-5)
    # Dr.GRPO: only the mean is subtracted.
    assert grpo_advantages([1.0, 2.0, 3.0, -5.0, -4.0], [0, 0, 0, 1, 1], std_normalize=False) == \
        pytest.approx([-1.0, 0.0, 1.0, -0.5, 0.5])


def test_rloo_leave_one_out_baseline():
    # Group 0: 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5; group 1 (K=2): ±2.
    adv = rloo_advantages([1.0, 2.0, 6.0, 0.0, 4.0], [0, 0, 0, 1, 1])
    assert adv == pytest.approx([-3.0, -1.5, 4.5, -4.0, 4.0])
    assert rloo_advantages([7.0], [0]) == [0.0]  # no other member: no baseline, no signal


def test_gigpo_combines_episode_and_anchor_advantages_over_episodes_of_different_lengths():
    # One group, three episodes of 3, 2 and 1 turns; observations a-b-c, a-c, a.
    rewards = [[-1.0, -1.0, 0.0], [-1.0, 0.0], [0.0]]
    keys = [["a", "b", "c"], ["a", "c"], ["a"]]
    # Episode level (returns -2, -1, 0, mean -1, mean-only): -1, 0, 1.
    # Returns-to-go with γ = 0.5: [-1.5, -1, 0], [-1, 0], [0].
    # Anchor "a": -1.5, -1, 0 (mean -5/6) -> -2/3, -1/6, 5/6; "c": 0, 0 -> 0; "b" alone -> 0.
    adv = gigpo_advantages(rewards, keys, [0, 0, 0], gamma=0.5, step_weight=1.0, std_normalize=False)
    expected = [[-1 - 2 / 3, -1.0, -1.0], [-1 / 6, 0.0], [1 + 5 / 6]]
    assert [len(a) for a in adv] == [3, 2, 1]
    for got, want in zip(adv, expected, strict=True):
        assert got == pytest.approx(want)
    # ω scales only the step part; ω = 0 is GRPO's episode advantage on every turn.
    flat = gigpo_advantages(rewards, keys, [0, 0, 0], 0.5, 0.0, std_normalize=False)
    assert flat == [[-1.0] * 3, [0.0] * 2, [1.0]]


def test_anchor_groups_stay_inside_a_group_and_include_revisits():
    keys = [["s0", "s1", "s0"], ["s0", "s2"], ["s0", "s1"]]
    groups = anchor_groups(keys, [0, 0, 1])
    assert groups == {
        (0, "s0"): [(0, 0), (0, 2), (1, 0)],  # a revisit in episode 0 joins its own anchor
        (0, "s1"): [(0, 1)],
        (0, "s2"): [(1, 1)],
        (1, "s0"): [(2, 0)],  # same text, other start state: another group
        (1, "s1"): [(2, 1)],
    }


def test_observation_keys_are_the_context_window_text():
    obs1 = "The goal is at position 8, 6. Your current position is at position 7, 6.\n"
    obs2 = "The goal is at position 8, 6. Your current position is at position 7, 5.\n"
    ep = Episode("Maze-FO-v0", [Turn(obs1, False), Turn("move left\n", True, -1.0),
                                Turn(obs2, False), Turn("move right\n", True, -1.0),
                                Turn(obs1, False), Turn("move down\n", True, 0.0),
                                Turn("Success\n", False)], True, False, True)
    # Maze-FO's window is the newest observation: the first and third steps share an anchor.
    assert observation_keys(ep, context_fn("Maze-FO-v0")) == [obs1, obs2, obs1]
    # An append-only window (Wordle) keys on the whole history: no two steps alike here.
    keys = observation_keys(ep, lambda turns: list(turns))
    assert len(set(keys)) == 3 and keys[2].startswith(obs1 + "move left\n")


def test_spread_gives_each_action_token_its_turn_value():
    # Row [BOS, obs, a, a, obs, a] holding action turns 2 and 3 of its episode.
    seg = Segment(input_ids=torch.arange(6), action_mask=torch.tensor([0, 0, 1, 1, 0, 1]).bool(),
                  rewards=torch.zeros(6), turn_end=torch.tensor([0, 0, 0, 1, 0, 1]).bool(),
                  returns=torch.zeros(6), next_ids=torch.zeros(0, dtype=torch.long),
                  terminal=True, episode_id=0, first_turn=2)
    assert token_turns(seg).tolist() == [2, 2, 3]
    assert spread(seg, [9.0, 9.0, 0.5, -1.5]).tolist() == [0.5, 0.5, -1.5]


def test_centring_removes_the_length_weighted_mean_over_all_rows_tokens():
    # A won 1-turn episode (A = +1, 2 tokens) and a lost 3-turn one (A = -1, 6 tokens): the
    # group's advantages sum to 0 per episode but to 2 - 6 = -4 over the tokens (mean -0.5).
    won, lost = torch.full((2,), 1.0), torch.full((6,), -1.0)
    centred = center_tokens([won, lost[:4], lost[4:]])
    assert [c.tolist() for c in centred] == [[1.5, 1.5], [-0.5] * 4, [-0.5] * 2]
    assert float(torch.cat(centred).sum()) == 0.0


# --- unbiasedness: E[Â | s, a] = 0 when every action is equally good ---------------------------
#
# Toy env: at turn t the agent continues (p = 0.6) or stops; the 4th turn always ends it.
# Continuing pays 1; the last turn pays Z − t with Z ~ Bernoulli(0.5), so the return is Z
# whatever the agent does, and from turn t on it is Z − t: the true advantage of every action
# is 0 while the policy controls the number of turns (and of intermediate rewards). An unbiased
# estimator's mean advantage, conditioned on the action at a state, is then 0; the per-turn
# baseline that normalises each turn index's reward over the episodes still alive there and
# sums to go (verl #7244) subtracts as many baseline terms as the episode has turns: biased.

K, N_GROUPS, P_CONTINUE, MAX_TURNS = 4, 3000, 0.6, 4


@functools.cache
def toy_groups(seed: int = 0):
    rng = np.random.default_rng(seed)
    rewards, actions, groups = [], [], []
    for g in range(N_GROUPS):
        for _ in range(K):
            z, r, a = float(rng.random() < 0.5), [], []
            for t in range(MAX_TURNS):
                go = bool(rng.random() < P_CONTINUE) and t < MAX_TURNS - 1
                a.append(go)
                r.append(1.0 if go else z - t)
                if not go:
                    break
            rewards.append(r)
            actions.append(a)
            groups.append(g)
    return rewards, actions, groups


def per_turn_index_baseline(rewards, groups):
    """The biased construction: each turn's reward minus the mean reward at that turn index
    over the group's episodes that reach it, summed over the episode's remaining turns."""
    members: dict[int, list[list[float]]] = {}
    for r, g in zip(rewards, groups, strict=True):
        members.setdefault(g, []).append(r)
    out = []
    for r, g in zip(rewards, groups, strict=True):
        norm = [x - np.mean([m[t] for m in members[g] if len(m) > t]) for t, x in enumerate(r)]
        out.append([float(sum(norm[t:])) for t in range(len(r))])
    return out


def conditional_means(adv, actions, turn):
    """Mean advantage at turn ``turn`` given the action taken there (continue, stop)."""
    out = {}
    for choice in (True, False):
        vals = [a[turn] for a, act in zip(adv, actions, strict=True) if len(act) > turn and act[turn] == choice]
        out[choice] = float(np.mean(vals))
    return out


@functools.cache
def toy_advantages():
    rewards, _, groups = toy_groups()
    returns = [sum(r) for r in rewards]
    keys = [[f"turn {t}" for t in range(len(r))] for r in rewards]
    spread_ep = lambda adv: [[a] * len(r) for a, r in zip(adv, rewards, strict=True)]  # noqa: E731
    return {
        "grpo": spread_ep(grpo_advantages(returns, groups)),
        "dr_grpo": spread_ep(grpo_advantages(returns, groups, std_normalize=False)),
        "rloo": spread_ep(rloo_advantages(returns, groups)),
        "gigpo": gigpo_advantages(rewards, keys, groups, gamma=1.0, step_weight=1.0),
        "gigpo_mean": gigpo_advantages(rewards, keys, groups, 1.0, 1.0, std_normalize=False),
    }


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "gigpo", "gigpo_mean"])
def test_each_estimator_has_zero_mean_advantage_per_action(name):
    _, actions, _ = toy_groups()
    adv = toy_advantages()[name]
    for turn in (0, 1):  # ~4,800 and ~2,900 samples per (turn, action) cell: SE ≈ 0.02
        means = conditional_means(adv, actions, turn)
        assert abs(means[True]) < 0.08 and abs(means[False]) < 0.08, (turn, means)


def test_the_per_turn_index_baseline_is_caught():
    rewards, actions, groups = toy_groups()
    means = conditional_means(per_turn_index_baseline(rewards, groups), actions, 0)
    # Closed form at turn 0: stopping gets E[Z] − E[mean reward at turn 0] = 0.5 − (0.5 + 3 · 0.8)/4.
    assert means[False] == pytest.approx(0.5 - (0.5 + 3 * 0.8) / 4, abs=0.05)
    assert max(abs(means[True]), abs(means[False])) > 0.15
