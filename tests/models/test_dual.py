"""DualLM: the policy's logits and the value trunk's hidden states through LMPolicy, with both
KV caches kept in step (rows dropping out, rows repeated)."""

import pytest
import torch

from lmrlgym.models.decoding import Decoding
from lmrlgym.models.dual import DualLM
from lmrlgym.models.factory import build_model
from lmrlgym.models.policy import LMPolicy
from lmrlgym.models.tokenizer import train_tokenizer
from tests.models.test_policy import TEXTS
from tests.models.toy import assert_rows_finish_like_one_by_one

OBS = ["Say something 0.\n", "You said hello there.\n", "Bye.\n", "go left\n", "stop\n",
       "Say something 1.\nYou said go left.\n"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def dual(tok):
    models = []
    for seed in (0, 1):  # two different trunks
        torch.manual_seed(seed)
        models.append(build_model("gpt2-tiny", tok, dropout=0.0, n_positions=256).eval())
    return DualLM(*models)


def test_the_hook_gets_the_policy_logits_and_the_value_trunk_state(tok, dual):
    seen = []

    def adjust(h, logits):
        seen.append((h, logits))
        return logits

    pol = LMPolicy(dual, tok, Decoding(max_new_tokens=1), max_context_tokens=64,
                   logits_adjust=adjust)
    pol.act([OBS[0]])
    ids = torch.tensor([pol.last.prompt_ids[0]])
    h, logits = seen[0]
    with torch.no_grad():  # the same numbers up to the kernels' float noise
        assert torch.allclose(logits, dual.policy(ids).logits[:, -1, : len(tok)], atol=1e-5)
        assert torch.allclose(h, dual.value.base_model(ids).last_hidden_state[:, -1], atol=1e-5)
    assert not torch.allclose(dual.value.lm_head(h)[:, : len(tok)], logits)  # not the policy's


def test_rows_finishing_at_different_steps_match_one_by_one(tok, dual):
    """Both caches drop finished rows together: batched, cached generation equals row-by-row
    and uncached generation."""
    assert_rows_finish_like_one_by_one(dual, tok, OBS)


def test_repeated_and_selected_cache_rows_continue_like_those_prompts(dual):
    ids = torch.tensor([[10, 11, 12], [13, 14, 15]])
    nxt = torch.tensor([[5], [6], [7], [8], [9], [10]])  # one new token per repeated row
    full = dual(torch.cat([ids.repeat_interleave(3, 0), nxt], 1), output_hidden_states=True)
    for kept in (torch.arange(6), torch.tensor([4, 1])):
        cache = dual(ids, use_cache=True).cache
        cache.batch_repeat_interleave(3)  # rows 0, 0, 0, 1, 1, 1
        cache.batch_select_indices(kept)
        step = dual(nxt[kept], cache=cache, use_cache=True, output_hidden_states=True)
        assert torch.allclose(step.logits[:, -1], full.logits[kept, -1], atol=1e-5)
        assert torch.allclose(step.hidden_states[-1][:, -1], full.hidden_states[-1][kept, -1],
                              atol=1e-5)
