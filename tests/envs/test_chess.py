"""Chess-v0 and Endgames-v0 (docs/tasks.md §5-6): text rules, rewards, endings, engine robustness.

Tests that need the Stockfish binary are marked ``needs_stockfish`` and skipped, with the install
command, when it is missing; the rest only need python-chess and use the ``random`` opponent.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

chess = pytest.importorskip("chess", reason='python-chess missing: pip install "lmrlgym[chess]"')

import lmrlgym  # noqa: E402
from lmrlgym.envs import _stockfish  # noqa: E402
from lmrlgym.envs.chess import (  # noqa: E402
    EVAL_SET,
    ChessEnv,
    legal_sans,
    load_positions,
    observation_text,
    parse_move,
    position_key,
    position_type,
    random_endgame,
    training_endgame,
)
from lmrlgym.registry import DependencyNotInstalled, find_binary  # noqa: E402

needs_stockfish = pytest.mark.skipif(
    find_binary("stockfish", "LMRLGYM_STOCKFISH") is None,
    reason="Stockfish not found: apt-get install stockfish (or set LMRLGYM_STOCKFISH)",
)

START = ("r n b q k b n r / p p p p p p p p / 8 / 8 / 8 / 8 / P P P P P P P P / "
         "R N B Q K B N R   w   K Q k q   -   0   1\n")
AFTER_NF3_D5 = ("r n b q k b n r / p p p 1 p p p p / 8 / 3 p 4 / 8 / 5 N 2 / P P P P P P P P / "
                "R N B Q K B 1 R   w   K Q k q   -   0   2\n")


def proc_alive(pid: int) -> bool:
    """A live (not zombie) process with this pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or while reading
        return False


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while proc_alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not proc_alive(pid)


# --- text rules -------------------------------------------------------------------------------
def test_observation_is_spaced_fen_as_in_the_spec():
    board = chess.Board()
    assert observation_text(board) == START
    board.push_san("Nf3")
    board.push_san("d5")
    assert observation_text(board) == AFTER_NF3_D5


@pytest.mark.parametrize("text,uci", [
    ("N f 3\n", "g1f3"), ("Nf3\n", "g1f3"), ("  N f3 \n", "g1f3"), ("g1f3\n", "g1f3"),
    ("e 4\n", "e2e4"), ("e2e4\n", "e2e4"),
])
def test_parse_move_accepts_spaced_san_san_and_uci(text, uci):
    assert parse_move(chess.Board(), text) == chess.Move.from_uci(uci)


@pytest.mark.parametrize("text", ["\n", "--\n", "0000\n", "hello\n", "e2e5\n", "Ke2\n", "Nf6\n"])
def test_parse_move_rejects_empty_null_unparsable_and_illegal(text):
    assert parse_move(chess.Board(), text) is None


def test_castling_and_promotion_are_stored_as_spaced_san():
    env = ChessEnv(opponent="random")
    env.reset(seed=0, options={"fen": "4k3/P7/8/8/8/8/8/4K2R w K - 0 1"})
    _, r, *_, info = env.step("O-O")
    assert (info["turns"][1].text, r) == ("O - O\n", 0.0)
    env.reset(seed=0, options={"fen": "4k3/P7/8/8/8/8/8/4K2R w K - 0 1"})
    _, _, _, _, info = env.step("a7a8q")
    assert info["turns"][1].text == "a 8 = Q +\n"


# --- rewards and endings (random opponent: no engine needed) -----------------------------------
def test_illegal_move_costs_one_and_keeps_the_position():
    env = ChessEnv(opponent="random")
    obs0, _ = env.reset(seed=0)
    obs, r, term, trunc, info = env.step("Ke2  \nrest")
    assert (obs, r, term, trunc, info["illegal"]) == (obs0, -1.0, False, False, True)
    assert info["turns"][1].text == "Ke2\n"  # unrecognised: stored as normalised
    assert info["opponent_move"] is None and info["fen"] == chess.STARTING_FEN


