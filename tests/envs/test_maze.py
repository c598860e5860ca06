"""Maze-FO/PO (docs/tasks.md §2): pure rules, golden transcripts, caps, optimal paths, protocol."""

import json
from importlib import resources

import numpy as np
import pytest

import lmrlgym
from lmrlgym.core import Turn
from lmrlgym.data.policies import make_policy
from lmrlgym.data.policies.maze import solve_beliefs
from lmrlgym.envs.maze import (
    START_CELLS,
    MazeEnv,
    format_position,
    load_maze,
    make_maze,
    parse_command,
    spaced_number,
    wall_sentence,
)

# docs/tasks.md §2, shortest-path table d (moves to the goal) per start.
D_TABLE = {
    (1, 1): 12, (1, 2): 11, (1, 3): 10, (1, 4): 11, (1, 5): 12,
    (1, 7): 12, (1, 8): 11, (1, 9): 10, (1, 10): 11, (1, 11): 12,
    (2, 3): 9, (2, 9): 9, (3, 3): 8, (3, 9): 8, (4, 3): 7, (4, 9): 7,
    (5, 3): 6, (5, 4): 5, (5, 5): 4, (5, 6): 3, (5, 7): 4, (5, 8): 5, (5, 9): 6,
    (6, 6): 2, (7, 6): 1,
}  # fmt: skip
FO_66 = (
    "The goal is at position 8, 6. Your current position is at position 6, 6. "
    "There are walls to your right, to your left.\n"
)
FO_76 = FO_66.replace("position 6, 6", "position 7, 6")


def rollout(env, policy, seed, options):
    """(return, last info, agent steps) of one episode of a scripted policy."""
    obs, info = env.reset(seed=seed, options=options)
    done, ret, steps = False, 0.0, 0
    while not done:
        obs, r, term, trunc, info = env.step(policy.act(env, obs, info, None))
        ret, done, steps = ret + r, term or trunc, steps + 1
    return ret, info, steps


def play(env, actions, start):
    obs, info = env.reset(seed=0, options={"start": start})
    out = []
    for a in actions:
        out.append(env.step(a))
    return obs, out


# --- pure rules ---------------------------------------------------------------------------
def test_digit_spacing():
    assert spaced_number(6) == "6"
    assert spaced_number(10) == "1 0"
    assert format_position((1, 11)) == "1, 1 1"


def test_wall_sentences_none_one_several():
    open_grid = make_maze([[0, 0, 0], [0, 0, 0], [0, 0, 0]], (0, 0))
    assert wall_sentence(open_grid.walls, (1, 1)) == "There are no walls near you."
    maze = load_maze("double_t_maze")
    assert wall_sentence(maze.walls, (5, 6)) == "There is a wall above you."
    assert (
        wall_sentence(maze.walls, (1, 1)) == "There are walls to your left, above you, below you."
    )
    # The fixed order is right, left, above, below.
    assert wall_sentence(maze.walls, (1, 11)) == (
        "There are walls to your right, above you, below you."
    )


def test_command_parsing():
    assert parse_command(" Move Down\n") == "move down"
    assert parse_command("MOVE LEFT") == "move left"
    assert parse_command("move  left") is None  # inner spacing must match
    assert parse_command("go left") is None
    assert parse_command("") is None


def test_start_cells_and_optimal_table():
    assert len(START_CELLS) == 25 and list(START_CELLS) == sorted(D_TABLE)
    maze = load_maze("double_t_maze")
    assert {c: maze.distance[c] for c in START_CELLS} == D_TABLE
    table = json.loads(resources.files("lmrlgym.envs").joinpath("data/mazes.json").read_text())
    expected = table["double_t_maze"]["optimal_action_per_cell"]
    assert {f"{r},{c}": maze.optimal_command((r, c)) + "\n" for r, c in START_CELLS} == expected


