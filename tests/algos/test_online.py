"""Online rollouts (algos/online.py): seeds, render-exact prompts, sampled ids, metrics."""

import pytest

from lmrlgym.algos import online
from lmrlgym.algos.dataset import context_fn
from lmrlgym.algos.rundir import MODEL_DIR, TOKENIZER_DIR
from lmrlgym.core import Episode, Turn
from lmrlgym.data.generate import DATA_SEED_BASE
from lmrlgym.models.decoding import Decoding
from lmrlgym.models.factory import build_model
from lmrlgym.models.tokenizer import load_tokenizer
from tests.algos.online_runs import MAX_NEW_TOKENS, maze_bc_init, random_init


def test_rollout_seeds_are_deterministic_per_round_and_disjoint_from_eval_and_data():
    a = online.rollout_seeds(3, 0, 500)
    assert a == online.rollout_seeds(3, 0, 500)
    assert set(a).isdisjoint(online.rollout_seeds(3, 1, 500))
    assert set(a).isdisjoint(online.rollout_seeds(4, 0, 500))
    assert min(a) > DATA_SEED_BASE + 10**8  # above every eval (0..N-1) and data seed


def load(run):
    tokenizer = load_tokenizer(run / TOKENIZER_DIR)
    return build_model(str(run / MODEL_DIR), tokenizer, dropout=0.0), tokenizer


@pytest.fixture(scope="module")
def maze_bc(tmp_path_factory):
    return maze_bc_init(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("task", ["Maze-FO-v0", "Wordle-v0"])
def test_each_action_was_sampled_from_its_training_row_prefix(task, maze_bc, tmp_path_factory):
    # Maze-FO renders chains (a new row per step); Wordle appends to one row, with earlier
    # actions as their sampled ids even where the env stores a canonical spelling.
    run = maze_bc if task == "Maze-FO-v0" else random_init(tmp_path_factory.getbasetemp(), task)
    lm, tokenizer = load(run)
    policy = online.LMPolicy(lm, tokenizer, Decoding(max_new_tokens=MAX_NEW_TOKENS[task], seed=0),
                             max_context_tokens=256)
    rollouts = online.collect_rollouts(policy, task, online.rollout_seeds(0, 0, 3), batch_size=2)
    segments = online.render_rollouts(rollouts, tokenizer, context_fn(task), 256)
    checked = 0
    for i, r in enumerate(rollouts):
        assert r.episode.n_actions == len(r.action_ids) == len(r.prompts)
        rows = sorted((s for s in segments if s.episode_id == i), key=lambda s: s.first_turn)
        for seg in rows:
            ids, mask = seg.input_ids.tolist(), seg.action_mask.tolist()
            starts = [p for p in range(len(ids)) if mask[p] and not mask[p - 1]]
            for k, p in enumerate(starts, start=seg.first_turn):
                assert ids[:p] == r.prompts[k]
                assert ids[p : p + len(r.action_ids[k])] == r.action_ids[k]
                checked += 1
    assert checked == sum(len(r.action_ids) for r in rollouts)


def test_rollout_metrics_pool_turns():
    def rollout(ret_per_turn, n, success, illegal):
        turns = [Turn("s\n", False)]
        for _ in range(n):
            turns += [Turn("a\n", True, ret_per_turn), Turn("s\n", False)]
        ep = Episode("Maze-FO-v0", turns, success, not success, success)
        return online.Rollout(ep, [[1]] * n, [[0]] * n, illegal, [False] * (n - 1) + [True])

    m = online.rollout_metrics([rollout(-1.0, 2, True, [False, False]),
                                rollout(-4.0, 4, False, [True, True, True, False])])
    assert m["rollout/return"] == pytest.approx((-2 - 16) / 2)
    assert m["rollout/success_rate"] == 0.5
    assert m["rollout/episode_length"] == 3.0
    assert m["rollout/illegal_rate"] == pytest.approx(3 / 6)
    assert m["rollout/truncated_action_rate"] == pytest.approx(2 / 6)


def test_collect_rollouts_is_reproducible(tmp_path_factory):
    run = random_init(tmp_path_factory.getbasetemp(), "Wordle-v0")
    lm, tokenizer = load(run)
    out = []
    for _ in range(2):
        policy = online.LMPolicy(lm, tokenizer, Decoding(max_new_tokens=16, seed=5),
                                 max_context_tokens=256)
        out.append(online.collect_rollouts(policy, "Wordle-v0", [2**30 + 1, 2**30 + 2]))
    assert [r.action_ids for r in out[0]] == [r.action_ids for r in out[1]]
