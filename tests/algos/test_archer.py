"""ArCHer (docs/algorithms.md §3.9): TD targets, the critic update and its target, and a
critic that learns a toy chain's values."""

import copy

import numpy as np
import pytest
import torch

from lmrlgym.algos.archer import (
    Transition,
    TurnCritic,
    critic_loss,
    critic_update,
    episode_transitions,
    td_targets,
    turn_advantage,
)
from lmrlgym.algos.dataset import context_fn
from lmrlgym.algos.loop import make_optimizer
from lmrlgym.algos.online import Rollout
from lmrlgym.core import Episode, Turn
from tests.algos.helpers import micro_model


def test_td_targets_and_loss_hand_computed():
    r, done = torch.tensor([1.0, 0.5]), torch.tensor([False, True])
    v_next = torch.tensor([[2.0, 3.0], [4.0, 5.0]])  # (twin, batch)
    y = td_targets(r, done, v_next, gamma=0.9)
    torch.testing.assert_close(y, torch.tensor([[1 + 0.9 * 2, 0.5], [1 + 0.9 * 4, 0.5]]))
    q, v = torch.tensor([[2.0, 0.5], [5.0, 1.5]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    y_v = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    # Q twins: ((2 - 2.8)² + 0²)/2 + ((5 - 4.6)² + 1²)/2; V twins: (1 + 1)/2 + 0.
    want = (0.64 / 2) + (0.16 + 1.0) / 2 + 1.0 + 0.0
    assert float(critic_loss(q, v, torch.tensor(y.tolist()), y_v)) == pytest.approx(want)
    # The pessimistic twins: min Q − min V.
    assert turn_advantage(q, v).tolist() == pytest.approx([2.0 - 0.0, 0.5 - 0.0])


def test_episode_transitions_chain_contexts_and_mark_only_the_terminal_turn():
    class Tok:
        def __call__(self, text):
            return [ord(c) for c in text]

    ep = Episode("Maze-FO-v0", [Turn("A\n", False), Turn("x\n", True, -1.0), Turn("B\n", False),
                                Turn("y\n", True, 0.0), Turn("C\n", False)], True, False, True)
    ts = episode_transitions(Rollout(ep, [[7], [8]], [], [], []), context_fn("Maze-FO-v0"), Tok(), 0, 64)
    # Maze-FO's window is the newest observation: contexts BOS+A, BOS+B, then BOS+C.
    assert [(t.prompt, t.action, t.reward, t.next_prompt, t.done) for t in ts] == [
        ([0, 65, 10], [7], -1.0, [0, 66, 10], False),
        ([0, 66, 10], [8], 0.0, [0, 67, 10], True),
    ]
    cut = episode_transitions(Rollout(Episode("Maze-FO-v0", ep.turns, False, True, False), [[7], [8]],
                                      [], [], []), context_fn("Maze-FO-v0"), Tok(), 0, 64)
    assert not cut[-1].done  # truncated: bootstrapped from V̄ of the final context


def micro_critic(tmp_path, seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    trunk = AutoModelForCausalLM.from_pretrained(micro_model(tmp_path / "micro"))
    return TurnCritic(trunk, pad_id=2)


def test_critic_update_steps_the_critic_and_moves_the_target_by_tau(tmp_path):
    critic = micro_critic(tmp_path)
    target = copy.deepcopy(critic).requires_grad_(False)
    with torch.no_grad():  # a target that differs from the critic
        for p in target.parameters():
            p.add_(0.5)
    before_target = [p.detach().clone() for p in target.parameters()]
    before = [p.detach().clone() for p in critic.parameters()]
    opt = make_optimizer(critic.parameters(), 1e-2)
    batch = [Transition([0, 5, 6], [9], 1.0, [0, 7], False), Transition([0, 7], [9, 10], 0.0, [0, 8], True)]
    logs = critic_update(critic, target, opt, batch, lambda p: [[9]] * len(p), 0.9, 0.1, 1.0)
    assert np.isfinite(list(logs.values())).all()
    after = list(critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    for t, t0, c in zip(target.parameters(), before_target, after, strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * c.detach())


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_critic_learns_the_values_of_a_toy_chain(tmp_path):
    # States 0..4 (context [BOS, 20 + s]); either action (30 or 31) moves to s + 1; leaving
    # state 4 ends the episode and pays 1 for action 30, 0 for 31. Under the uniform policy
    # V(s) = 0.5 γ^(4 − s) and Q(s, a) = γ V(s + 1) (s < 4): values rise along the chain.
    gamma, n = 0.8, 5
    replay = [Transition([0, 20 + s], [a], float(s == n - 1 and a == 30), [0, 20 + min(s + 1, n - 1)],
                         s == n - 1) for s in range(n) for a in (30, 31)]
    critic = micro_critic(tmp_path)
    target = copy.deepcopy(critic).requires_grad_(False)
    opt = make_optimizer(critic.parameters(), 3e-3)
    rng = np.random.default_rng(0)
    uniform = lambda prompts: [[int(rng.choice([30, 31]))] for _ in prompts]  # noqa: E731
    for _ in range(300):
        critic_update(critic, target, opt, [replay[i] for i in rng.integers(len(replay), size=10)],
                      uniform, gamma, 0.1, 1.0)
    with torch.no_grad():
        q, v = critic([t.prompt for t in replay], [t.action for t in replay])
    true_v = [0.5 * gamma ** (n - 1 - s) for s in range(n)]
    true_q = [(float(a == 30) if s == n - 1 else gamma * true_v[s + 1]) for s in range(n) for a in (30, 31)]
    learned_v = v.min(0).values[::2].tolist()  # one row per state
    assert spearman(learned_v, true_v) >= 0.9, learned_v
    assert spearman(q.min(0).values.tolist(), true_q) >= 0.7, q.min(0).values.tolist()
