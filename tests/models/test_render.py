"""render() and collate() against the hand-computed examples of docs/algorithms.md §1.4-1.5."""

import pytest
import torch

from lmrlgym.core import Episode, Turn
from lmrlgym.models.render import RenderError, TokenCache, collate, prompt_ids, render
from lmrlgym.models.tokenizer import train_tokenizer
from tests.models.toy import toy_tokenizer

G = 0.9

APPEND_ONLY = [Turn("Q:\n", False), Turn("go left\n", True, -1.0), Turn("ok\n", False),
               Turn("stop\n", True, 1.0)]


def ids(tok, words):
    return [tok.convert_tokens_to_ids(w) for w in words]


def test_worked_example_append_only_table():
    tok = toy_tokenizer()
    (seg,) = render(APPEND_ONLY, tok, None, 64, G, "turn", terminated=True)
    expected = ["<|bos|>", "Q:", "\n", "go", " left", "\n", "ok", "\n", "stop", "\n"]
    assert seg.input_ids.tolist() == ids(tok, expected)
    assert seg.action_mask.int().tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    assert seg.rewards.tolist() == [0, 0, 0, 0, 0, -1, 0, 0, 0, 1]
    assert seg.turn_end.int().tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert seg.terminal and seg.next_ids.numel() == 0
    assert seg.first_turn == 0


def test_worked_example_returns_per_turn_and_per_token():
    tok = toy_tokenizer()
    (turn,) = render(APPEND_ONLY, tok, None, 64, G, "turn", terminated=True)
    (token,) = render(APPEND_ONLY, tok, None, 64, G, "token", terminated=True)
    # returns[p] is G of slot i = p - 1 (the slot choosing token p).
    g_turn = {8: 1.0, 7: 1.0, 4: -1 + G, 3: -1 + G, 2: -1 + G}
    g_token = {8: 1.0, 7: G, 4: -1 + G**2, 3: G * (-1 + G**2), 2: G**2 * (-1 + G**2)}
    for expected, seg in ((g_turn, turn), (g_token, token)):
        got = {p - 1: seg.returns[p].item() for p in range(len(seg)) if seg.action_mask[p]}
        assert got == pytest.approx(expected)
        assert seg.returns[~seg.action_mask].abs().sum() == 0


def test_worked_example_chain_form():
    tok = toy_tokenizer()
    turns = [Turn("at 1,1\n", False), Turn("right\n", True, -1.0), Turn("at 1,2\n", False),
             Turn("down\n", True, 0.0), Turn("x\n", False)]
    newest = lambda ts: [ts[-1]]  # noqa: E731  (Maze-FO's window)
    rows = render(turns, tok, newest, 64, G, "turn", terminated=True)
    assert len(rows) == 2
    assert rows[0].input_ids.tolist() == ids(tok, ["<|bos|>", "at", " 1,1", "\n", "right", "\n"])
    assert rows[0].next_ids.tolist() == ids(tok, ["<|bos|>", "at", " 1,2", "\n"])
    assert not rows[0].terminal
    assert rows[1].input_ids.tolist() == ids(tok, ["<|bos|>", "at", " 1,2", "\n", "down", "\n"])
    assert rows[1].next_ids.numel() == 0 and rows[1].terminal
    # Returns are computed over the whole episode before it is split: G_right = -1 + γ·0.
    assert rows[0].returns[rows[0].action_mask].tolist() == pytest.approx([-1 + G * 0.0] * 2)
    assert [r.first_turn for r in rows] == [0, 1]


def test_truncated_episode_bootstraps_from_final_observation():
    tok = toy_tokenizer()
    turns = [*APPEND_ONLY, Turn("ok\n", False)]
    (seg,) = render(turns, tok, None, 64, G, "turn", terminated=False)
    # Append-only: the final observation is appended to the row (bootstrap at its last token).
    assert seg.input_ids.tolist()[-2:] == ids(tok, ["ok", "\n"])
    assert not seg.terminal and seg.next_ids.numel() == 0
    *_, chain = render(turns, tok, lambda ts: [ts[-1]], 64, G, "turn", terminated=False)
    assert chain.input_ids.tolist() == ids(tok, ["<|bos|>", "ok", "\n", "stop", "\n"])
    assert chain.next_ids.tolist() == ids(tok, ["<|bos|>", "ok", "\n"])
    (as_terminal,) = render(turns, tok, None, 64, G, "turn", terminated=False,
                            truncation_is_terminal=True)
    assert as_terminal.terminal and len(as_terminal) == 10


