"""Wordle (docs/tasks.md §4): feedback rule, golden transcript, invalid guesses, modes, vocabularies."""

import numpy as np
import pytest

import lmrlgym
from lmrlgym.core import Turn
from lmrlgym.data.policies import make_policy
from lmrlgym.envs.wordle import (
    Knowledge,
    WordleEnv,
    feedback_codes,
    feedback_marks,
    feedback_text,
    letter_codes,
    load_vocabulary,
    marks_code,
)


# --- the feedback rule, against hand-computed marks ---------------------------------------
@pytest.mark.parametrize(
    ("guess", "answer", "marks"),
    [
        ("speed", "abide", "b b y b y"),  # the second e finds no unused e
        ("eerie", "there", "y b y b g"),  # the green e uses one copy, the first e the other
        ("geese", "hedge", "y g b b g"),  # docs/tasks.md §4: the third e is black
        ("slate", "hedge", "b b b b g"),
        ("llama", "hello", "y y b b b"),
        ("hello", "llama", "b b y y b"),
        ("robot", "floor", "y y b g b"),
        ("sassy", "essay", "y y g b g"),
        ("hedge", "hedge", "g g g g g"),
    ],
)
def test_feedback_marks(guess, answer, marks):
    assert feedback_text(guess, answer) == marks


def test_vectorised_feedback_matches_the_rule():
    vocab = load_vocabulary("official")
    rng = np.random.default_rng(0)
    guesses = [vocab.answers[i] for i in rng.choice(len(vocab.answers), 8, replace=False)]
    guesses += ["eerie", "llama", "sassy", "mamma"]
    codes = feedback_codes(letter_codes(guesses), vocab.letters)
    expected = [[marks_code(feedback_marks(g, a)) for a in vocab.answers] for g in guesses]
    assert codes.tolist() == expected


# --- golden transcript ------------------------------------------------------------------------
def test_golden_transcript_hedge():
    env = lmrlgym.make("Wordle-v0")
    obs, info = env.reset(seed=0, options={"word": "hedge"})
    assert obs == "Wordle:\n" and info["attempts"] == 0 and info["valid"] is None
    out = [env.step(a) for a in ["s l a t e", "q w e r t", "g e e s e"]]
    assert out[-1][0] == "Wordle:\ns l a t e\nb b b b g\nq w e r t\n\ng e e s e\ny g b b g\n"
    assert [o[1] for o in out] == [-1.0, -1.0, -1.0]
    assert [o[4]["valid"] for o in out] == [True, False, True]
    assert [o[4]["illegal"] for o in out] == [False, True, False]
    obs, reward, terminated, truncated, info = env.step("h e d g e")
    assert (reward, terminated, truncated, info["success"]) == (0.0, True, False, True)
    assert info["turns"] == [
        Turn("Wordle:\n", False, 0.0),
        Turn("s l a t e\n", True, -1.0),
        Turn("b b b b g\n", False, 0.0),
        Turn("q w e r t\n", True, -1.0),
        Turn("\n", False, 0.0),
        Turn("g e e s e\n", True, -1.0),
        Turn("y g b b g\n", False, 0.0),
        Turn("h e d g e\n", True, 0.0),
        Turn("g g g g g\n", False, 0.0),
    ]
    assert sum(t.reward for t in info["turns"]) == -3.0
    assert info["hidden_word"] == "hedge" and info["attempts"] == 4 and info["consistent"] == 1
    with pytest.raises(RuntimeError):
        env.step("h e d g e")


def test_consistent_count_matches_brute_force():
    env = lmrlgym.make("Wordle-v0")
    env.reset(seed=0, options={"word": "hedge"})
    info = env.step("slate")[4]
    expected = [w for w in env.vocab.answers if feedback_text("slate", w) == "b b b b g"]
    assert info["consistent"] == len(expected) and env.consistent_answers() == expected


# --- actions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["solar", "SOLAR", "s o l a r", "  S o L a R  \n ignored"])
def test_spaced_and_unspaced_guesses_are_the_same(action):
    env = lmrlgym.make("Wordle-v0")
    env.reset(seed=0, options={"word": "sonar"})
    obs, reward, _, _, info = env.step(action)
    assert info["turns"][-2].text == "s o l a r\n" and info["valid"]
    assert obs.endswith("s o l a r\ng g b g g\n") and reward == -1.0