# --- golden transcripts -------------------------------------------------------------------
def test_fo_golden_transcript():
    env = lmrlgym.make("Maze-FO-v0")
    obs, steps = play(env, ["move left", "Move Down", "jump", "move down"], (6, 6))
    assert obs == FO_66
    assert [s[:4] for s in steps] == [
        (FO_66, -1.0, False, False),
        (FO_76, -1.0, False, False),
        (FO_76, -4.0, False, False),
        ("Success\n", 0.0, True, False),
    ]
    info = steps[-1][4]
    assert [s[4]["illegal"] for s in steps] == [False, False, True, False]
    assert info["success"] and info["position"] == (8, 6) and info["distance"] == 0
    assert info["turns"] == [
        Turn(FO_66, False, 0.0),
        Turn("move left\n", True, -1.0),
        Turn(FO_66, False, 0.0),
        Turn("move down\n", True, -1.0),  # capitalised command stored in canonical form
        Turn(FO_76, False, 0.0),
        Turn("jump\n", True, -4.0),
        Turn(FO_76, False, 0.0),
        Turn("move down\n", True, 0.0),
        Turn("Success\n", False, 0.0),
    ]
    assert sum(s[1] for s in steps) == -6.0
    with pytest.raises(RuntimeError):
        env.step("move up")


def test_fo_digit_rule_start():
    obs, info = lmrlgym.make("Maze-FO-v0").reset(options={"start": (1, 11)})
    assert obs == (
        "The goal is at position 8, 6. Your current position is at position 1, 1 1. "
        "There are walls to your right, above you, below you.\n"
    )
    assert info["position"] == (1, 11) and info["goal"] == (8, 6) and info["distance"] == 12


def test_po_window_example():
    env = lmrlgym.make("Maze-PO-v0")
    obs, steps = play(env, ["move right", "move right", "move down", "move down"], (1, 1))
    assert steps[-1][0] == (
        "There are walls to your left, above you, below you.\nmove right\n"
        "There are walls above you, below you.\nmove right\nThere is a wall above you.\n"
        "move down\nThere are walls to your right, to your left.\nmove down\n"
        "There are walls to your right, to your left.\n"
    )


def test_po_window_keeps_last_40_turns_and_survives_illegal_actions():
    env = lmrlgym.make("Maze-PO-v0")
    env.reset(seed=3, options={"start": (1, 1)})
    for i in range(30):
        obs, *_, info = env.step("jump" if i % 7 == 3 else "move left")
    turns = info["turns"]
    assert len(turns) == 61
    assert obs == "".join(t.text for t in turns[-40:])
    assert obs.startswith("move left\n") or obs.startswith("jump\n")  # a full window opens with
    assert "jump\n" in obs  # an action; unrecognised actions do not wipe the history


# --- episode end --------------------------------------------------------------------------
def test_step_cap_with_wall_bumps_returns_minus_101():
    env = lmrlgym.make("Maze-FO-v0")
    env.reset(seed=0, options={"start": (6, 6)})
    rewards = []
    for _ in range(100):
        obs, r, term, trunc, info = env.step("move left")
        rewards.append(r)
        assert not (term or trunc)
    obs, r, term, trunc, info = env.step("Move Down")  # the cap step ignores its action
    assert (obs, r, term, trunc) == ("Failure\n", -1.0, False, True)
    assert info["position"] == (6, 6) and not info["success"]
    assert info["turns"][-2] == Turn("Move Down\n", True, -1.0)  # stored, not canonicalised
    assert sum(rewards) + r == -101.0
    assert sum(t.is_action for t in info["turns"]) == 101


def test_step_cap_worst_case_returns_minus_401():
    env = lmrlgym.make("Maze-PO-v0")
    env.reset(seed=1)
    total, done = 0.0, False
    while not done:
        _, r, term, trunc, _ = env.step("jump")
        total += r
        done = term or trunc
    assert total == -401.0 == env.return_range[0]


# --- resets and protocol ------------------------------------------------------------------
@pytest.mark.parametrize("bad", [(0, 0), (8, 6), (20, 20), (-1, 3), "x", (1,), None])
def test_bad_start_raises(bad):
    with pytest.raises(ValueError, match="start"):
        lmrlgym.make("Maze-FO-v0").reset(options={"start": bad})


def test_unknown_reset_option_raises():
    with pytest.raises(ValueError, match="init_position"):
        lmrlgym.make("Maze-FO-v0").reset(options={"init_position": (1, 1)})