def test_white_mates_gets_plus_one():
    # 1. e4 f6 2. d4 g5: fool's mate with the colours swapped, so White mates with Qh5.
    env = ChessEnv(opponent="random")
    env.reset(seed=0, options={"fen": "rnbqkbnr/ppppp2p/5p2/6p1/3PP3/8/PPP2PPP/RNBQKBNR w KQkq g6 0 3"})
    _, r, term, trunc, info = env.step("Q h 5")
    assert (r, term, trunc) == (1.0, True, False)
    assert info["turns"][1].text == "Q h 5 #\n"
    assert (info["outcome"], info["winner"], info["success"]) == ("checkmate", "white", True)
    assert info["opponent_move"] is None
    with pytest.raises(RuntimeError):
        env.step("e4")


@pytest.mark.parametrize("fen,move,outcome", [
    ("7k/8/8/5Q2/8/8/8/K7 w - - 0 1", "Qg6", "stalemate"),
    ("8/8/8/4k3/8/8/1r6/K7 w - - 0 1", "Kxb2", "insufficient_material"),
    ("k7/8/8/8/8/8/8/K6R w - - 149 100", "Rh2", "seventyfive_moves"),
])
def test_automatic_draws_end_with_zero(fen, move, outcome):
    env = ChessEnv(opponent="random")
    env.reset(seed=0, options={"fen": fen})
    _, r, term, trunc, info = env.step(move)
    assert (r, term, trunc, info["outcome"], info["winner"], info["success"]) == (
        0.0, True, False, outcome, None, False)


def test_claimable_draws_do_not_end_the_game():
    env = ChessEnv(opponent="random")
    env.reset(seed=0, options={"fen": "k7/8/8/8/8/8/8/K6R w - - 99 100"})
    _, _, term, _, info = env.step("Rh2")  # 50-move rule now claimable, not automatic
    assert not term and info["outcome"] is None


def test_step_cap_is_400_agent_steps_including_illegal_ones():
    env = ChessEnv(opponent="random")
    env.reset(seed=1)
    total = 0.0
    for _ in range(399):
        _, r, term, trunc, _ = env.step("nonsense")
        total += r
        assert not (term or trunc)
    _, r, term, trunc, info = env.step("e4")  # the 400th step gets its normal reward
    assert (r, term, trunc, total) == (0.0, False, True, -399.0)
    assert len([t for t in info["turns"] if t.is_action]) == 400
    env.reset(seed=1)
    rewards = [env.step("x")[1] for _ in range(400)]
    assert sum(rewards) == env.return_range[0] == -400.0


def test_random_opponent_golden_transcript():
    env = ChessEnv(opponent="random")
    env.reset(seed=3)
    replies = [env.step(a)[4]["opponent_move"] for a in ["e4", "Nf3", "Bc4", "d3"]]
    assert replies == GOLDEN_RANDOM_REPLIES
    assert env.board.fen() == GOLDEN_RANDOM_FEN


GOLDEN_RANDOM_REPLIES = ["d5", "Kd7", "Na6", "Kd6"]
GOLDEN_RANDOM_FEN = "r1bq1bnr/ppp1pppp/n2k4/3p4/2B1P3/3P1N2/PPP2PPP/RNBQK2R w KQ - 1 5"


@pytest.mark.parametrize("options,match", [
    ({"fen": "not a fen"}, "invalid FEN 'not a fen'"),
    ({"fen": "rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1"}, "Black to move"),
    ({"fen": "7k/8/8/8/8/8/8/7K w - - 0 1"}, "already over"),
    ({"fen": "8/8/8/8/8/8/8/7K w - - 0 1"}, "not a legal position"),
    ({"eval_index": 0}, "unknown reset options"),
    ({"colour": "white"}, "unknown reset options"),
])
def test_bad_reset_options_raise_naming_the_problem(options, match):
    with pytest.raises(ValueError, match=match):
        ChessEnv(opponent="random").reset(seed=0, options=options)


