"""Cross-turn KV reuse (LMPolicy ``sessions``): a live episode's next turn feeds only what its
prompt does not share with the kept cache, exactly the ids re-encoding would feed, with the
same actions; prompts sharing only the BOS (left truncation) are re-encoded."""

import pytest
import torch

from lmrlgym.eval.evaluate import evaluate
from lmrlgym.models.decoding import Decoding
from lmrlgym.models.factory import build_model
from lmrlgym.models.policy import LMPolicy
from lmrlgym.models.tokenizer import train_tokenizer
from lmrlgym.registry import make
from tests.models.toy import EchoEnv


@pytest.fixture(scope="module")
def tok():
    texts = []
    for task in ("Maze-FO-v0", "Wordle-v0"):
        env = make(task)
        for seed in range(3):
            _, info = env.reset(seed=seed)
            for action in env.action_set()[:4]:
                if env.done:
                    break
                env.step(action + "\n")
            texts += [t.text for t in env.turns]
        env.close()
    return train_tokenizer(texts * 20 + ["go left\n", "stop\n", "Say something 1.\n"] * 20,
                           vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_model("gpt2-tiny", tok, dropout=0.0, n_positions=512).eval()


def fed_ids(model, monkeypatch):
    """Records the ids of every forward pass (batch rows, padding removed)."""
    calls = []
    real = model.forward

    def spy(input_ids, attention_mask=None, **kw):
        width = input_ids.shape[1]
        calls.append([row[m[-width:].bool()].tolist() for row, m in zip(input_ids, attention_mask,
                                                                      strict=True)])
        return real(input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(model, "forward", spy)
    return calls


def play(policy, max_steps=5, seed=0):
    """One EchoEnv episode with the whole history as the window: its prompts and the sampled
    ids of each action (a forced newline left out)."""
    env = EchoEnv(max_steps=max_steps)
    _, info = env.reset(seed=seed)
    prompts, actions = [], []
    while not env.done:
        (action,) = policy.act_turns([info["turns"]], sessions=["episode"])
        prompts.append(policy.last.prompt_ids[0])
        ids = policy.last.action_ids[0]
        actions.append(ids[:-1] if policy.last.truncated[0] else ids)
        _, _, _, _, info = env.step(action)
    return prompts, actions


@pytest.mark.parametrize("reuse,P", [(True, 400), (False, 400), (True, 14)])
def test_ids_fed_over_an_episode_equal_reencoding_the_prompt(tok, model, monkeypatch, reuse, P):
    policy = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=6), max_context_tokens=P,
                      reuse_cache=reuse)
    calls = fed_ids(model, monkeypatch)
    prompts, sampled = play(policy)
    assert len(prompts) > 2
    # Split the forward passes into turns: each turn's passes feed its prompt (or the part of
    # it after the head shared with the kept ids), then one pass per sampled token but the last.
    fed: list[int] = []
    heads = []
    k = 0
    for prompt, action in zip(prompts, sampled, strict=True):
        first = calls[k][0]
        head = len(prompt) - len(first)
        assert prompt[head:] == first and prompt[:head] == fed[:head]
        heads.append(head)
        steps = sum((c[0] for c in calls[k + 1 : k + len(action)]), [])
        assert steps == action[:-1]
        fed = prompt + steps
        k += len(action)
    assert k == len(calls)
    if not reuse:
        assert set(heads) == {0}
    elif P == 400:  # the whole history is the prompt: every later turn feeds only new tokens
        assert heads[0] == 0 and all(h >= len(p) // 2 for h, p in zip(heads[1:], prompts[1:],
                                                                       strict=True))
    else:  # left truncation shifts positions: such a prompt is fed whole
        assert any(h == 0 and len(p) == P for h, p in zip(heads, prompts, strict=True))


def test_kept_cache_equals_reencoding_and_leaves_with_its_episode(tok, model):
    policy = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=6), max_context_tokens=400)
    prompts = [policy.prompt(EchoEnv().reset(seed=s)[1]["turns"]) for s in range(3)]
    policy.generate(prompts, sessions=["a", "b", "c"])
    past = policy._pasts["b"]
    out = model(torch.tensor([past.ids]), use_cache=True)
    for layer, (keys, values) in zip(out.cache.layers, past.bufs, strict=True):  # (B, W, H, D)
        keys, values = keys[past.row, past.cols], values[past.row, past.cols]  # (T, H, D)
        assert torch.allclose(layer.keys[0], keys.transpose(0, 1), atol=1e-5)
        assert torch.allclose(layer.values[0], values.transpose(0, 1), atol=1e-5)
    policy.generate([past.ids + prompts[0][1:]], sessions=["b"])
    assert set(policy._pasts) == {"b"}  # "a" and "c" finished: their caches are gone
    policy.end_episodes()
    assert policy._pasts == {}


