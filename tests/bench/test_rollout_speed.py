"""bench rollout: every mode runs and reports its rate (no timing thresholds)."""

import json

import pytest

from lmrlgym.bench.rollout_speed import (
    EPISODE_MODES,
    MODES,
    bench_episodes,
    bench_rollout,
    rollout_main,
)


def test_bench_rollout_reports_every_mode():
    rows = bench_rollout("gpt2-tiny", n_prompts=4, n_prompts_unbatched=2, max_new_tokens=2,
                         repeats=2)
    assert [r["mode"] for r in rows] == list(MODES)
    for r in rows:
        assert r["tokens"] >= r["actions"]
        assert r["actions"] == (4 if r["batch_size"] > 1 else 2)
    assert rows[0]["speedup_vs_unbatched_uncached"] == 1.0


def test_every_rollout_mode_generates_the_same_greedy_actions():
    # Batching (left padding) and the KV cache may change the speed, never the actions.
    rows = bench_rollout("gpt2-tiny", n_prompts=6, n_prompts_unbatched=6, max_new_tokens=4,
                         repeats=1, greedy=True)
    assert len({r["actions_sha1"] for r in rows}) == 1 and len(rows) == len(MODES)
    assert {r["batch_size"] for r in rows} == {1, 6}
    with pytest.raises(ValueError, match="unknown modes"):
        bench_rollout("gpt2-tiny", modes=("fast",))


def test_rollout_main_json(capsys):
    rollout_main("gpt2-tiny", prompts=2, prompts_unbatched=1, max_new_tokens=1, repeats=1,
                 episodes=0, json_output=True)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["mode"] for r in rows} == set(MODES)
    assert all("actions_per_s" in r for r in rows)


def test_episode_rollout_modes_play_the_same_greedy_episodes():
    # Naive, HF generate, ours with and without cross-turn KV reuse: only the speed differs.
    rows = bench_episodes("gpt2-tiny", tasks=("Wordle-v0",), n_episodes=3, n_episodes_naive=3,
                          max_new_tokens=3)
    assert [r["mode"] for r in rows] == list(EPISODE_MODES)
    assert len({r["episodes_sha1"] for r in rows}) == 1
    assert all(r["actions"] >= 3 and r["vs_naive"] > 0 for r in rows)
    assert rows[1]["vs_hf_generate"] == 1.0


def test_bc_shaped_episodes_have_the_tasks_action_length():
    # A few BC steps on Maze-FO's behaviour data: greedy moves are "move up\n"-like (3 tokens),
    # where the untrained model's are one token; every mode still plays the same episodes.
    rows = bench_episodes("gpt2-tiny", tasks=("Maze-FO-v0",), n_episodes=2, n_episodes_naive=2,
                          max_new_tokens=8, modes=("naive", "ours-reuse"), bc_steps=40)
    assert len({r["episodes_sha1"] for r in rows}) == 1
    assert all(r["bc_steps"] == 40 and 2.5 <= r["tokens_per_action"] <= 3.5 for r in rows)
    untrained = bench_episodes("gpt2-tiny", tasks=("Maze-FO-v0",), n_episodes=2,
                               max_new_tokens=8, modes=("ours-reuse",))
    assert untrained[0]["tokens_per_action"] < 2
    with pytest.raises(ValueError, match="bc_steps"):
        bench_episodes("gpt2-tiny", bc_steps=-1)