def test_bad_opponent_specs():
    for spec in ["stockfish", "elo:1350", "stockfish-skill:3", "stockfish-nodes:0", "gnuchess"]:
        with pytest.raises(ValueError, match="opponent|node budget|strength"):
            ChessEnv(opponent=spec)
    with pytest.raises(ValueError, match=r"'stockfish-elo-seeded:x'.*stockfish-elo-seeded:<E>"):
        ChessEnv(opponent="stockfish-elo-seeded:x")


# --- endgames ---------------------------------------------------------------------------------
def test_random_endgames_satisfy_the_spec():
    rng = np.random.default_rng(0)
    for kind in ["kQK", "kRK", "kQRK", "kRRK"]:
        for _ in range(200):
            board = random_endgame(rng, kind)
            assert board.is_valid() and board.turn == chess.WHITE and not board.is_check()
            assert not board.is_game_over() and position_type(board) == kind
            assert not board.castling_rights and board.ep_square is None


def test_eval_set_properties():
    records = load_positions(EVAL_SET)
    assert [r["index"] for r in records] == list(range(645))
    counts = {t: sum(r["type"] == t for r in records) for t in ["kQK", "kRK", "kQRK", "kRRK"]}
    assert counts == {"kQK": 161, "kRK": 161, "kQRK": 161, "kRRK": 162}
    assert [r["type"] for r in records[:8]] == ["kQK", "kRK", "kQRK", "kRRK"] * 2
    keys = {position_key(chess.Board(r["fen"])) for r in records}
    assert len(keys) == 645
    for r in records:
        board = chess.Board(r["fen"])
        assert position_type(board) == r["type"] and not board.is_check()
        score = r["stockfish_score"]  # "+512" or "#+17": never a mate in fewer than 15
        assert not score.startswith("#") or int(score[1:]) >= 15, r
    manifest = json.loads(EVAL_SET.with_name("endgames_eval_645.manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["search"]["limit"] == "depth 12"
    assert manifest["positions"] == 645


def test_training_positions_never_equal_evaluation_positions():
    records = load_positions(EVAL_SET)
    eval_keys = frozenset(position_key(chess.Board(r["fen"])) for r in records)
    rng = np.random.default_rng(1_000_000)
    for _ in range(500):
        board, kind = training_endgame(rng, ["kQK", "kRK", "kQRK", "kRRK"], eval_keys)
        assert position_key(board) not in eval_keys and position_type(board) == kind
    # The rejection itself: make the first draw an "evaluation position" and it must be skipped.
    first, _ = training_endgame(np.random.default_rng(5), ["kQK"], frozenset())
    again, _ = training_endgame(np.random.default_rng(5), ["kQK"], frozenset({position_key(first)}))
    assert position_key(again) != position_key(first)


def test_endgame_resets_and_evaluation_protocol():
    env = ChessEnv(mode="endgame", opponent="random", types=["kRK"])
    obs, info = env.reset(seed=1_000_000)
    assert info["position_type"] == "kRK" and obs == observation_text(env.board)
    records = load_positions(EVAL_SET)
    _, info = env.reset(seed=7, options={"eval_index": 7})
    assert info["fen"] == records[7]["fen"] and info["position_type"] == records[7]["type"]
    with pytest.raises(ValueError, match="eval_index"):
        env.reset(seed=0, options={"eval_index": 645})
    resets = ChessEnv.evaluation_resets(647, mode="endgame")
    assert resets[:2] == [(0, {"eval_index": 0}), (1, {"eval_index": 1})]
    assert resets[645:] == [(645, {"eval_index": 0}), (646, {"eval_index": 1})]
    assert ChessEnv.evaluation_resets(3, mode="game") == [(0, {}), (1, {}), (2, {})]


def test_bad_positions_file_names_file_line_and_fen(tmp_path):
    path = tmp_path / "positions.jsonl"
    path.write_text('"8/Q6K/4k3/8/8/8/8/8 w - - 0 1"\n'
                    '{"fen": "8/8/8/4k3/8/7R/8/6K1 w - - 0 1"}\n'
                    '"8/8/8/4k3/8/7R/8/6K9 w - - 0 1"\n')
    with pytest.raises(ValueError, match=r"positions.jsonl:3: invalid FEN '8/8/8/4k3/8/7R/8/6K9"):
        ChessEnv(mode="endgame", opponent="random", eval_positions=path)
    path.write_text('"8/Q6K/4k3/8/8/8/8/8 w - - 0 1"\n')
    env = ChessEnv(mode="endgame", opponent="random", eval_positions=path)
    assert env.reset(seed=0, options={"eval_index": 0})[1]["position_type"] == "kQK"


# --- against the real engine ------------------------------------------------------------------
@needs_stockfish
def test_black_mates_gets_minus_one():
    env = lmrlgym.make("Chess-v0", opponent="stockfish-nodes:200")
    try:
        env.reset(seed=0, options={"fen": "4r1k1/8/8/8/8/N7/6PP/7K w - - 0 1"})
        _, r, term, trunc, info = env.step("N b 5")
        assert (info["opponent_move"], r, term, trunc) == ("Re1#", -1.0, True, False)
        assert (info["outcome"], info["winner"], info["success"]) == ("checkmate", "black", False)
    finally:
        env.close()


@needs_stockfish
def test_node_limited_opponent_golden_and_deterministic():
    moves = ["e4", "N f 3", "d2d4", "Bb5+", "nonsense", "O-O"]
    transcripts = []
    for _ in range(2):
        env = lmrlgym.make("Chess-v0", opponent="stockfish-nodes:500")
        try:
            for seed in (0, 0):  # a second game on the same engine starts from a fresh hash
                env.reset(seed=seed)
                transcripts.append([env.step(m)[4]["opponent_move"] for m in moves])
                transcripts[-1].append(env.board.fen())
        finally:
            env.close()
    assert all(t == transcripts[0] for t in transcripts)
    assert transcripts[0] == GOLDEN_NODES_REPLIES


# Stockfish 15.1 (Debian bookworm). Another build may search differently: update with care.
GOLDEN_NODES_REPLIES = [
    "e5", "Nc6", "exd4", "a6", None, "axb5",
    "r1bqkbnr/1ppp1ppp/2n5/1p6/3pP3/5N2/PPP2PPP/RNBQ1RK1 w kq - 0 6",
]


@needs_stockfish
def test_engine_elo_opponent_is_1350_at_100ms_and_nondeterministic():
    env = lmrlgym.make("Chess-v0", opponent="stockfish-elo:1350")
    try:
        _, info = env.reset(seed=0)
        assert env.deterministic is False and info["deterministic"] is False
        engine = info["engine"]
        assert engine["name"].startswith("Stockfish")
        assert engine["options"]["UCI_LimitStrength"] is True
        assert engine["options"]["UCI_Elo"] == 1350 and engine["limit"] == "movetime=100ms"
        assert engine["options"]["Threads"] == 1 and engine["options"]["Hash"] == 16
        assert env.step("e4")[4]["opponent_move"] is not None
    finally:
        env.close()
    with pytest.raises(ValueError, match=r"1350\.\.2850"):
        lmrlgym.make("Chess-v0", opponent="stockfish-elo:1200")


def test_skill_pick_is_stockfish_formula():
    # Hand computed with Skill::pick_best (Stockfish 15.1) at level 0: weakness 120, delta =
    # min(100 - (-300), 126) = 126; push_i = int((120 (100 - v_i) + 126 (draw_i mod 120)) / 128).
    scored = [("a", 100), ("b", 80), ("c", 20), ("d", -300)]
    # pushes 0, 18, 75, 375: 100, 98, 95, 75 -> the best move
    assert _stockfish.skill_pick(scored, 0.0, [0, 0, 0, 0]) == "a"
    # b's draw 119: int((2400 + 14994) / 128) = 135 -> 215; c's and d's stay below
    assert _stockfish.skill_pick(scored, 0.0, [0, 119, 0, 0]) == "b"
    assert _stockfish.skill_pick(scored, 0.0, [0, 240, 0, 0]) == "a"  # 240 mod 120 = 0
    # two moves: delta = 20, b gets 80 + int((2400 + 20·x) / 128): 99 at x = 7, 100 (a tie,
    # which goes to the later move) at x = 8
    assert _stockfish.skill_pick(scored[:2], 0.0, [0, 7]) == "a"
    assert _stockfish.skill_pick(scored[:2], 0.0, [0, 8]) == "b"
    with pytest.raises(ValueError, match="one draw per move"):
        _stockfish.skill_pick(scored, 0.0, [0])
    assert 0 < _stockfish.skill_level(1350) < 0.02 < _stockfish.skill_level(1500) < 20
    engine = pytest.importorskip("chess.engine")
    assert _stockfish.internal_value(engine.Cp(100)) == 361
    assert _stockfish.internal_value(engine.Mate(1)) == 32000 - 1  # mate in one ply
    assert _stockfish.internal_value(engine.Mate(-1)) == -32000 + 2  # mated after two plies


@needs_stockfish
def test_default_opponent_replays_its_seed_and_picks_among_the_best_four():
    def replies(seed):
        env = lmrlgym.make("Chess-v0")
        assert env.opponent == "stockfish-elo-seeded:1350"
        try:
            _, info = env.reset(seed=seed)
            out, boards = [], []  # the opponent's reply, and the position it replied to
            for move in ["e4", "Nf3", "Bc4", "d3", "O-O", "Nc3"]:
                boards.append(env.board)
                boards[-1].push_san(move)
                out.append(env.step(move)[4]["opponent_move"])
            return out, boards, info
        finally:
            env.close()

    first, boards, info = replies(0)
    assert replies(0)[0] == first and info["deterministic"] is True
    assert any(replies(s)[0] != first for s in (1, 2, 3))  # the draws come from the seed
    assert info["engine"]["limit"] == "depth=1" and "pick" in info["engine"]
    engine = _stockfish.Stockfish()
    try:
        engine.set_strength(_stockfish.Strength("nodes", 1))
        for board, reply in zip(boards, first, strict=True):
            top = engine.analyse(board, chess.engine.Limit(depth=1), multipv=4)
            assert reply in [board.san(i["pv"][0]) for i in top], (board.fen(), reply)
    finally:
        engine.close()


@needs_stockfish
def test_engine_killed_mid_game_fails_the_episode_and_restarts():
    env = lmrlgym.make("Chess-v0", opponent="stockfish-nodes:50")
    try:
        env.reset(seed=0)
        env.step("e4")
        pid = env.engine_pid
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        obs, r, term, trunc, info = env.step("d4")
        assert (r, term, trunc, info["success"]) == (0.0, False, True, False)
        assert "died or stopped answering" in info["engine_error"]
        assert not os.path.exists(f"/proc/{pid}")  # the killed engine was reaped
        _, info = env.reset(seed=0)
        assert env.step("e4")[4]["opponent_move"] is not None
        assert env.engine_pid not in (None, pid)
    finally:
        new_pid = env.engine_pid
        env.close()
    assert wait_gone(new_pid) and not os.path.exists(f"/proc/{new_pid}")


FAKE_ENGINE = """\
import sys
for line in sys.stdin:
    cmd = line.split()
    if cmd[:1] == ["uci"]:
        print("id name Hung 1.0")
        for opt in ["Threads type spin default 1 min 1 max 8", "Hash type spin default 16 min 1 max 64",
                    "UCI_LimitStrength type check default false",
                    "UCI_Elo type spin default 1350 min 1350 max 2850",
                    "Skill Level type spin default 20 min 0 max 20"]:
            print("option name " + opt)
        print("uciok")
    elif cmd[:1] == ["isready"]:
        print("readyok")
    elif cmd[:1] == ["quit"]:
        break
    sys.stdout.flush()
"""


def test_hung_engine_times_out_instead_of_hanging(tmp_path, monkeypatch):
    # A UCI engine that never answers "go": the watchdog must end the episode, not hang.
    script = tmp_path / "hung_engine"
    script.write_text(f"#!{sys.executable}\n" + FAKE_ENGINE)
    script.chmod(0o755)
    monkeypatch.setenv("LMRLGYM_STOCKFISH", str(script))
    monkeypatch.setattr(_stockfish, "WATCHDOG_SECONDS", 1.0)
    env = ChessEnv(opponent="stockfish-nodes:10")
    try:
        env.reset(seed=0)
        pid = env.engine_pid
        start = time.time()
        _, r, term, trunc, info = env.step("e4")
        assert time.time() - start < 20
        assert trunc and not term and "stopped answering" in info["engine_error"]
        assert wait_gone(pid)
    finally:
        env.close()


def test_missing_or_unstartable_engine_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LMRLGYM_STOCKFISH", str(tmp_path / "no-such-stockfish"))
    with pytest.raises(DependencyNotInstalled, match="apt-get install stockfish"):
        lmrlgym.make("Chess-v0", opponent="stockfish-nodes:10")
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("LMRLGYM_STOCKFISH", str(broken))
    with pytest.raises(_stockfish.EngineError, match="apt-get install stockfish"):
        ChessEnv(opponent="stockfish-nodes:10")
    env = ChessEnv(opponent="random")  # the random opponent needs no engine at all
    assert env.engine_pid is None


@needs_stockfish
def test_engine_is_stopped_at_interpreter_exit():
    code = textwrap.dedent("""
        import lmrlgym
        env = lmrlgym.make("Endgames-v0", opponent="stockfish-nodes:10")
        env.reset(seed=0)
        env.step("Kf1")
        print(env.engine_pid, flush=True)
    """)  # exits without env.close()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert wait_gone(int(out.stdout.split()[-1]))


@pytest.mark.parametrize("task", ["Chess-v0", "Endgames-v0"])
def test_project_constants_span_the_return_range(task):
    c = lmrlgym.eval.normalize.constants_for(task)
    assert (c.min, c.max) == (-400.0, 1.0) and c.min < c.avg < c.max
    assert "compute_constants.py" in c.source and "Stockfish 15.1" in c.source
    assert lmrlgym.normalized_score(task, -400.0) == 0.0
    assert lmrlgym.normalized_score(task, c.avg) == 50.0
    assert lmrlgym.normalized_score(task, 1.0) == 100.0


# Disambiguation by file, rank and both (three queens), promotions with capture and check, en
# passant, both castlings, mate in one.
SAN_POSITIONS = [
    "7k/8/8/3Q1Q2/8/3Q4/8/K7 w - - 0 1",
    "1r5k/P1P5/8/8/8/8/8/K7 w - - 0 1",
    "4k3/8/8/3pP3/8/8/8/4K3 w - d6 0 1",
    "r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1",
    "6k1/5ppp/8/8/8/8/8/R5K1 w - - 0 1",
    "k7/8/8/8/8/8/1N3N2/K3N3 w - - 0 1",
]


def test_legal_sans_equals_python_chess_san_in_many_positions():
    rng = np.random.default_rng(0)
    boards = [chess.Board(fen) for fen in SAN_POSITIONS]
    for _ in range(40):  # random games: checks, captures, promotions late in the game
        board = chess.Board()
        for _ in range(int(rng.integers(0, 300))):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(moves[int(rng.integers(len(moves)))])
        boards.append(board)
    checked = 0
    for board in boards:
        fen = board.fen()
        sans = legal_sans(board)
        assert board.fen() == fen  # the board is left as it was
        assert sans == {m: board.san(m) for m in board.legal_moves}, fen
        checked += len(sans)
    assert checked > 500
