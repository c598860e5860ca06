"""Maze and Wordle datasets: determinism, exact replay, and statistics against docs/tasks.md targets.

Tolerances are about four standard errors of the sampled statistic at these episode counts
(success: sqrt(p(1-p)/n); mean return: std/sqrt(n)), around the values this spec's own
simulations give (Maze sub-maze: success 0.11; Wordle mixture: success 0.70, return -4.09).
"""

import numpy as np
import pytest

import lmrlgym
from lmrlgym.data.generate import generate_dataset, run_episode
from lmrlgym.data.io import read_episodes, read_manifest
from lmrlgym.data.policies import make_policy
from lmrlgym.data.policies.maze import SUBMAZES

N_STATS = 4000


def replay(episode):
    """Re-run a record's actions in a fresh env; return the rebuilt turns and infos."""
    env = lmrlgym.make(episode.task, **episode.env_kwargs)
    _, info = env.reset(seed=episode.seed, options=episode.reset_options)
    infos = [info]
    for action in episode.actions:
        infos.append(env.step(action)[4])
    return infos[-1]["turns"], infos


@pytest.mark.parametrize(
    ("task", "spec"),
    [("Maze-PO-v0", None), ("Wordle-v0", None), ("Wordle-v0", "wordle-greedy"),
     ("Maze-FO-v0", "maze-mixture(p_solver=0.5)")],
)  # fmt: skip
def test_same_seed_gives_byte_identical_shards(tmp_path, task, spec):
    a = generate_dataset(task, tmp_path / "a", 60, policy_spec=spec, seed=1_000_000)
    b = generate_dataset(task, tmp_path / "b", 60, policy_spec=spec, seed=1_000_000)
    generate_dataset(task, tmp_path / "c", 60, policy_spec=spec, seed=2_000_000)
    shard = "shard-00000.jsonl"
    assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    assert (tmp_path / "a" / shard).read_bytes() != (tmp_path / "c" / shard).read_bytes()
    assert a == b
    episodes, _ = read_episodes(tmp_path / "a")
    for ep in episodes[:20]:  # every record replays exactly in the env
        turns, _ = replay(ep)
        assert turns == ep.turns


@pytest.fixture(scope="module")
def maze_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("maze")
    generate_dataset("Maze-FO-v0", out, N_STATS)
    return read_manifest(out), read_episodes(out)[0]


def test_maze_submaze_dataset_stats(maze_data):
    manifest, episodes = maze_data
    assert manifest["generator"] == "maze-submaze(p_solver=0.15,w_goal=0.16)"
    assert manifest["policy_extra"]["w_goal"] == 0.16
    assert manifest["success_rate"] == pytest.approx(0.11, abs=0.02)  # paper Table 1: 0.11
    # This spec's simulation: mean length and return about 24 (paper: 19.7, see docs/tasks.md §2).
    assert manifest["length_mean"] == pytest.approx(24.5, abs=2.0)
    assert manifest["return_mean"] == pytest.approx(-24.4, abs=2.0)


def test_maze_submaze_records_stay_in_their_submaze(maze_data):
    _, episodes = maze_data
    for ep in episodes:
        submaze = SUBMAZES[ep.meta["submaze"]]
        assert tuple(ep.reset_options["start"]) in submaze
        if ep.success:
            assert ep.meta["submaze"] == "bottom" and ep.terminated and "cut" not in ep.meta
        else:
            assert ep.truncated and not ep.terminated
    for ep in episodes[:300]:
        _, infos = replay(ep)
        positions = [info["position"] for info in infos]
        # Every position but the last lies in the sub-maze; a cut record ends just outside it.
        assert all(p in SUBMAZES[ep.meta["submaze"]] for p in positions[:-1])
        if "cut" in ep.meta:
            assert positions[-1] not in SUBMAZES[ep.meta["submaze"]]
    # So no record goes from a far (left/right) start to the goal.
    assert all(ep.meta["submaze"] == "bottom" for ep in episodes if ep.success)
    assert {ep.meta["submaze"] for ep in episodes} == {"left", "right", "bottom"}


def test_maze_submaze_solver_is_cut_where_it_leaves_its_submaze():
    """With p_solver=1 a far start walks straight out of its sub-maze and is cut there."""
    env = lmrlgym.make("Maze-PO-v0")
    far = make_policy("maze-submaze(p_solver=1.0,w_goal=0.0)", "Maze-PO-v0")
    near = make_policy("maze-submaze(p_solver=1.0,w_goal=1.0)", "Maze-PO-v0")
    for seed in range(1_000_000, 1_000_020):
        ep = run_episode(env, far, seed, "Maze-PO-v0")
        d = env.maze.distance[tuple(ep.reset_options["start"])]
        # The exits (5, 3) and (5, 9) are 6 moves from the goal.
        assert ep.n_actions == d - 6 and ep.ret == -(d - 6.0) and ep.truncated
        assert ep.meta["cut"] == f"left the {ep.meta['submaze']} sub-maze"
        ep = run_episode(env, near, seed, "Maze-PO-v0")
        d = env.maze.distance[tuple(ep.reset_options["start"])]
        assert ep.success and ep.ret == -(d - 1.0) and ep.meta["submaze"] == "bottom"
    with pytest.raises(ValueError, match="double-T"):
        far.reset_options(lmrlgym.make("Maze-PO-v0", grid="umaze"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="w_goal"):
        make_policy("maze-submaze(w_goal=1.5)", "Maze-PO-v0")


def test_wordle_default_dataset_stats(tmp_path):
    manifest = generate_dataset("Wordle-v0", tmp_path, N_STATS)
    assert manifest["generator"] == "wordle-mixture(p_smart=0.3333333333333333)"
    # Paper Table 1: success 0.70, mean return -4.12 (std 1.59), mean length 4.82.
    assert manifest["success_rate"] == pytest.approx(0.70, abs=0.03)
    assert manifest["return_mean"] == pytest.approx(-4.09, abs=0.1)
    assert manifest["return_std"] == pytest.approx(1.59, abs=0.1)
    assert manifest["length_mean"] == pytest.approx(4.8, abs=0.1)
    episodes, _ = read_episodes(tmp_path)
    assert all(ep.meta["hidden_word"] for ep in episodes)
    assert all(ep.terminated and not ep.truncated for ep in episodes)
