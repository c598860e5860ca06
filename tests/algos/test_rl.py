"""The pure RL math of algos/rl.py (and loop.lr_at) against hand-computed values (docs/algorithms.md §1.5-1.9)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmrlgym.algos.loop import lr_at
from lmrlgym.algos.rl import (
    EmptyActionBatch,
    gae,
    masked_mean,
    next_state_value,
    next_step_index,
    polyak_update,
    returns_to_go,
    step_discount,
    step_view,
    turn_end_index,
)

# §1.5 worked example: BOS Q: \n go left \n ok \n stop \n
MASK = [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
REWARDS = [0, 0, 0, 0, 0, -1, 0, 0, 0, 1]
TURN_END = [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def example_batch():
    T = len(MASK)
    return SimpleNamespace(
        input_ids=torch.arange(T)[None],
        attention_mask=torch.ones(1, T, dtype=torch.long),
        action_mask=torch.tensor([MASK], dtype=torch.bool),
        rewards=torch.tensor([REWARDS], dtype=torch.float32),
        turn_end=torch.tensor([TURN_END], dtype=torch.bool),
    )


def test_step_view_and_next_pointers_of_worked_example():
    act, a, r, end = step_view(example_batch())
    assert act[0].nonzero().flatten().tolist() == [2, 3, 4, 7, 8]
    assert a[0, 2].item() == 3  # slot i chooses token i + 1
    assert r[0, 4].item() == -1 and r[0, 8].item() == 1
    nxt = next_step_index(act)[0]
    assert [nxt[i].item() for i in (2, 3, 4, 7, 8)] == [3, 4, 7, 8, -1]


def test_turn_end_index_points_every_action_step_at_its_turn_end():
    act, _, _, end = step_view(example_batch())
    last = turn_end_index(act, end)[0]
    # turn "go left \n" = slots 2-4 (end at 4); turn "stop \n" = slots 7-8 (end at 8)
    assert [last[i].item() for i in (2, 3, 4, 7, 8)] == [4, 4, 4, 8, 8]
    cut = turn_end_index(act, torch.zeros_like(end))[0]  # no turn end in the row: own slot
    assert [cut[i].item() for i in (2, 3, 4, 7, 8)] == [2, 3, 4, 7, 8]


def test_step_view_ignores_padding():
    b = example_batch()
    b.attention_mask[0, 9] = 0
    act, *_ = step_view(b)
    assert act[0].nonzero().flatten().tolist() == [2, 3, 4, 7]


def test_step_discount_modes():
    end = torch.tensor([[False, True, False]])
    assert step_discount(end, 0.9, "turn").tolist() == [[1.0, pytest.approx(0.9), 1.0]]
    assert step_discount(end, 0.9, "token").tolist() == [[pytest.approx(0.9)] * 3]
    with pytest.raises(ValueError, match="discount_mode"):
        step_discount(end, 0.9, "episode")


def test_next_step_index_matches_python_loop():
    g = torch.Generator().manual_seed(0)
    act = torch.rand(6, 17, generator=g) < 0.4
    got = next_step_index(act)
    for b in range(6):
        for i in range(17):
            later = [j for j in range(i + 1, 17) if act[b, j]]
            assert got[b, i].item() == (later[0] if later else -1)


def test_next_state_value_uses_bootstrap_after_last_step():
    act = torch.tensor([[False, True, True, False, True], [True, False, False, False, False]])
    v = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0]])
    out = next_state_value(v, act, torch.tensor([10.0, 0.0]))
    assert out[0, 1].item() == 2.0 and out[0, 2].item() == 4.0 and out[0, 4].item() == 10.0
    assert out[1, 0].item() == 0.0


def test_masked_mean_pools_tokens_and_raises_on_empty():
    x = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx(16 / 4)  # not (2 + 10) / 2
    with pytest.raises(EmptyActionBatch):
        masked_mean(x, torch.zeros_like(mask))


def test_returns_to_go_per_turn_and_per_token_match_worked_example():
    g = 0.9
    act, _, r, end = step_view(example_batch())
    rk, endk = r[act], end[act]
    turn = returns_to_go(rk.tolist(), step_discount(endk, g, "turn").tolist())
    assert turn == pytest.approx([-1 + g, -1 + g, -1 + g, 1, 1])
    token = returns_to_go(rk.tolist(), step_discount(endk, g, "token").tolist())
    expect = [g**2 * (-1 + g**2), g * (-1 + g**2), -1 + g**2, g, 1]
    assert token == pytest.approx(expect)


def test_gae_hand_computed_and_equals_returns_when_lambda_one():
    r = torch.tensor([1.0, 0.0, 2.0])
    v = torch.tensor([0.5, 1.0, 1.5])
    d = torch.tensor([0.9, 0.9, 0.9])
    lam = torch.tensor([0.8, 0.8, 0.8])
    A, R = gae(r, v, d, lam, 3.0)
    d2 = 2.0 + 0.9 * 3.0 - 1.5
    d1 = 0.0 + 0.9 * 1.5 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2, a1 = d2, d1 + 0.72 * d2
    a0 = d0 + 0.72 * a1
    assert A.tolist() == pytest.approx([a0, a1, a2])
    assert R.tolist() == pytest.approx([a0 + 0.5, a1 + 1.0, a2 + 1.5])
    ones = torch.ones(3)
    A1, _ = gae(r, torch.zeros(3), ones, ones, 0.0)
    assert A1.tolist() == pytest.approx(returns_to_go(r.tolist(), ones.tolist()))


def test_polyak_alpha_one_copies_and_zero_freezes():
    torch.manual_seed(0)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    polyak_update(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters(), strict=True))
    polyak_update(target, online, 0.25)
    expect = [0.75 * a + 0.25 * b for a, b in zip(before, online.parameters(), strict=True)]
    assert all(torch.allclose(a, b) for a, b in zip(expect, target.parameters(), strict=True))
    polyak_update(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters(), strict=True))


def test_lr_warmup_then_constant():
    assert lr_at(0, 1.0, 4) == 0.25 and lr_at(3, 1.0, 4) == 1.0 and lr_at(10, 1.0, 4) == 1.0
    assert lr_at(0, 1.0, 0) == 1.0
