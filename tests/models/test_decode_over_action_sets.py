"""Decoding over known action sets: rerank scores (hand-computed, and equal to separate full
forwards per candidate), seeded candidate sampling, the value score, and constrained decoding
that only ever spells a legal action."""

from collections import Counter

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmrlgym.core import Turn
from lmrlgym.models.action_sets import ActionSetCache, build_action_set
from lmrlgym.models.decoding import Decoding
from lmrlgym.models.factory import build_model
from lmrlgym.models.policy import LMPolicy
from lmrlgym.models.tokenizer import train_tokenizer
from tests.models.toy import toy_tokenizer

TEXTS = ["move up\n", "move upward\n", "go\n", "go left\n", "You are at 1,2.\n",
         "Say something 0.\n", "You said go left.\n"] * 40
SHARED_PREFIXES = ("move up", "move upward", "go", "go left")


@pytest.fixture(scope="module")
def lm():
    """A random tiny GPT-2 over a BPE that has seen the actions with shared prefixes."""
    tok = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    return tok, build_model("gpt2-tiny", tok, dropout=0.0, n_positions=256).eval()


def contexts(observations):
    return [[Turn(o, False)] for o in observations]


# --- a model whose next-token distribution is known by hand --------------------------------

TOY_LOGITS = {"go": 2.0, " left": 3.0, "\n": 1.0, "stop": 0.5, "right": 1.5}
TOY_SET = ("go", "go left", "stop", "right")


@pytest.fixture(scope="module")
def toy():
    """GPT-2 over the word-level toy tokenizer whose final layer norm outputs a constant
    (weight 0, bias e_0), so every position's logits are column 0 of the tied embedding:
    ``TOY_LOGITS`` for those words, 0 for the rest, whatever the context."""
    t = toy_tokenizer()
    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(t), n_positions=64, n_embd=8, n_layer=1,
                                   n_head=2, bos_token_id=t.bos_token_id,
                                   eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id)).eval()
    with torch.no_grad():
        m.transformer.ln_f.weight.zero_()
        m.transformer.ln_f.bias.zero_()
        m.transformer.ln_f.bias[0] = 1.0
        column = torch.zeros(len(t))
        for word, z in TOY_LOGITS.items():
            column[t.convert_tokens_to_ids(word)] = z
        m.transformer.wte.weight[:, 0] = column
    return t, m


def hand_logprob(t, action):
    """Σ log p over the action's tokens and its newline, specials excluded from the softmax."""
    z = {w: TOY_LOGITS.get(w, 0.0) for w in t.get_vocab() if t.convert_tokens_to_ids(w)
         not in t.all_special_ids}
    log_norm = torch.logsumexp(torch.tensor(list(z.values())), 0).item()
    words = [t.convert_ids_to_tokens(i) for i in t.encode(action + "\n", add_special_tokens=False)]
    return sum(z[w] - log_norm for w in words)


def test_rerank_picks_the_highest_hand_computed_logprob(toy):
    t, m = toy
    pol = LMPolicy(m, t, Decoding(greedy=True, max_new_tokens=4, decode="rerank"),
                   max_context_tokens=16)
    out = pol.act_turns(contexts(["Q: x\n", "Q: x y z\n"]), window=False,
                        action_sets=[TOY_SET, TOY_SET[::-1]])
    hand = [hand_logprob(t, a) for a in TOY_SET]
    best = TOY_SET[max(range(len(TOY_SET)), key=hand.__getitem__)]
    assert best == "go"  # "go left" has the likelier second word but pays for a third token
    assert out == [best + "\n"] * 2
    assert pol.last.scores[0] == pytest.approx(hand, abs=1e-5)
    assert pol.last.scores[1] == pytest.approx(hand[::-1], abs=1e-5)
    assert pol.last.action_ids[0] == t.encode("go\n", add_special_tokens=False)
    assert pol.last.truncated == [False, False] and pol.decoding["decode"] == "rerank"


def test_rerank_samples_softmax_of_scores_with_the_seeded_generator(toy):
    t, m = toy
    hand = torch.tensor([hand_logprob(t, a) for a in TOY_SET])

    def draws(seed, temperature=1.0):
        pol = LMPolicy(m, t, Decoding(temperature=temperature, max_new_tokens=4, seed=seed,
                                      decode="rerank"),
                       max_context_tokens=16, batch_size=600, candidate_batch=2400)
        return pol.act_turns(contexts(["Q: x\n"] * 600), window=False, action_sets=[TOY_SET] * 600)

    first = draws(0)
    assert first == draws(0) and first != draws(1)
    for temperature in (1.0, 0.5):
        counts = Counter(first if temperature == 1.0 else draws(0, temperature))
        freq = torch.tensor([counts[a + "\n"] / 600 for a in TOY_SET])
        assert torch.allclose(freq, (hand / temperature).softmax(0).float(), atol=0.05)


