"""BC, MC and ILQL losses against hand-computed values (docs/algorithms.md §3.1, §3.3, §3.4)."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from lmrlgym.algos.bc import bc_loss
from lmrlgym.algos.ilql import ILQLConfig, aux_lm_loss, ilql_loss, with_next_context
from lmrlgym.algos.mc import MCConfig, mc_loss
from lmrlgym.algos.rl import EmptyActionBatch


def batch(ids, mask, rewards=None, turn_end=None, returns=None):
    T = len(ids)
    zeros = [0.0] * T
    return SimpleNamespace(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, T, dtype=torch.long),
        action_mask=torch.tensor([mask], dtype=torch.bool),
        rewards=torch.tensor([rewards or zeros]),
        turn_end=torch.tensor([turn_end or [False] * T]),
        returns=torch.tensor([returns or zeros]),
    )


def lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


# Row: BOS(0) env(1) action tokens 2, 0 -> action steps at slots 1 and 2.
ROW = dict(ids=[0, 1, 2, 0], mask=[0, 0, 1, 1])


def test_bc_loss_is_mean_nll_of_action_tokens():
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])  # (n=2, V=3)
    loss, m = bc_loss(logits, batch(**ROW))
    nll = [lse([0, 1, 2]) - 2.0, lse([3, 0, 0]) - 3.0]
    assert loss.item() == pytest.approx(sum(nll) / 2)
    assert m["train/token_acc"].item() == 1.0


def test_bc_loss_raises_on_batch_without_actions():
    with pytest.raises(EmptyActionBatch):
        bc_loss(torch.zeros(0, 3), batch(ids=[0, 1, 2], mask=[0, 0, 0]))


def test_mc_loss_hand_computed():
    b = batch(**ROW, returns=[0.0, 0.0, -1.0, 2.0])
    q = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.0]])  # Q(s, a): 1.0 and 1.0
    lm = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    cfg = MCConfig(cql_weight=0.5, bc_weight=2.0)
    loss, m = mc_loss(q, lm, b, cfg)
    q_loss = (0.5 * (1.0 + 1.0) ** 2 + 0.5 * (1.0 - 2.0) ** 2) / 2
    cql = ((lse([0, 0.5, 1]) - 1.0) + (lse([1, 0, 0]) - 1.0)) / 2
    bc = math.log(3)
    assert m["train/q_loss"].item() == pytest.approx(q_loss)
    assert m["train/cql_loss"].item() == pytest.approx(cql)
    assert loss.item() == pytest.approx(q_loss + 0.5 * cql + 2.0 * bc, rel=1e-6)
    assert m["train/q_abs_err"].item() == pytest.approx(1.5)
    loss0, m0 = mc_loss(q, None, b, dataclasses.replace(cfg, bc_weight=0.0))
    assert "train/bc_loss" not in m0 and loss0.item() == pytest.approx(q_loss + 0.5 * cql)


def test_ilql_loss_hand_computed_chain_with_turn_discount():
    # One action turn of two tokens (slots 1, 2), reward 1 on its last token; next state is the
    # row's bootstrap v_boot = 0.5 (not terminal). Turn discounting: γ only after slot 2.
    b = batch(ids=[0, 1, 2, 0], mask=[0, 0, 1, 1], rewards=[0, 0, 0, 1.0],
              turn_end=[False, False, False, True])
    g, tau = 0.9, 0.8
    cfg = ILQLConfig(gamma=g, tau=tau, cql_weight=0.1, bc_weight=0.0)
    q1 = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])  # Q1(s1, 2) = 1, Q1(s2, 0) = 2
    q2 = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0]])  # Q2(s1, 2) = 3, Q2(s2, 0) = 0
    tq1 = torch.tensor([[0.0, 0.0, 0.4], [1.0, 0.0, 0.0]])  # targets 0.4, 1.0
    tq2 = torch.tensor([[0.0, 0.0, 0.6], [0.2, 0.0, 0.0]])  # targets 0.6, 0.2 -> min 0.4, 0.2
    v = torch.tensor([[9.0, 0.3, 0.7, 5.0]])  # V(s1) = 0.3, V(s2) = 0.7
    loss, m = ilql_loss(q1, q2, tq1, tq2, v, torch.tensor([0.5]), None, b, cfg)
    y = [0.0 + 1.0 * 0.7, 1.0 + g * 0.5]  # slot 1 -> V(s2) undiscounted; slot 2 -> reward + γ v_boot
    q_loss = ((0.5 * (1 - y[0]) ** 2 + 0.5 * (2 - y[1]) ** 2) / 2
              + (0.5 * (3 - y[0]) ** 2 + 0.5 * (0 - y[1]) ** 2) / 2)
    # slot 1: q̄ = 0.4 ≥ V = 0.3 -> weight τ; slot 2: q̄ = 0.2 < V = 0.7 -> 1 − τ
    v_loss = (tau * 0.5 * 0.1**2 + (1 - tau) * 0.5 * 0.5**2) / 2
    cql = ((lse([0, 0, 1]) - 1) + (lse([2, 0, 0]) - 2)) / 2 + ((lse([0, 0, 3]) - 3) + (lse([0, 0, 0]) - 0)) / 2
    assert m["train/td_target_mean"].item() == pytest.approx(sum(y) / 2)
    assert m["train/q_loss"].item() == pytest.approx(q_loss)
    assert m["train/v_loss"].item() == pytest.approx(v_loss)
    assert m["train/cql_loss"].item() == pytest.approx(cql)
    assert loss.item() == pytest.approx(q_loss + v_loss + 0.1 * cql, rel=1e-6)
    assert m["train/advantage_mean"].item() == pytest.approx(((0.4 - 0.3) + (0.2 - 0.7)) / 2)


def test_ilql_turn_backup_gives_every_token_its_turns_target():
    # Two turns in one row: tokens 2, 0 (slots 1, 2; reward 1) then env 1, token 2 (slot 4,
    # reward -1). Turn backup: slot 1 takes slot 2's TD target and target Q; V(s2) still backs
    # up turn 1 (its next state is the next turn's first step, slot 4).
    b = batch(ids=[0, 1, 2, 0, 1, 2], mask=[0, 0, 1, 1, 0, 1], rewards=[0, 0, 0, 1.0, 0, -1.0],
              turn_end=[False, False, False, True, False, True])
    g, tau = 0.9, 0.8
    cfg = ILQLConfig(gamma=g, tau=tau, cql_weight=0.0, bc_weight=0.0, backup="turn")
    q1 = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # 1, 2, -1
    q2 = q1.clone()
    tq1 = torch.tensor([[0.0, 0.0, 0.4], [1.0, 0.0, 0.0], [0.0, 0.0, -2.0]])  # 0.4, 1.0, -2
    tq2 = torch.tensor([[0.0, 0.0, 0.6], [0.2, 0.0, 0.0], [0.0, 0.0, -1.0]])  # min 0.4, 0.2, -2
    v = torch.tensor([[9.0, 0.3, 0.7, 5.0, -0.5, 5.0]])  # V(s1) 0.3, V(s2) 0.7, V(s4) -0.5
    loss, m = ilql_loss(q1, q2, tq1, tq2, v, torch.tensor([0.5]), None, b, cfg)
    y1 = 1.0 + g * -0.5  # turn 1: reward + γ V(s4), for both of its tokens
    y2 = -1.0 + g * 0.5  # turn 2: reward + γ v_boot
    q_loss = 2 * (0.5 * (1 - y1) ** 2 + 0.5 * (2 - y1) ** 2 + 0.5 * (-1 - y2) ** 2) / 3
    # q̄ of turn 1 is slot 2's 0.2 for both tokens: below V(s1) = 0.3 and V(s2) = 0.7 (1 − τ);
    # turn 2: q̄ = -2 < V(s4) = -0.5 (1 − τ)
    v_loss = (1 - tau) * 0.5 * (0.1**2 + 0.5**2 + 1.5**2) / 3
    assert m["train/td_target_mean"].item() == pytest.approx((2 * y1 + y2) / 3)
    assert m["train/q_loss"].item() == pytest.approx(q_loss)
    assert m["train/v_loss"].item() == pytest.approx(v_loss)
    assert loss.item() == pytest.approx(q_loss + v_loss, rel=1e-6)
    token = dataclasses.replace(cfg, backup="token")  # slot 1 backs up to V(s2) instead
    assert ilql_loss(q1, q2, tq1, tq2, v, torch.tensor([0.5]), None, b, token)[1][
        "train/td_target_mean"].item() == pytest.approx((0.7 + y1 + y2) / 3)
    with pytest.raises(ValueError, match="--backup turn needs --discount-mode turn"):
        ILQLConfig(backup="turn", discount_mode="token")


def test_ilql_aux_lm_loss_reads_the_observations_with_the_next_context_appended():
    # Row 0: BOS 5 6 | action 3 4, next context BOS 7 8 (appended: 7 8). Row 1: BOS 5 | action 3,
    # terminal (nothing appended); collated with pad 9.
    pad = 9
    b = SimpleNamespace(
        input_ids=torch.tensor([[0, 5, 6, 3, 4], [0, 5, 3, pad, pad]]),
        attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        action_mask=torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]], dtype=torch.bool),
        next_ids=torch.tensor([[0, 7, 8], [pad, pad, pad]]),
        next_attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]),
    )
    ids, mask, obs = with_next_context(b, pad)
    assert ids.tolist() == [[0, 5, 6, 3, 4, 7, 8], [0, 5, 3, pad, pad, pad, pad]]
    assert mask.tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    # Slot t predicts token t + 1: 5, 6 (row 0's observation), 7, 8 (appended); row 1's 5.
    slots = [(0, 0), (0, 1), (0, 4), (0, 5), (1, 0)]
    assert obs.nonzero().tolist() == [list(s) for s in slots]
    cut, _, cut_obs = with_next_context(b, pad, max_len=6)  # the model's positions: cut 8
    assert cut[0].tolist() == [0, 5, 6, 3, 4, 7] and int(cut_obs.sum()) == 4

    torch.manual_seed(0)
    head = torch.nn.Linear(4, 12, bias=False)  # 12 embedding rows, 10 of them the vocabulary
    h = torch.randn(2, 7, 4)
    logits = torch.stack([head(h[r, t])[:10] for r, t in slots])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([5, 6, 7, 8, 5]))
    assert aux_lm_loss(head, h, ids, obs, 10).item() == pytest.approx(expected.item(), rel=1e-6)
    assert aux_lm_loss(head, h, ids, torch.zeros_like(obs), 10).item() == 0.0


def test_ilql_aux_lm_loss_adds_its_weight_times_the_term_and_needs_a_separate_value_trunk():
    b = batch(ids=[0, 1, 2, 0], mask=[0, 0, 1, 1], rewards=[0, 0, 0, 1.0],
              turn_end=[False, False, False, True])
    q = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    v = torch.tensor([[9.0, 0.3, 0.7, 5.0]])
    args = (q, q.clone(), q.clone(), q.clone(), v, torch.tensor([0.5]), None, b)
    cfg = ILQLConfig(value_model="separate", backup="turn")
    loss0, m0 = ilql_loss(*args, cfg)
    loss, m = ilql_loss(*args, dataclasses.replace(cfg, aux_lm_weight=0.1), torch.tensor(2.0))
    assert "train/aux_lm_loss" not in m0 and m["train/aux_lm_loss"].item() == 2.0
    assert loss.item() == pytest.approx(loss0.item() + 0.2, rel=1e-6)
    assert m["train/q_loss"] == m0["train/q_loss"] and m["train/v_loss"] == m0["train/v_loss"]
    with pytest.raises(ValueError, match="--aux-lm-weight 0.1 needs --value-model separate"):
        ILQLConfig(aux_lm_weight=0.1)
    with pytest.raises(ValueError, match="--aux-lm-weight must be non-negative"):
        ILQLConfig(value_model="separate", aux_lm_weight=-1.0)


def test_ilql_token_discount_and_terminal_bootstrap():
    b = batch(ids=[0, 1, 2, 0], mask=[0, 0, 1, 1], rewards=[0, 0, 0, 1.0],
              turn_end=[False, False, False, True])
    cfg = ILQLConfig(gamma=0.9, discount_mode="token", cql_weight=0.0, bc_weight=0.0)
    z = torch.zeros(2, 3)
    v = torch.tensor([[0.0, 0.0, 0.7, 0.0]])
    _, m = ilql_loss(z, z, z, z, v, torch.tensor([0.0]), None, b, cfg)  # terminal: v_boot = 0
    assert m["train/td_target_mean"].item() == pytest.approx((0.9 * 0.7 + 1.0) / 2)


def test_expectile_fits_mean_at_half_and_max_near_one():
    # Three action steps whose min target Q is 1, 2 and 6; V is one shared scalar fit by ilql_loss.
    b = batch(ids=[0, 1, 2, 0], mask=[0, 1, 1, 1])
    targets = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [6.0, 0.0, 0.0]])  # a = 1, 2, 0
    z = torch.zeros(3, 3)
    for tau, expect in ((0.5, 3.0), (0.999, 6.0)):
        cfg = ILQLConfig(tau=tau, cql_weight=0.0, bc_weight=0.0)
        v = torch.zeros((), requires_grad=True)
        opt = torch.optim.SGD([v], lr=1.0)
        for _ in range(400):
            loss, _ = ilql_loss(z, z, targets, targets, v.expand(1, 4), torch.zeros(1), None, b, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert v.item() == pytest.approx(expect, abs=0.05)


def test_select_episodes_success_and_top_fraction_with_seeded_ties():
    from lmrlgym.algos.filtered_bc import select_episodes
    from lmrlgym.core import Episode, Turn

    def ep(ret, success):
        return Episode("T", [Turn("o\n", False), Turn("a\n", True, ret)], True, False, success)

    eps = [ep(-3, False), ep(0, True), ep(-1, False), ep(-1, False), ep(-5, True)]
    assert [e.ret for e in select_episodes(eps, "success", 0.5, 0)] == [0, -5]
    top = select_episodes(eps, "top_fraction", 0.4, 0)  # ceil(0.4 * 5) = 2: 0 and one of the -1s
    assert len(top) == 2 and sorted(e.ret for e in top) == [-1, 0]
    picks = {id(select_episodes(eps, "top_fraction", 0.4, s)[1]) for s in range(20)}
    assert picks == {id(eps[2]), id(eps[3])}  # the tie is broken by the seed, both ways
    with pytest.raises(ValueError, match="keep"):
        select_episodes(eps, "best", 0.5, 0)