def test_weights_changed_in_place_are_reencoded(tok, model, monkeypatch):
    policy = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=6), max_context_tokens=400)
    prompt = policy.prompt(EchoEnv().reset(seed=1)[1]["turns"])
    policy.generate([prompt], sessions=[0])
    longer = policy._pasts[0].ids + prompt[1:]
    calls = fed_ids(model, monkeypatch)
    with torch.no_grad():
        next(model.parameters()).add_(0.0)  # an in-place update, as an optimizer step makes
    policy.generate([longer], sessions=[0])
    assert calls[0][0] == longer


@pytest.mark.parametrize("task", ["Maze-FO-v0", "Wordle-v0"])
def test_greedy_episodes_are_identical_with_and_without_reuse(tok, model, task, monkeypatch):
    env = make(task)
    calls = fed_ids(model, monkeypatch)
    runs, fed = {}, {}
    for reuse in (False, True):
        calls.clear()
        policy = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=8, seed=0),
                          context_turns=env.context_turns, max_context_tokens=400,
                          reuse_cache=reuse)
        episodes = evaluate(policy, task, 4, seed=0, max_concurrent=4).episodes
        runs[reuse] = [[(t.text, t.is_action) for t in ep.turns] for ep in episodes]
        fed[reuse] = sum(len(row) for c in calls for row in c)
        assert policy._pasts == {}  # evaluate frees the kept caches at the end
    env.close()
    assert runs[True] == runs[False]
    assert max(len(ep) for ep in runs[True]) > 4  # multi-turn episodes
    # Wordle's window is the whole history, Maze-FO's the latest observation, whose head
    # ("The goal is at position ...") is the previous one's: both feed fewer tokens.
    assert fed[True] < 0.8 * fed[False]


def test_rows_with_pasts_of_different_lengths_share_a_batch_exactly(tok, model):
    """Kept caches of different lengths are left-padded into one batch, next to a row with
    none (a new episode): every row's action equals re-encoding's."""
    texts = ["Say something 1.\n", "You said go left.\nSay something 2.\nYou said stop.\n",
             "go left\nstop\n"]
    kw = dict(max_context_tokens=400, pad_budget=float("inf"))
    reuse = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=5), **kw)
    plain = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=5), reuse_cache=False, **kw)
    first = [tok.encode(t) for t in texts]
    first = [[reuse.bos_id] + ids for ids in first]
    reuse.generate(first, sessions=[0, 1, 2])
    assert len({len(p.ids) for p in reuse._pasts.values()}) == 3
    tail = tok.encode("You said hello there.\n")
    second = [reuse._pasts[k].ids + tail[: 2 + k] for k in range(3)] + [first[0]]
    with_reuse = reuse.generate(second, sessions=[0, 1, 2, 3]).action_ids
    assert with_reuse == plain.generate(second).action_ids


def test_roomy_cache_layer_matches_the_dynamic_layer():
    # Decoding writes each token into the buffer's spare room instead of copying the cache;
    # the keys/values it returns equal DynamicLayer's through regrowth and row selection.
    from transformers.cache_utils import DynamicLayer

    from lmrlgym.models.policy import _RoomyLayer

    torch.manual_seed(0)
    roomy, plain = _RoomyLayer(room=2), DynamicLayer()
    for step, n in enumerate([5, 1, 1, 1, 3]):  # prefill, decode (in place), full -> regrown
        k, v = torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)
        buffer = roomy._bufs[0] if roomy._bufs else None
        got, want = roomy.update(k, v), plain.update(k, v)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        assert (roomy._bufs[0] is buffer) == (step in (1, 2))  # written in place while room lasts
    rows = torch.tensor([2, 0])
    roomy.batch_select_indices(rows)
    plain.batch_select_indices(rows)
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    assert all(torch.equal(a, b) for a, b in zip(roomy.update(k, v), plain.update(k, v),
                                                   strict=True))
    assert roomy.get_seq_length() == plain.get_seq_length() == 12