def test_empty_action_turn_names_the_record():
    tok = toy_tokenizer()
    bad = [Turn("Q:\n", False), Turn("", True, 0.0), Turn("ok\n", False)]
    with pytest.raises(RenderError, match=r"shard-00000.jsonl:7.*action turn 1"):
        render(bad, tok, None, 64, terminated=True, record="shard-00000.jsonl:7")
    ep = Episode(task="Toy-v0", turns=bad, terminated=True, truncated=False, success=False, seed=42)
    with pytest.raises(RenderError, match="seed 42"):
        render(ep, tok, None, 64)


def _long_dialogue(n_turns: int) -> list[Turn]:
    words = ["alpha beta gamma", "delta epsilon", "go north now", "zeta eta theta iota"]
    turns = [Turn("Start the game please.\n", False)]
    for t in range(n_turns):
        turns.append(Turn(f"ask {words[t % 4]} {t}\n", True, float(t % 3 - 1)))
        turns.append(Turn(f"reply {words[(t + 1) % 4]} number {t * 7}\n", False))
    return turns


@pytest.fixture(scope="module")
def bpe():
    texts = [t.text for t in _long_dialogue(30)] * 5
    return train_tokenizer(texts, vocab_size=320)


@pytest.mark.parametrize("P", [12, 40, 100, 10_000])
def test_invariants_on_long_dialogue(bpe, P):
    turns = _long_dialogue(25)
    rows = render(turns, bpe, None, P, 0.95, "turn", terminated=False)
    actions = [t.text for t in turns if t.is_action]
    cache = TokenCache(bpe)
    M = max(len(cache(a)) for a in actions)
    # Masked tokens decode to exactly the action strings, each action exactly once, in order.
    decoded = []
    for seg in rows:
        run = []
        for p in range(len(seg)):
            if seg.action_mask[p]:
                run.append(int(seg.input_ids[p]))
                if seg.turn_end[p]:
                    decoded.append(bpe.decode(run))
                    run = []
        assert not run
        assert seg.input_ids[0] == bpe.bos_token_id and (seg.input_ids[1:] != bpe.bos_token_id).all()
    assert decoded == actions
    # Rewards sit on turn ends; each row fits in P + M.
    for seg in rows:
        assert (seg.rewards[~seg.turn_end] == 0).all()
        assert len(seg) <= P + M
    assert sum(float(s.rewards.sum()) for s in rows) == pytest.approx(sum(t.reward for t in turns))
    # Each action is trained on exactly the prompt the policy sees at inference.
    j = long_histories = 0
    for seg in rows:
        for p in range(1, len(seg)):
            if seg.action_mask[p] and not seg.action_mask[p - 1]:
                k = [i for i, t in enumerate(turns) if t.is_action][j]
                expected = prompt_ids(turns[:k], cache, bpe.bos_token_id, P)
                full = 1 + sum(len(cache(t.text)) for t in turns[:k])
                assert len(expected) == min(P, full)  # over-long: exactly the last P tokens
                long_histories += full > P
                prefix = seg.input_ids[:p].tolist()
                assert prefix == expected[-len(prefix):] and len(prefix) == len(expected)
                j += 1
    assert j == len(actions)
    if P == 10_000:
        assert len(rows) == 1 and long_histories == 0
    else:
        assert long_histories > 0
    # Rows closed by rule 3 link to the next row's prompt.
    for a, b in zip(rows, rows[1:], strict=False):
        first_b = int(b.action_mask.int().argmax())
        assert a.next_ids.tolist() == b.input_ids[:first_b].tolist()


