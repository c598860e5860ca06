"""Chess/Endgames behaviour policies and dataset generation with a real Stockfish (docs/tasks.md §5-6)."""

import json
import os
import signal

import numpy as np
import pytest

pytest.importorskip("chess", reason='python-chess missing: pip install "lmrlgym[chess]"')

import lmrlgym  # noqa: E402
from lmrlgym.data import generate  # noqa: E402
from lmrlgym.data.generate import generate_dataset, run_episode  # noqa: E402
from lmrlgym.data.io import read_episodes  # noqa: E402
from lmrlgym.data.policies import DEFAULT_POLICY, OPTIMAL_POLICY, make_policy  # noqa: E402
from lmrlgym.data.policies.chess import parse_epsilon, parse_strength_choice  # noqa: E402
from lmrlgym.registry import find_binary  # noqa: E402

pytestmark = pytest.mark.skipif(
    find_binary("stockfish", "LMRLGYM_STOCKFISH") is None,
    reason="Stockfish not found: apt-get install stockfish (or set LMRLGYM_STOCKFISH)",
)

FAST_ENDGAME = "endgame-epsilon(epsilon_dist=(0.0,0.5),strength='nodes:200')"


def test_strength_and_epsilon_settings():
    assert parse_strength_choice("nodes:50-400") == [("nodes", 50, 400)]
    assert parse_strength_choice(["elo:1400", "skill:3"]) == [("elo", 1400, 1400),
                                                              ("skill", 3, 3)]
    assert parse_epsilon(0.25) == (0.25, 0.25) and parse_epsilon((0.1, 0.9)) == (0.1, 0.9)
    for bad in ["nodes:400-50", "skill:21", "depth:3", []]:
        with pytest.raises(ValueError):
            parse_strength_choice(bad)
    for bad in [1.5, (0.6, 0.2), (-0.1, 0.5)]:
        with pytest.raises(ValueError):
            parse_epsilon(bad)
    with pytest.raises(ValueError, match="node budget must be positive"):
        make_policy("chess-stockfish(strength='nodes:0')", "Chess-v0")


def test_default_and_optimal_specs_build_and_play_legal_moves():
    rng = np.random.default_rng(0)
    for task in ("Chess-v0", "Endgames-v0"):
        env = lmrlgym.make(task, opponent="random")
        for spec in (DEFAULT_POLICY[task], OPTIMAL_POLICY[task]):
            policy = make_policy(spec, task)
            try:
                obs, info = env.reset(seed=1_000_000, options=policy.reset_options(env, rng))
                for _ in range(2):
                    obs, _, terminated, _, info = env.step(policy.act(env, obs, info, rng))
                    assert not info["illegal"], (spec, obs)
                    if terminated:
                        break
            finally:
                policy.close()
        env.close()


def test_episode_record_replays_exactly_and_is_deterministic():
    env = lmrlgym.make("Endgames-v0", opponent="stockfish-nodes:50")
    policy = make_policy(FAST_ENDGAME, "Endgames-v0")
    try:
        ep = run_episode(env, policy, 1_000_003, "Endgames-v0")
        again = run_episode(env, policy, 1_000_003, "Endgames-v0")
        assert ep.to_json() == again.to_json()
        assert set(ep.meta) >= {"strength", "epsilon", "position_type", "outcome"}
        assert ep.meta["opponent"] == "stockfish-nodes:50"
        assert ep.meta["engine_moves"] + ep.meta["random_moves"] == ep.n_actions
        obs, _ = env.reset(seed=ep.seed, options=ep.reset_options)
        assert obs == ep.turns[0].text
        for i, action in enumerate(ep.actions):
            obs, r, *_ = env.step(action)
            assert (action, r, obs) == (ep.turns[2 * i + 1].text, ep.turns[2 * i + 1].reward,
                                        ep.turns[2 * i + 2].text)
    finally:
        policy.close()
        env.close()


def test_epsilon_extremes():
    env = lmrlgym.make("Chess-v0", opponent="random", max_steps=6)
    try:
        for eps, field in [(0.0, "random_moves"), (1.0, "engine_moves")]:
            policy = make_policy(f"chess-stockfish(strength='nodes:20',epsilon={eps})", "Chess-v0")
            ep = run_episode(env, policy, 1_000_000, "Chess-v0")
            policy.close()
            assert ep.meta[field] == 0 and ep.n_actions == 6 and ep.truncated
            assert not any(t.reward for t in ep.turns)  # the policy never plays illegal moves
    finally:
        env.close()


def test_policy_survives_its_engine_being_killed():
    env = lmrlgym.make("Endgames-v0", opponent="random")
    policy = make_policy("endgame-epsilon(epsilon_dist=0.0,strength='nodes:50')", "Endgames-v0")
    rng = np.random.default_rng(0)
    try:
        policy.reset_options(env, rng)
        obs, info = env.reset(seed=1_000_000)
        obs, *_, info = env.step(policy.act(env, obs, info, rng))
        os.kill(policy._engine.pid, signal.SIGKILL)
        move = policy.act(env, obs, info, rng)  # restarted engine, same search
        assert not env.step(move)[4]["illegal"] and policy._engine.restarts == 1
    finally:
        policy.close()
        env.close()


def test_parallel_generation_matches_serial_and_records_the_engine(tmp_path, monkeypatch):
    # Two shards of two episodes each, so workers=2 really spawns two engine-owning processes.
    monkeypatch.setattr(generate, "SHARD_SIZE", 2)
    kwargs = {"opponent": "stockfish-nodes:50"}
    manifests = {}
    for workers in (1, 2):
        manifests[workers] = generate_dataset(
            "Endgames-v0", tmp_path / f"w{workers}", 4, FAST_ENDGAME, workers=workers,
            env_kwargs=kwargs)
        episodes, _ = read_episodes(tmp_path / f"w{workers}")
        assert len(episodes) == 4
    for shard in ("shard-00000.jsonl", "shard-00001.jsonl"):
        assert (tmp_path / "w1" / shard).read_bytes() == (tmp_path / "w2" / shard).read_bytes()
    extra = manifests[2]["policy_extra"]
    assert extra["engine"].startswith("Stockfish") and extra["engine_options"]["Threads"] == 1
    record = json.loads((tmp_path / "w2" / "shard-00000.jsonl").read_text().splitlines()[0])
    assert record["env_kwargs"] == kwargs and record["meta"]["strength"] == "nodes:200"
