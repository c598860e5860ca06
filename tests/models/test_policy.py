"""LMPolicy: newline stopping, truncation, seeding, cache/batch equivalence, the logits hook,
and rollout ids == render ids."""

import dataclasses

import pytest
import torch

from lmrlgym.core import Turn
from lmrlgym.models.decoding import Decoding
from lmrlgym.models.factory import build_model
from lmrlgym.models.policy import LMPolicy
from lmrlgym.models.render import render
from lmrlgym.models.tokenizer import newline_id, train_tokenizer
from tests.models.toy import EchoEnv, assert_rows_finish_like_one_by_one

TEXTS = ["Say something 0.\n", "Say something 1.\n", "You said hello there.\n", "go left\n",
         "stop\n", "hello there\n", "You said go left.\n", "Bye.\n"] * 40


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_model("gpt2-tiny", tok, dropout=0.0, n_positions=256).eval()


def forcing(tok, model, scripts):
    """A logits hook that makes every row emit ``scripts[k]`` on the k-th generate call, and
    checks that it receives the LM head's input: ``lm_head(h) == logits``."""
    ids = [tok.encode(s, add_special_tokens=False) for s in scripts]
    state = {"call": 0, "step": 0, "checked": 0}

    def adjust(h, logits):
        assert torch.allclose(model.lm_head(h)[:, : logits.shape[1]].float(), logits, atol=1e-4)
        state["checked"] += 1
        target = ids[state["call"] % len(ids)][state["step"]]
        state["step"] += 1
        if state["step"] == len(ids[state["call"] % len(ids)]):
            state["call"], state["step"] = state["call"] + 1, 0
        out = torch.full_like(logits, -1e9)
        out[:, target] = 0.0
        return out

    return adjust, state


def test_stops_at_first_newline_token(tok, model):
    adjust, state = forcing(tok, model, ["go left\nstop\n"])
    pol = LMPolicy(model, tok, Decoding(max_new_tokens=16), max_context_tokens=64,
                   logits_adjust=adjust)
    out = pol.act(["Say something 0.\n", "You said go left.\n"])
    assert out == ["go left\n", "go left\n"]
    nl = newline_id(tok)
    assert all(ids[-1] == nl and ids.count(nl) == 1 for ids in pol.last.action_ids)
    assert pol.last.truncated == [False, False] and pol.n_truncated == 0
    assert state["checked"] == len(tok.encode("go left\n", add_special_tokens=False))


def test_truncation_appends_a_newline_and_is_counted(tok, model):
    adjust, _ = forcing(tok, model, ["hello there hello there hello\n"])
    pol = LMPolicy(model, tok, Decoding(max_new_tokens=3), max_context_tokens=64,
                   logits_adjust=adjust)
    (out,) = pol.act(["Say something 0.\n"])
    assert pol.last.truncated == [True] and pol.n_truncated == 1 and pol.n_actions == 1
    assert len(pol.last.action_ids[0]) == 4 and out.endswith("\n") and out.count("\n") == 1


def test_same_seed_same_actions_and_cache_equivalence(tok, model):
    obs = ["Say something 0.\n", "You said hello there.\nYou said go left.\n", "Bye.\n"]

    def run(decoding, **kw):
        return LMPolicy(model, tok, decoding, max_context_tokens=64, **kw).act(obs)

    seeded, argmax = Decoding(max_new_tokens=6, seed=5), Decoding(greedy=True, max_new_tokens=6)
    a = run(seeded)
    assert a == run(seeded)
    assert a != run(dataclasses.replace(seeded, seed=6))
    assert a == run(seeded, use_cache=False)  # same draws, same logits without the cache
    greedy = run(argmax, pad_budget=float("inf"))  # one left-padded batch
    # Left padding with position ids from the mask: a row's output ignores its neighbours.
    assert greedy == run(argmax, batch_size=1) == run(argmax, use_cache=False)
    assert greedy == run(argmax)  # length buckets
    assert all(t.endswith("\n") for t in a + greedy)


def test_special_tokens_never_sampled_and_vocab_sliced(tok, model):
    pol = LMPolicy(model, tok, Decoding(temperature=3.0, max_new_tokens=10, seed=1),
                   max_context_tokens=64)
    pol.act(["Say something 1.\n"] * 8)
    specials = set(tok.all_special_ids)
    assert not any(i in specials for ids in pol.last.action_ids for i in ids)
    assert max(i for ids in pol.last.action_ids for i in ids) < len(tok)


def test_top_k_one_equals_greedy(tok, model):
    obs = ["Say something 0.\n", "You said go left.\n"]
    def run(**decoding):
        return LMPolicy(model, tok, Decoding(max_new_tokens=8, **decoding),
                        max_context_tokens=64).act(obs)

    greedy = run(greedy=True)
    assert run(top_k=1) == greedy
    assert run(top_p=1e-6) == greedy