def test_seeded_uniform_start():
    env = lmrlgym.make("Maze-FO-v0")
    starts = [env.reset(seed=s)[1]["position"] for s in range(400)]
    assert starts == [env.reset(seed=s)[1]["position"] for s in range(400)]
    assert set(starts) == set(START_CELLS)


def test_evaluation_resets():
    resets = MazeEnv.evaluation_resets(800)
    assert len(resets) == 800
    for i, cell in enumerate(START_CELLS):
        seeds = sorted(s for s, o in resets if tuple(o["start"]) == cell)
        assert seeds == [32 * i + k for k in range(32)]
    assert {o["start"] for _, o in MazeEnv.evaluation_resets(25)} == set(START_CELLS)
    assert [o["start"] for _, o in MazeEnv.evaluation_resets(3)] == list(START_CELLS[:3])
    more = [s for s, _ in MazeEnv.evaluation_resets(1000)]
    assert len(set(more)) == 1000


def test_custom_and_named_grids():
    env = lmrlgym.make("Maze-FO-v0", grid="umaze")
    obs, info = env.reset(seed=0, options={"start": (1, 1)})
    assert obs.startswith("The goal is at position 3, 3.") and info["distance"] == 4
    with pytest.raises(ValueError, match="goal"):
        lmrlgym.make("Maze-FO-v0", grid="maze2d_medium")
    env = lmrlgym.make("Maze-PO-v0", grid=[[1, 1, 1, 1], [1, 0, 0, 1], [1, 1, 1, 1]], goal=(1, 2))
    assert env.reset(seed=0)[0] == "There are walls to your left, above you, below you.\n"
    obs, reward, terminated = env.step("move right")[:3]
    assert obs.endswith("move right\nSuccess\n") and reward == 0.0 and terminated
    with pytest.raises(ValueError, match="not a free cell"):
        lmrlgym.make("Maze-FO-v0", grid=[[0, 1]], goal=(0, 1))
    with pytest.raises(ValueError, match="observability"):
        lmrlgym.make("Maze-FO-v0", observability="some")


# --- optimal behaviour --------------------------------------------------------------------
@pytest.mark.parametrize("task", ["Maze-FO-v0", "Maze-PO-v0"])
def test_optimal_path_from_every_start(task):
    env, policy = lmrlgym.make(task), make_policy("maze-optimal", task)
    returns = {}
    for seed, options in MazeEnv.evaluation_resets(25):
        ret, info, steps = rollout(env, policy, seed, options)
        assert info["success"] and steps == D_TABLE[options["start"]]
        returns[options["start"]] = ret
    assert returns == {c: -(d - 1.0) for c, d in D_TABLE.items()}
    assert np.mean(list(returns.values())) == pytest.approx(-6.84)


def test_po_belief_optimum_is_minus_7_24():
    env = lmrlgym.make("Maze-PO-v0")
    solution = solve_beliefs(env.maze, env.cell_text)
    assert len(solution.values) == 44  # docs/tasks.md §2: 44 reachable belief sets
    assert solution.mean_return() == pytest.approx(-7.24)
    # The policy acting on its history realises that value in the env.
    policy = make_policy("maze-belief", "Maze-PO-v0")
    returns = []
    for seed, options in MazeEnv.evaluation_resets(25):
        ret, info, _ = rollout(env, policy, seed, options)
        assert info["success"]
        returns.append(ret)
    assert np.mean(returns) == pytest.approx(-7.24)


def test_fo_belief_policy_equals_shortest_path():
    env = lmrlgym.make("Maze-FO-v0")
    assert solve_beliefs(env.maze, env.cell_text).mean_return() == pytest.approx(-6.84)


def test_project_constants_match_the_protocol():
    """The PROJECT table's Maze entries are what scripts/compute_constants.py computes."""
    from lmrlgym.eval.normalize import PROJECT
    from scripts.compute_constants import maze

    for task, c in maze().items():
        assert (c.min, c.avg, c.max) == (PROJECT[task].min, PROJECT[task].avg, PROJECT[task].max)
