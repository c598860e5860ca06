"""`lmrlgym play` as a newcomer meets it: rules first, penalties explained, secrets revealed."""

import importlib
import io
import os
import select
import subprocess
import sys
import time

import pytest

import lmrlgym
from lmrlgym.eval.normalize import PROJECT, score
from lmrlgym.play import AGENT_VIEW_END, AGENT_VIEW_START, play


def play_typed(monkeypatch, capsys, task, lines, **kw):
    """Play `task` with `lines` as the typed input; return everything printed."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    play(task, **kw)
    return capsys.readouterr().out


def test_rules_and_examples_come_before_the_first_turn(monkeypatch, capsys):
    out = play_typed(monkeypatch, capsys, "Wordle-v0", [], seed=0)
    rules, _, game = out.partition("--- Wordle-v0, seed 0 ---")
    assert game, out
    assert "five-letter word" in rules and "Examples: slate" in rules
    assert ":help" in rules and ":quit" in rules
    assert game.startswith("\nWordle:\n")


@pytest.mark.parametrize("task", lmrlgym.envs.TASK_IDS)
def test_every_task_has_rules_with_an_action_format(task):
    module, _, name = lmrlgym.spec(task).entry_point.partition(":")
    env_class = getattr(importlib.import_module(module), name)
    assert "Action:" in env_class.play_help and "Reward" in env_class.play_help


def test_the_rule_examples_are_valid_actions():
    wordle = lmrlgym.make("Wordle-v0")
    wordle.reset(seed=0)
    assert not wordle.step("slate")[4]["illegal"]  # the example is in the default word list


def test_an_invalid_word_is_explained_but_the_agent_sees_the_plain_feedback(monkeypatch, capsys):
    env = lmrlgym.make("Wordle-v0")
    env.reset(seed=0)
    obs, reward, *_, info = env.step("xyzzy")
    assert obs == "Wordle:\nx y z z y\n\n" and reward == -1  # the usual empty feedback line
    assert info["illegal_reason"] == "'xyzzy' is not one of the 431 allowed words"
    obs, *_, info = env.step("abc")
    assert obs.endswith("\nabc\n\n") and "five letters" in info["illegal_reason"]

    out = play_typed(monkeypatch, capsys, "Wordle-v0", ["xyzzy", "abc"], seed=0)
    assert "> xyzzy\n\n  illegal action: 'xyzzy' is not one of the 431 allowed words\n" in out
    assert "illegal action: a guess is five letters a-z, not 'abc'" in out


def test_a_maze_typo_says_which_moves_exist(monkeypatch, capsys):
    out = play_typed(monkeypatch, capsys, "Maze-FO-v0", ["help", "move up"], seed=0)
    assert "illegal action: not a move: move up, move down, move left, move right" in out
    assert out.count("illegal action") == 1  # the legal move is not flagged


def test_meta_commands_never_reach_the_env(monkeypatch, capsys):
    out = play_typed(monkeypatch, capsys, "Maze-FO-v0", [":help", ":nope", "", ":quit", "move up"],
                     seed=0)
    assert out.count("Action: move up") == 2  # the rules, then :help
    assert "unknown meta-command ':nope'" in out
    assert "[reward" not in out  # nothing was stepped, not even the line after :quit
    assert "--- quit after 0 actions; return +0 ---" in out


def test_the_end_reveals_the_secret_the_return_and_the_score(monkeypatch, capsys):
    env = lmrlgym.make("Wordle-v0")
    word = env.reset(seed=5)[1]["hidden_word"]
    out = play_typed(monkeypatch, capsys, "Wordle-v0", ["xyzzy", word], seed=5)
    assert "--- terminated after 2 actions; return -1; success True ---" in out
    assert f"\nhidden word: {word}\n" in out
    assert f"normalised score {score(-1.0, PROJECT['Wordle-v0']):.1f} (0 = return -6" in out


def test_quitting_twenty_questions_reveals_the_object(monkeypatch, capsys):
    env = lmrlgym.make("TwentyQuestions-v0")
    item = env.reset(seed=3)[1]["item"]
    out = play_typed(monkeypatch, capsys, "TwentyQuestions-v0", ["Is it alive?", ":quit"],
                     seed=3)
    assert "--- quit after 1 action; return -1 ---" in out
    assert out.endswith(f"item: {item}\n")


def test_car_dealer_reveals_the_buyer_and_the_deal():
    out = subprocess.run(
        [sys.executable, "-m", "lmrlgym", "play", "CarDealer-v0", "--seed", "1", "--policy",
         "car-seller"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    env = lmrlgym.make("CarDealer-v0")
    persona = env.reset(seed=1)[1]["persona"]
    reveal = out.stdout.split("--- terminated")[1]
    assert f"type {persona['type']}" in reveal and f"budget {persona['budget']}" in reveal
    assert "decision: accept True, msrp " in reveal and "buy price " in reveal
    assert "normalised score" in reveal


def test_agent_view_prints_exactly_the_observations(monkeypatch, capsys):
    actions = ["move up", "help", "move left"]
    out = play_typed(monkeypatch, capsys, "Maze-PO-v0", actions, seed=2, show_agent_view=True)
    env = lmrlgym.make("Maze-PO-v0")
    expected = [env.reset(seed=2)[0]] + [env.step(a)[0] for a in actions]
    views = [block.split(AGENT_VIEW_END)[0].removeprefix("\n")
             for block in out.split(AGENT_VIEW_START)[1:]]
    assert views == expected
    assert expected[-1].count("\n") == 7  # PO: the growing transcript, not just the new line


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_arrow_keys_edit_the_line_and_recall_history():
    """In a real terminal: left arrow fixes a typo, up arrow repeats the last line."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmrlgym", "play", "Maze-FO-v0", "--seed", "0"],
        stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"},
        close_fds=True)
    os.close(slave)
    seen = b""

    def wait_for(marker: bytes, count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while seen.count(marker) < count and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    return

    try:
        wait_for(b"> ", 1)
        os.write(master, b"mve up" + b"\x1b[D" * 5 + b"o\r")  # fix "mve" into "move"
        wait_for(b"[reward", 1)
        os.write(master, b"\x1b[A\r")  # recall "move up"
        wait_for(b"[reward", 2)
        os.write(master, b":quit\r")
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(master)
    text = seen.decode(errors="replace")
    assert "[reward -1, return -1]" in text and "[reward -1, return -2]" in text, text
    assert "illegal" not in text