def full_forward_scores(model, prompt, action_ids, adjust=None, score="logprob", banned=()):
    """The reference: one unbatched, uncached forward over prompt + candidate."""
    ids = torch.tensor([prompt + action_ids])
    out = model(ids, output_hidden_states=True)
    span = slice(len(prompt) - 1, len(prompt) - 1 + len(action_ids))
    ref = out.logits[0, span, : model.config.vocab_size].float()
    logits = adjust(out.hidden_states[-1][0, span], ref) if adjust else ref
    target = torch.tensor(action_ids)[:, None]
    if score == "value":
        return (logits - ref).gather(1, target).sum().item()
    logits = logits.index_fill(1, torch.tensor(sorted(banned)), float("-inf"))
    return logits.log_softmax(-1).gather(1, target).sum().item()


def value_adjust(model, beta=2.0):
    """A toy value head: ``logits + β · h W`` (a state-and-token dependent offset)."""
    w = torch.randn(model.config.n_embd, model.config.vocab_size, generator=torch.Generator().manual_seed(1))

    def adjust(h, logits):
        return logits + beta * (h @ w)[:, : logits.shape[1]]

    return adjust


@pytest.mark.parametrize("score,guided", [("logprob", False), ("logprob", True), ("value", True)])
def test_shared_cache_scores_equal_separate_full_forwards(lm, score, guided):
    tok, model = lm
    adjust = value_adjust(model) if guided else None
    sets = [SHARED_PREFIXES, ("go", "go left", "move upward"), ("move up",)]
    observations = ["You are at 1,2.\n", "Say something 0.\nYou are at 1,2.\nmove up\n", "go\n"]
    # candidate_batch=3 splits the 8 (prompt, candidate) rows across prompts and forwards.
    pol = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=8, decode="rerank",
                                        rerank_score=score),
                   max_context_tokens=64, logits_adjust=adjust, candidate_batch=3)
    out = pol.act_turns(contexts(observations), window=False, action_sets=sets)
    banned = set(tok.all_special_ids)
    for prompt, actions, scores, chosen in zip(pol.last.prompt_ids, sets, pol.last.scores, out,
                                               strict=True):
        ids = [tok.encode(a + "\n", add_special_tokens=False) for a in actions]
        expected = [full_forward_scores(model, prompt, i, adjust, score, banned) for i in ids]
        assert scores == pytest.approx(expected, abs=1e-4)
        assert chosen == actions[max(range(len(actions)), key=expected.__getitem__)] + "\n"
    # The emitted ids are the scored candidate's ids: what render() tokenizes for that turn.
    assert [tok.decode(i) for i in pol.last.action_ids] == out


def test_turn_score_is_beta_q_at_each_candidates_last_token(lm):
    # A turn-level backup trains Q at the action's last token toward r + γ V(s'), so "turn"
    # ranks the candidates by it; a toy readout Q = h W, V = h · 1 (V must not enter).
    tok, model = lm
    w = torch.randn(model.config.n_embd, model.config.vocab_size, generator=torch.Generator().manual_seed(2))
    readout = lambda h: (h @ w, h.sum(-1))  # noqa: E731
    sets = [SHARED_PREFIXES, ("go", "move upward")]
    observations = ["You are at 1,2.\n", "Say something 0.\n"]
    pol = LMPolicy(model, tok, Decoding(greedy=True, max_new_tokens=8, decode="rerank",
                                        rerank_score="turn"),
                   max_context_tokens=64, value_readout=readout, beta=3.0, candidate_batch=3)
    out = pol.act_turns(contexts(observations), window=False, action_sets=sets)
    for prompt, actions, scores, chosen in zip(pol.last.prompt_ids, sets, pol.last.scores, out,
                                               strict=True):
        expected = []
        for a in actions:
            ids = tok.encode(a + "\n", add_special_tokens=False)
            h = model(torch.tensor([prompt + ids[:-1]]), output_hidden_states=True).hidden_states[-1]
            expected.append(3.0 * readout(h[0, -1:])[0][0, ids[-1]].item())  # the newline's Q
        assert scores == pytest.approx(expected, abs=1e-4)
        assert chosen == actions[max(range(len(actions)), key=expected.__getitem__)] + "\n"
    with pytest.raises(ValueError, match="rerank_score='turn' needs a value-guided policy"):
        LMPolicy(model, tok, Decoding(decode="rerank", rerank_score="turn"), max_context_tokens=64)