def test_bad_settings_are_clear_errors(tok, model):
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        LMPolicy(model, tok, Decoding(max_new_tokens=10), max_context_tokens=250)
    with pytest.raises(ValueError, match="temperature"):
        Decoding(temperature=0.0)


def test_decoding_is_recorded_and_reseeded(tok, model):
    obs = ["Say something 0.\n", "You said go left.\n"]
    pol = LMPolicy(model, tok, Decoding(temperature=2.0, top_k=5, max_new_tokens=6, seed=2),
                   max_context_tokens=64, batch_size=8, pad_budget=float("inf"))
    assert pol.decoding == {
        "greedy": False, "temperature": 2.0, "top_k": 5, "top_p": None, "max_new_tokens": 6,
        "max_context_tokens": 64, "seed": 2, "value_guided": False, "batch_size": 8,
        "pad_budget": None, "decode": "sample"}
    first = pol.act(obs)
    pol.reseed(3)
    assert pol.settings.seed == 3 and pol.decoding["seed"] == 3
    pol.reseed(2)  # the same draws again
    assert pol.act(obs) == first


@pytest.mark.parametrize("window,P", [(None, 200), ("newest", 200), (None, 24)])
def test_rollout_ids_equal_render_ids(tok, model, window, P):
    """Prompts and generated ids of a rollout are exactly the tokens render() trains on."""
    script = ["hello there\n", "go left\n", "hello there\n", "stop\n"]
    adjust, _ = forcing(tok, model, script)
    ctx = (lambda ts: [ts[-1]]) if window == "newest" else None
    pol = LMPolicy(model, tok, Decoding(max_new_tokens=8), context_turns=ctx,
                   max_context_tokens=P, logits_adjust=adjust)
    env = EchoEnv(max_steps=10)
    obs, info = env.reset(seed=3)
    prompts, actions = [], []
    terminated = truncated = False
    while not (terminated or truncated):
        (action,) = pol.act_turns([info["turns"]])
        prompts.append(pol.last.prompt_ids[0])
        actions.append(pol.last.action_ids[0])
        obs, _, terminated, truncated, info = env.step(action)
    turns = info["turns"]
    assert [t.text for t in turns if t.is_action] == script
    rows = render(turns, tok, ctx, P, terminated=terminated)
    seen = []
    for seg in rows:
        ids, mask = seg.input_ids.tolist(), seg.action_mask.tolist()
        p = 0
        while p < len(ids):
            if mask[p] and (p == 0 or not mask[p - 1]):
                q = p
                while q < len(ids) and mask[q]:
                    q += 1
                seen.append((ids[:p], ids[p:q]))
                p = q
            else:
                p += 1
    assert seen == list(zip(prompts, actions, strict=True))
    # Whole-string act() tokenizes like per-turn act_turns() with the project's tokenizer.
    history = [Turn("Say something 3.\n", False), Turn("hello there\n", True, -1.0),
               Turn("You said hello there.\n", False)]
    assert pol.prompt([Turn("".join(t.text for t in history), False)]) == pol.prompt(history)


def test_length_buckets_cover_every_prompt_once(tok, model):
    pol = LMPolicy(model, tok, Decoding(max_new_tokens=4), max_context_tokens=64, batch_size=5)
    assert len(LMPolicy(model, tok, max_context_tokens=64, batch_size=5,
                        pad_budget=float("inf"))._chunks([1, 50, 2, 60])) == 1
    lengths = [3, 40, 4, 41, 39, 5, 3, 60, 2, 38, 38, 38, 38, 38, 38]
    chunks = pol._chunks(lengths)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for c in chunks:
        assert len(c) <= 5
        widths = [lengths[i] for i in c]
        assert len(c) == 1 or max(widths) * len(c) <= 1.25 * sum(widths)


def test_rows_finishing_at_different_steps_match_one_by_one(tok, model):
    """Finished rows leave the batch (and the KV cache) mid-generation; the others go on
    exactly as if generated alone."""
    obs = ["Say something 0.\n", "You said hello there.\n", "Bye.\n", "go left\n", "stop\n",
           "Say something 1.\nYou said go left.\n"]
    assert_rows_finish_like_one_by_one(model, tok, obs)


def test_other_architectures_left_padding_and_cache(tok):
    """Any HF causal LM: a rotary-position decoder (Llama) batches and caches exactly too."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)).eval()
    obs = ["Say something 0.\n", "You said hello there.\nYou said go left.\nBye.\n", "x\n"]

    def run(**kw):
        return LMPolicy(llama, tok, Decoding(greedy=True, max_new_tokens=5), max_context_tokens=64,
                        pad_budget=float("inf"), **kw).act(obs)

    assert run() == run(batch_size=1) == run(use_cache=False)
