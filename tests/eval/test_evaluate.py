"""evaluate(): protocol episodes, summary statistics, files, and every kind of policy."""

import json

import numpy as np
import pytest
import torch

from lmrlgym.data.io import read_episodes
from lmrlgym.data.policies import make_policy
from lmrlgym.eval.evaluate import (
    bootstrap_ci,
    evaluate,
    evaluation_resets,
    format_summary_table,
    summarize,
)
from lmrlgym.models.decoding import Decoding
from lmrlgym.models.factory import build_model
from lmrlgym.models.policy import LMPolicy
from lmrlgym.models.tokenizer import train_tokenizer
from tests.models.toy import EchoEnv, MenuEnv, ScriptedEcho


def test_scripted_text_policy_known_return(tmp_path):
    res = evaluate(ScriptedEcho(["hello\n", "bad\n", "stop\n"]), EchoEnv, 7, out_dir=tmp_path,
                   max_concurrent=3)
    s = res.summary
    # Every episode: -1 (hello) - 2 (bad, illegal) + 1 (stop) = -2 in 3 agent turns.
    assert s["episodes"] == 7 and s["mean_return"] == -2.0 and s["ci95"] == [-2.0, -2.0]
    assert s["success_rate"] == 1.0 and s["episode_length"] == 3.0
    assert s["illegal_rate"] == pytest.approx(1 / 3) and s["stderr"] == 0.0
    assert s["normalized_score"] is None and s["truncated_action_rate"] is None
    # Episodes come back in protocol order with the protocol's seeds and options.
    assert [ep.seed for ep in res.episodes] == list(range(7))
    assert [ep.reset_options["start"] for ep in res.episodes] == [0, 1, 2, 0, 1, 2, 0]
    assert res.episodes[1].turns[0].text == "Say something 1.\n"
    saved = json.loads((tmp_path / "eval_summary.json").read_text())
    for key in ("mean_return", "ci95", "success_rate", "normalized_score", "episodes"):
        assert saved[key] == s[key]
    episodes, skipped = read_episodes(tmp_path / "episodes.jsonl")
    assert skipped == 0 and [ep.ret for ep in episodes] == [-2.0] * 7
    assert res.metrics["eval/return"] == -2.0
    table = format_summary_table(s)
    assert "-2.000" in table and "33.3%" in table


def test_truncated_episodes_and_seed_offset():
    res = evaluate(ScriptedEcho(["go\n"]), EchoEnv, 4, seed=100)
    assert all(ep.truncated and not ep.terminated for ep in res.episodes)
    assert res.summary["mean_return"] == -4.0 and res.summary["success_rate"] == 0.0
    assert [ep.seed for ep in res.episodes] == [100, 101, 102, 103]
    assert evaluation_resets(EchoEnv, 2, seed=5) == [(5, {"start": 0}), (6, {"start": 1})]


def test_bad_policies_and_arguments():
    class Short:
        def act(self, observations):
            return observations[:1]

    with pytest.raises(RuntimeError, match="1 actions for 3"):
        evaluate(Short(), EchoEnv, 3)
    with pytest.raises(TypeError, match="neither"):
        evaluate(object(), EchoEnv, 3)
    with pytest.raises(ValueError, match="positive"):
        evaluate(ScriptedEcho(["stop\n"]), EchoEnv, 0)
    with pytest.raises(KeyError, match="unknown task id"):
        evaluate(ScriptedEcho(["stop\n"]), "Maze-F0-v0", 1)