def test_action_ids_override_and_mismatch(bpe):
    turns = _long_dialogue(2)
    sampled = [[5, 6, 7], [8, 9]]
    (seg,) = render(turns, bpe, None, 512, terminated=True, action_ids=sampled)
    assert seg.input_ids[seg.action_mask].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(RenderError, match="action_ids"):
        render(turns, bpe, None, 512, terminated=True, action_ids=sampled[:1])


def test_collate_pads_right(bpe):
    rows = render(_long_dialogue(6), bpe, None, 40, 0.9, terminated=False)
    rows = rows + render(_long_dialogue(1), bpe, None, 512, 0.9, terminated=True, episode_id=3)
    batch = collate(rows, bpe.pad_token_id)
    B, T = batch.input_ids.shape
    assert B == len(rows) and T == max(len(r) for r in rows)
    for b, r in enumerate(rows):
        L = len(r)
        assert batch.attention_mask[b].sum() == L and batch.last_index[b] == L - 1
        assert batch.input_ids[b, :L].tolist() == r.input_ids.tolist()
        assert (batch.input_ids[b, L:] == bpe.pad_token_id).all()
        assert not batch.action_mask[b, L:].any()
        assert bool(batch.has_next[b]) == (len(r.next_ids) > 0)
        assert batch.next_attention_mask[b].sum() == len(r.next_ids)
    assert batch.terminal.tolist() == [r.terminal for r in rows]
    assert batch.episode_id.tolist()[-1] == 3
    assert batch.n_action_tokens == sum(int(r.action_mask.sum()) for r in rows)
    assert batch.rewards.dtype == torch.float32 and batch.input_ids.dtype == torch.long


def test_maze_fo_episode_is_a_chain_without_duplicated_final_step(bpe):
    """§1.8: one row per step, the last one terminal with no successor, returns computed once."""
    from lmrlgym import make
    from lmrlgym.data.generate import run_episode
    from lmrlgym.data.policies import make_policy

    env = make("Maze-FO-v0")
    ep = run_episode(env, make_policy("maze-optimal", "Maze-FO-v0"), seed=3, task="Maze-FO-v0")
    tok = train_tokenizer([t.text for t in ep.turns] * 3, vocab_size=300)
    rows = render(ep, tok, env.context_turns, 256, 0.9, "turn")
    actions = [t for t in ep.turns if t.is_action]
    assert len(rows) == len(actions) and ep.terminated and actions[-1].reward == 0
    for k, (seg, action) in enumerate(zip(rows, actions, strict=True)):
        obs = ep.turns[2 * k].text
        assert tok.decode(seg.input_ids[1:]) == obs + action.text
        # G_k = sum_j 0.9^(j-k) r_j over the rest of the episode, on every token of the turn.
        g = sum(0.9 ** (j - k) * a.reward for j, a in enumerate(actions) if j >= k)
        n_tokens = int(seg.action_mask.sum())
        assert seg.returns[seg.action_mask].tolist() == pytest.approx([g] * n_tokens)
        if k + 1 < len(rows):
            assert not seg.terminal and tok.decode(seg.next_ids[1:]) == ep.turns[2 * k + 2].text
    assert rows[-1].terminal and rows[-1].next_ids.numel() == 0
    # Reaching the goal earns 0 and nothing follows: G = 0, never a doubled terminal reward.
    assert rows[-1].returns[rows[-1].action_mask].abs().max() == 0


def test_shared_token_cache_accumulates_and_changes_nothing(bpe):
    cache = TokenCache(bpe)
    turns = _long_dialogue(3)
    plain = render(turns, bpe, None, 64, terminated=True)
    cached = render(turns, bpe, None, 64, terminated=True, token_cache=cache)
    assert len(cache) == len({t.text for t in turns})  # an empty cache is still used
    again = render(turns, bpe, None, 64, terminated=True, token_cache=cache)
    for a, b, c in zip(plain, cached, again, strict=True):
        assert a.input_ids.tolist() == b.input_ids.tolist() == c.input_ids.tolist()
        assert a.returns.tolist() == c.returns.tolist() and a.next_ids.dtype == torch.long