@pytest.mark.parametrize(
    ("action", "stored"),
    [
        ("qwert", "q w e r t\n"),  # five letters, not an allowed word
        ("Q W E R T", "q w e r t\n"),
        ("hello world", "hello world\n"),  # not five letters: stored as normalised
        ("a1b2c", "a1b2c\n"),
        ("", "\n"),
        ("héllo", "héllo\n"),
    ],
)
def test_invalid_guesses(action, stored):
    env = lmrlgym.make("Wordle-v0")
    env.reset(seed=0, options={"word": "hedge"})
    obs, reward, terminated, _, info = env.step(action)
    assert obs == "Wordle:\n" + stored + "\n"
    assert (reward, terminated, info["valid"], info["illegal"]) == (-1.0, False, False, True)
    assert info["attempts"] == 1 and info["consistent"] == len(env.vocab.answers)


def test_six_attempts_then_loss():
    env = lmrlgym.make("Wordle-v0")
    env.reset(seed=0, options={"word": "hedge"})
    rewards = []
    for i, guess in enumerate(["slate", "xxxxx", "crane", "solar", "pence", "nymph"]):
        _, reward, terminated, truncated, info = env.step(guess)
        rewards.append(reward)
        assert terminated == (i == 5) and not truncated
    assert sum(rewards) == -6.0 and not info["success"] and info["attempts"] == 6


def test_invalid_reward_kwarg():
    env = lmrlgym.make("Wordle-v0", invalid_reward=-10.0)
    env.reset(seed=0, options={"word": "hedge"})
    rewards = [env.step("zzzzz")[1] for _ in range(6)]
    assert rewards == [-10.0] * 6 and env.done and env.return_range == (-60.0, 0.0)


def test_solving_on_attempt_k_returns_minus_k_minus_1():
    env = lmrlgym.make("Wordle-v0")
    env.reset(seed=0, options={"word": "hedge"})
    assert env.step("hedge")[1:3] == (0.0, True)


# --- resets and options -----------------------------------------------------------------------
def test_reset_options_and_seeding():
    env = lmrlgym.make("Wordle-v0")
    assert env.reset(options={"index": 0})[1]["hidden_word"] == "elect"  # file order
    assert env.reset(options={"word": " HEDGE "})[1]["hidden_word"] == "hedge"
    words = [env.reset(seed=s)[1]["hidden_word"] for s in range(50)]
    assert words == [env.reset(seed=s)[1]["hidden_word"] for s in range(50)]
    assert len(set(words)) > 30
    for bad in [{"word": "qwert"}, {"index": 431}, {"index": -1}, {"index": "3"},
                {"word": "hedge", "index": 1}, {"target": "hedge"}]:  # fmt: skip
        with pytest.raises(ValueError):
            env.reset(options=bad)
    fixed = lmrlgym.make("Wordle-v0", hidden_word="hedge")
    assert {fixed.reset(seed=s)[1]["hidden_word"] for s in range(5)} == {"hedge"}
    with pytest.raises(ValueError, match="hidden_word"):
        lmrlgym.make("Wordle-v0", hidden_word="qwert")
    assert WordleEnv.answer_resets()[:2] == [(0, {"index": 0}), (1, {"index": 1})]
    assert len(WordleEnv.answer_resets()) == 431


# --- vocabularies -----------------------------------------------------------------------------
def test_official_lists():
    env = lmrlgym.make("Wordle-v0", answers="official", guesses="official_guess")
    assert len(env.vocab.answers) == 2315 and len(env.vocab.allowed) == 12972
    env.reset(seed=0, options={"word": "hedge"})
    obs, reward, *_, info = env.step("aahed")  # an allowed guess that is not an answer
    assert info["valid"] and obs.endswith("a a h e d\n" + feedback_text("aahed", "hedge") + "\n")
    assert info["consistent"] == sum(
        feedback_text("aahed", w) == feedback_text("aahed", "hedge") for w in env.vocab.answers
    )
    small = lmrlgym.make("Wordle-v0")
    small.reset(seed=0)
    assert small.step("aahed")[4]["valid"] is False  # without `guesses`, allowed = answers