def test_bootstrap_ci_is_seeded_and_correct():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=400)
    lo, hi = bootstrap_ci(x, seed=1)
    assert (lo, hi) == bootstrap_ci(x, seed=1)
    assert lo < x.mean() < hi
    # A normal-theory interval of the mean is ±1.96 SE; the bootstrap agrees closely.
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    # Reference computation with the same generator.
    rng = np.random.default_rng(1)
    means = x[rng.integers(0, len(x), size=(10_000, len(x)))].mean(1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert bootstrap_ci([5.0], seed=0) == (5.0, 5.0)


def test_summary_normalisation_on_a_known_task():
    from lmrlgym.core import Episode, Turn

    eps = [Episode("Maze-FO-v0", [Turn("a\n", False), Turn("move up\n", True, r)], True, False,
                   r == 0) for r in (-6.84, -6.84)]
    s = summarize(eps, "Maze-FO-v0")
    assert s["normalized_score"] == pytest.approx(100.0)
    assert s["normalized_score_paper"] == pytest.approx(100.0)
    assert s["normalization"]["paper"]["min"] == -101


def test_maze_optimal_covers_every_start_and_scores_100():
    policy = make_policy("maze-optimal", "Maze-FO-v0")
    res = evaluate(policy, "Maze-FO-v0", 25)
    starts = {tuple(ep.reset_options["start"]) for ep in res.episodes}
    assert len(starts) == 25
    assert res.summary["success_rate"] == 1.0 and res.summary["illegal_rate"] == 0.0
    assert res.summary["mean_return"] == pytest.approx(-6.84)
    assert res.summary["normalized_score"] == pytest.approx(100.0)
    assert res.summary["policy"] == "maze-optimal"


def test_lm_policy_on_wordle(tmp_path):
    texts = ["crane\n", "slate\n", "b y g b b\n", "Guess a five-letter word.\n"] * 20
    tok = train_tokenizer(texts, vocab_size=280)
    torch.manual_seed(0)
    model = build_model("gpt2-tiny", tok, dropout=0.0, n_positions=128)
    policy = LMPolicy(model, tok, Decoding(max_new_tokens=6, seed=0), max_context_tokens=96)
    a = evaluate(policy, "Wordle-v0", 3, seed=0, out_dir=tmp_path)
    b = evaluate(policy, "Wordle-v0", 3, seed=0)
    assert [ep.turns for ep in a.episodes] == [ep.turns for ep in b.episodes]  # reseeded per call
    s = a.summary
    assert 0.0 <= s["truncated_action_rate"] <= 1.0 and s["decoding"]["temperature"] == 1.0
    assert s["episodes"] == 3 and s["normalized_score_paper"] is not None
    assert s["illegal_rate"] > 0.5  # an untrained model rarely spells a valid word


def test_lm_policy_on_maze_fo_sees_env_windows():
    texts = ["move up\n", "move down\n", "The goal is at position 8, 6.\n"] * 20
    tok = train_tokenizer(texts, vocab_size=280)
    torch.manual_seed(1)
    model = build_model("gpt2-tiny", tok, dropout=0.0, n_positions=128)
    policy = LMPolicy(model, tok, Decoding(max_new_tokens=1, seed=0), max_context_tokens=64)
    res = evaluate(policy, "Maze-FO-v0", 1)
    s = res.summary
    assert s["episodes"] == 1 and s["truncated_action_rate"] > 0.5
    # Maze-FO shows only the newest observation: every prompt is BOS + one env text.
    obs_ids = [tok.encode(t.text, add_special_tokens=False) for t in res.episodes[-1].turns[-3:-2]]
    assert policy.last.prompt_ids[0][1:] in obs_ids or len(policy.last.prompt_ids[0]) == 64
    assert sum(ep.n_actions for ep in res.episodes) == policy.n_actions


@pytest.fixture(scope="module")
def menu_lm():
    texts = ["hello there\n", "go left\n", "stop\n", "Say something 1.\n", "You said go left.\n"] * 20
    tok = train_tokenizer(texts, vocab_size=280)
    torch.manual_seed(2)
    return build_model("gpt2-tiny", tok, dropout=0.0, n_positions=128), tok


@pytest.mark.parametrize("decode", ["sample", "rerank", "constrained"])
def test_lm_policy_decodes_over_the_env_action_set(menu_lm, decode):
    model, tok = menu_lm
    policy = LMPolicy(model, tok, Decoding(max_new_tokens=12, decode=decode),
                      max_context_tokens=64)
    res = evaluate(policy, MenuEnv, 6, max_concurrent=4)
    said = {t.text for ep in res.episodes for t in ep.turns if t.is_action}
    menu = {a + "\n" for a in MenuEnv.MENU}
    dec = res.summary["decoding"]
    assert dec["decode"] == decode
    if decode == "sample":  # an untrained model rarely says a menu item by itself
        assert not said <= menu and "free_turn_rate" not in dec
    else:
        assert said <= menu and dec["free_turn_rate"] == 0.0
        assert res.summary["truncated_action_rate"] == 0.0
        assert f"{decode}{' by logprob' if decode == 'rerank' else ''} over the legal actions" \
            in format_summary_table(res.summary)

def test_decoding_over_actions_needs_an_env_that_gives_them(menu_lm, tmp_path):
    model, tok = menu_lm
    with pytest.raises(ValueError, match="needs the legal actions, but EchoEnv's env gives none"):
        evaluate(LMPolicy(model, tok, Decoding(decode="constrained"), max_context_tokens=64),
                 EchoEnv, 2, out_dir=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()  # failed before any file was written