def test_value_score_needs_value_heads_and_rerank(lm):
    tok, model = lm
    with pytest.raises(ValueError, match="value-guided policy"):
        LMPolicy(model, tok, Decoding(decode="rerank", rerank_score="value"), max_context_tokens=64)
    with pytest.raises(ValueError, match="only applies to decode='rerank'"):
        Decoding(decode="constrained", rerank_score="value")
    with pytest.raises(ValueError, match="top_k/top_p"):
        Decoding(top_k=5, decode="rerank")
    with pytest.raises(ValueError, match="decode must be one of"):
        Decoding(decode="beam")


# --- constrained decoding -------------------------------------------------------------------


def test_constrained_sampling_only_spells_legal_actions(lm):
    tok, model = lm
    def run(seed):
        pol = LMPolicy(model, tok, Decoding(temperature=2.0, max_new_tokens=8, seed=seed,
                                            decode="constrained"), max_context_tokens=64)
        out = pol.act_turns(contexts(["You are at 1,2.\n", "go\n"] * 100), window=False,
                            action_sets=[SHARED_PREFIXES] * 200)
        return out, pol

    out, pol = run(0)
    counts = Counter(out)
    assert set(counts) == {a + "\n" for a in SHARED_PREFIXES}  # all legal, each one reachable
    assert not any(pol.last.truncated) and pol.n_free == 0
    assert [tok.decode(i) for i in pol.last.action_ids] == out
    assert out == run(0)[0] and out != run(1)[0]
    # top-k and top-p act on the masked logits: top_k=1 is the constrained greedy choice.
    def act(**decoding):
        pol = LMPolicy(model, tok, Decoding(max_new_tokens=8, decode="constrained", **decoding),
                       max_context_tokens=64)
        return pol.act_turns(contexts(["go\n"]), False, [SHARED_PREFIXES])

    greedy, top1 = act(greedy=True), act(top_k=1)
    assert greedy == top1 and greedy[0] in counts


def test_constrained_greedy_follows_the_dominant_tokens(toy):
    t, m = toy

    def act(decode, sets):
        pol = LMPolicy(m, t, Decoding(greedy=True, max_new_tokens=4, decode=decode),
                       max_context_tokens=16)
        return pol.act_turns(contexts(["Q: x\n"] * len(sets)), window=False, action_sets=sets), pol

    # Free greedy repeats " left" (the largest logit) until max_new_tokens runs out.
    (free,), _ = act("sample", [TOY_SET])
    assert free == " left left left left\n"
    # Constrained: "go" beats "stop"/"right" as a first word, then " left" beats the newline;
    # the rerank of the same set prefers "go" (whole-action log-probabilities differ).
    out, pol = act("constrained", [TOY_SET, ("stop", "right"), None])
    assert out[:2] == ["go left\n", "right\n"]
    assert out[2] == free and pol.last.truncated == [False, False, True]  # None: free generation
    assert pol.n_free == 1


def test_action_set_tokenization_trie_and_cache(lm):
    tok, _ = lm
    stops = torch.tensor(["\n" in tok.decode([i]) for i in range(len(tok))])
    banned = frozenset(tok.all_special_ids)
    a = build_action_set(SHARED_PREFIXES + ("go",), tok, stops, banned, max_tokens=8)
    assert a.actions == SHARED_PREFIXES  # duplicates dropped, order kept
    assert a.ids == tuple(tuple(tok.encode(x + "\n", add_special_tokens=False)) for x in a.actions)
    # Walking the trie along each candidate's ids ends at a leaf; shared prefixes share nodes.
    for ids in a.ids:
        node = 0
        for i in ids:
            assert i in a.allowed[node].tolist()
            node = a.children[node][i]
        assert a.children[node] == {}
    assert len(a.children) < 1 + sum(len(i) for i in a.ids)
    cache = ActionSetCache(tok, stops, banned, max_tokens=8, size=2)
    first = cache(SHARED_PREFIXES)
    assert cache(list(SHARED_PREFIXES)) is first  # built once per distinct set
    cache(("go",))
    cache(("move up",))
    assert cache(SHARED_PREFIXES) is not first  # least recently used dropped beyond size
    for bad, match in [((), "empty action set"), (("go\nleft",), "holds a newline"),
                       (("move up " * 5,), "more than max_new_tokens=8")]:
        with pytest.raises(ValueError, match=match):
            build_action_set(bad, tok, stops, banned, max_tokens=8)