def test_word_list_from_path_and_list(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("Crane\ncrank\n\nplumb\n")
    env = lmrlgym.make("Wordle-v0", answers=str(path), guesses=["aahed"])
    assert env.vocab.answers == ("crane", "crank", "plumb")
    assert env.vocab.allowed == {"crane", "crank", "plumb", "aahed"}
    with pytest.raises(ValueError, match="five letters"):
        lmrlgym.make("Wordle-v0", answers=["crane", "toolong"])
    with pytest.raises(ValueError, match="neither"):
        lmrlgym.make("Wordle-v0", answers="no_such_list")


# --- the original's resampling mode -------------------------------------------------------------
def test_knowledge_rules():
    k = Knowledge()
    k.update(letter_codes(["crane"])[0], letter_codes(["crank"])[0])
    assert k.marks_text(letter_codes(["crane"])[0]) == "g g g g b\n"
    assert k.consistent(letter_codes(["crane", "crank", "plumb"])).tolist() == [False, True, False]
    k = Knowledge()
    k.update(letter_codes(["speed"])[0], letter_codes(["abide"])[0])
    # No duplicate counting: both e's are yellow (the standard rule marks the second black).
    assert k.marks_text(letter_codes(["speed"])[0]) == "b b y y y\n"
    # Words must contain e and d, not at the guessed positions, and no s or p.
    mask = k.consistent(letter_codes(["abide", "edged", "dense", "eddie"]))
    assert mask.tolist() == [True, False, False, True]


def test_resample_mode():
    for seed in range(30):
        env = lmrlgym.make("Wordle-v0", hidden_word="resample")
        obs, info = env.reset(seed=seed)
        assert info["hidden_word"] is None
        rng = np.random.default_rng(seed)
        done = False
        while not done:
            guess = env.consistent_answers()[int(rng.integers(info["consistent"]))]
            obs, reward, done, _, info = env.step(guess)
            target = info["hidden_word"]
            # Per position: g = same letter, b = letter absent from the target, else y.
            marks = " ".join(
                "g" if g == t else "b" if g not in target else "y"
                for g, t in zip(guess, target, strict=True)
            )
            assert obs.endswith(marks + "\n")
            assert target in env.consistent_answers()
            solved = info["consistent"] == 1 and guess == target
            assert info["success"] == solved and reward == (0.0 if solved else -1.0)
    with pytest.raises(ValueError, match="resample"):
        env.reset(options={"word": "hedge"})


# --- the scripted upper reference ---------------------------------------------------------------
def test_greedy_opens_with_slate_and_averages_minus_1_94():
    env, policy = lmrlgym.make("Wordle-v0"), make_policy("wordle-greedy", "Wordle-v0")
    returns = []
    for seed, options in WordleEnv.answer_resets():
        obs, info = env.reset(seed=seed, options=options)
        first, done, ret = None, False, 0.0
        while not done:
            action = policy.act(env, obs, info, None)
            first = first or action
            obs, reward, done, _, info = env.step(action)
            ret += reward
        assert first == "s l a t e\n" and info["success"]
        returns.append(ret)
    assert np.mean(returns) == pytest.approx(-1.935, abs=0.005)


def test_project_constants_max_matches_the_protocol():
    """PROJECT max = wordle-greedy's mean over seeds 0-4095 (scripts/compute_constants.py)."""
    from lmrlgym.eval.normalize import PROJECT
    from scripts.compute_constants import protocol_returns

    policy = make_policy("wordle-greedy", "Wordle-v0")
    returns = protocol_returns("Wordle-v0", policy, [(i, {}) for i in range(4096)])
    assert round(float(returns.mean()), 3) == PROJECT["Wordle-v0"].max
    assert PROJECT["Wordle-v0"].min == -6.0
    # The dataset average is re-measured (on fewer episodes) in tests/data/test_maze_wordle_data.
    assert PROJECT["Wordle-v0"].avg == pytest.approx(-4.09, abs=0.05)
