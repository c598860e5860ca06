"""``TextEnv.action_set()``: exactly the actions each env accepts as legal in the current state.

Every member is stepped from a copy of the state (a deep copy, or a fresh env replaying the same
seed and actions) and must not be illegal; for Maze and Chess every accepted spelling is stored
as a member, and the alternatives outside the set are penalised.
"""

import copy
import itertools

import pytest

import lmrlgym
from lmrlgym.registry import spec
from tests.conftest import skip_if_missing

ILLEGAL_MAZE = ["move north", "jump", "move  up", "moveup", "go left", "", "move up please"]


def stored_action(info) -> str:
    return info["turns"][-2].text.removesuffix("\n")


def test_free_text_tasks_have_no_action_set():
    for task in ("TwentyQuestions-v0", "GuessCity-v0", "CarDealer-v0"):
        env = lmrlgym.make(task)
        _, info = env.reset(seed=0)
        assert env.action_set() is None and "action_set" not in info


@pytest.mark.parametrize("task", ["Maze-FO-v0", "Maze-PO-v0"])
def test_maze_action_set_is_the_four_moves(task):
    env = lmrlgym.make(task)
    moves = ("move up", "move down", "move left", "move right")
    for seed, options in spec(task).evaluation_resets(25):
        _, info = env.reset(seed=seed, options=options)
        assert env.action_set() == info["action_set"] == moves
        for action in moves:
            probe = copy.deepcopy(env)
            _, reward, _, _, info = probe.step(action)
            assert not info["illegal"] and reward in (-1.0, 0.0)
            assert stored_action(info) in probe.action_set()
        for action in ILLEGAL_MAZE:
            _, reward, _, _, info = copy.deepcopy(env).step(action)
            assert info["illegal"] and reward == -4.0
        # Other spellings the parser accepts are stored as members of the set.
        _, _, _, _, info = copy.deepcopy(env).step("  MOVE Left ")
        assert not info["illegal"] and stored_action(info) == "move left"


def test_wordle_action_set_is_the_cached_guess_vocabulary():
    env = lmrlgym.make("Wordle-v0")
    _, info = env.reset(seed=3)
    guesses = env.action_set()
    assert "action_set" not in info  # 431 words: too large for every info
    assert len(guesses) == len(env.vocab.allowed) == 431
    assert guesses == tuple(sorted(guesses)) and all(len(g) == 9 for g in guesses)
    assert env.action_set() is guesses  # cached, not rebuilt per call
    assert lmrlgym.make("Wordle-v0").action_set() is guesses  # shared by envs of one vocabulary
    probe = lmrlgym.make("Wordle-v0")
    for guess in guesses:  # each member from the same state (seed 3, no guess yet)
        probe.reset(seed=3)
        _, _, _, _, info = probe.step(guess)
        assert info["valid"] and not info["illegal"] and stored_action(info) == guess
    for bad in ("zzzzz", "s o l a", "solarr", ""):
        probe.reset(seed=3)
        assert probe.step(bad)[4]["illegal"]


def test_wordle_larger_guess_list():
    env = lmrlgym.make("Wordle-v0", guesses="official_guess")
    assert len(env.action_set()) == len(env.vocab.allowed) > 12_000
    assert "s o l a r" in env.action_set()


def chess_env(task: str):
    skip_if_missing(spec(task))
    return lmrlgym.make(task, opponent="random")


def white_uci_strings(board) -> list[str]:
    """Every from-to string (with each promotion piece) starting on a White piece."""
    import chess

    squares = [f + r for f in "abcdefgh" for r in "12345678"]
    own = [sq for sq in squares if board.color_at(chess.parse_square(sq)) == chess.WHITE]
    plain = [a + b for a, b in itertools.product(own, squares) if a != b]
    return plain + [m + p for m in plain if m[3] == "8" for p in "qrbn"]


@pytest.mark.parametrize("task", ["Chess-v0", "Endgames-v0"])
def test_chess_action_set_is_exactly_the_legal_moves(task):
    from lmrlgym.envs.chess import parse_move, spaced

    env = chess_env(task)
    _, info = env.reset(seed=0)
    for ply in range(4):  # the start position and the next three (random replies)
        moves = env.action_set()
        assert moves == info["action_set"] and len(moves) == len(set(moves)) > 0
        # The parser accepts exactly these moves, whatever the spelling.
        uci = white_uci_strings(env.board)
        accepted = {spaced(env.board.san(m)) for u in uci if (m := parse_move(env.board, u))}
        assert accepted == set(moves)
        for move in moves:
            probe = copy.deepcopy(env)
            _, _, _, _, step_info = probe.step(move)
            assert not step_info["illegal"] and stored_action(step_info) == move
        illegal = next(u for u in uci if parse_move(env.board, u) is None)
        for action in (illegal, "K e 9", "--", "0000", ""):
            obs_before = env.board.fen()
            _, reward, _, _, bad = copy.deepcopy(env).step(action)
            assert bad["illegal"] and reward == -1.0 and bad["fen"] == obs_before
        _, _, term, trunc, info = env.step(moves[ply % len(moves)])
        if term or trunc:
            break


def test_chess_action_set_is_empty_after_mate():
    env = chess_env("Chess-v0")
    env.reset(seed=0, options={"fen": "6k1/5ppp/8/8/8/8/5PPP/R5K1 w - - 0 1"})
    _, reward, term, _, info = env.step("R a 8")
    assert reward == 1.0 and term and info["action_set"] == env.action_set() == ()


@pytest.mark.textnav
def test_textnav_action_set_is_the_shown_admissible_commands():
    pytest.importorskip("textworld")
    from lmrlgym.envs.textnav import shown_commands

    fo, po, probe = (lmrlgym.make(t) for t in ("TextNav-FO-v0", "TextNav-PO-v0", "TextNav-FO-v0"))
    try:
        assert lmrlgym.make("TextNav-PO-v0").action_set() is None  # before the first reset
        options = {"start_room": "living room"}
        prefix = ["take stale food", "go west"]
        _, info = fo.reset(seed=0, options=options)
        po.reset(seed=0, options=options)
        for step in range(len(prefix) + 1):
            commands = fo.action_set()
            assert commands == info["action_set"] == tuple(shown_commands(info["admissible_commands"]))
            assert po.action_set() == commands and commands
            shown = "Admissible commands: " + ", ".join(commands) + "\n"
            assert fo.turns[-1].text.endswith(shown) and po.turns[-1].text.endswith(shown)
            for command in commands:
                probe.reset(seed=0, options=options)
                for done in prefix[:step]:
                    probe.step(done)
                assert not probe.step(command)[4]["illegal"], command
            if step < len(prefix):
                _, _, _, _, info = fo.step(prefix[step])
                po.step(prefix[step])
    finally:
        for env in (fo, po, probe):
            env.close()

