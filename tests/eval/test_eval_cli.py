"""eval_main (``lmrlgym eval``): scripted policies, output files and bad input."""

import json

import pytest

from lmrlgym.data.io import read_episodes
from lmrlgym.eval.cli import eval_main
from lmrlgym.registry import register, registry

MENU_TASK = "Toy-Menu-v0"
if MENU_TASK not in registry:
    register(MENU_TASK, "tests.models.toy:MenuEnv", max_turns=4)


def test_scripted_policy_writes_summary_and_prints_table(tmp_path, capsys):
    eval_main(policy="maze-optimal", task="Maze-FO-v0", episodes=25, out=tmp_path / "ev")
    text = capsys.readouterr().out
    assert "normalized score (project)  100.0" in text and "-6.840" in text
    summary = json.loads((tmp_path / "ev" / "eval_summary.json").read_text())
    assert summary["episodes"] == 25 and summary["success_rate"] == 1.0
    assert len((tmp_path / "ev" / "episodes.jsonl").read_text().splitlines()) == 25


def test_json_output(tmp_path, capsys):
    eval_main(policy="maze-optimal", task="Maze-FO-v0", episodes=3, out=tmp_path, json_output=True)
    assert json.loads(capsys.readouterr().out)["episodes"] == 3


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one of --run"),
    ({"policy": "maze-optimal", "run": "x"}, "exactly one of --run"),
    ({"policy": "maze-optimal"}, "--task is required"),
    ({"policy": "maze-optimal", "task": "Maze-FO-v0"}, "--out is required"),
    ({"policy": "maze-optimal", "task": "Maze-FO-v0", "out": "o", "env_kwargs": "{"}, "not valid JSON"),
    ({"policy": "maze-optimal", "task": "Maze-FO-v0", "out": "o", "episodes": 0}, "positive"),
    ({"policy": "maze-optimall", "task": "Maze-FO-v0", "out": "o"}, "Did you mean 'maze-optimal'"),
    ({"policy": "openai:not-a-url", "task": "Maze-FO-v0", "out": "o"}, "openai:"),
    ({"policy": "maze-optimal", "task": "Maze-FO-v0", "out": "o", "threads": 0}, "--threads"),
    ({"policy": "maze-optimal", "task": "Maze-FO-v0", "out": "o", "decode": "rerank"},
     "--decode rerank needs a trained run"),
])
def test_bad_input(kwargs, match, tmp_path):
    if "out" in kwargs:
        kwargs["out"] = tmp_path / kwargs["out"]
    with pytest.raises(ValueError, match=match):
        eval_main(**kwargs)


def test_missing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        eval_main(run=tmp_path / "nope", task="Maze-FO-v0")


def test_trained_run_default_out_dir(tmp_path, capsys):
    """A real (tiny, briefly trained) BC run: task from the run, output inside the run."""
    from lmrlgym.algos import bc
    from lmrlgym.data.generate import generate_dataset

    generate_dataset("Maze-FO-v0", tmp_path / "data", 16, policy_spec="maze-optimal")
    run = bc.train(bc.BCConfig(
        task="Maze-FO-v0", data=str(tmp_path / "data"), out=str(tmp_path / "run"),
        model="gpt2-tiny", vocab_size=300, max_context_tokens=48, max_new_tokens=4, max_steps=2,
        batch_size=8, val_fraction=0.0, tensorboard=False, save_every=1000))
    eval_main(run=run, episodes=2, seed=3, greedy=True)
    out = run / "eval" / "Maze-FO-v0__seed3"
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["task"] == "Maze-FO-v0" and summary["episodes"] == 2
    assert summary["decoding"]["greedy"] is True and summary["decoding"]["max_new_tokens"] == 4
    assert [json.loads(line)["seed"] for line in (out / "episodes.jsonl").read_text().splitlines()] == [3, 35]
    assert "Maze-FO-v0" in capsys.readouterr().out
    # Reranking over a task's legal actions (a toy env that lists them), recorded in the summary.
    eval_main(run=run, task=MENU_TASK, episodes=2, decode="rerank", out=tmp_path / "menu",
              max_new_tokens=16)  # room for "hello there" in a Maze-trained tokenizer
    summary = json.loads((tmp_path / "menu" / "eval_summary.json").read_text())
    assert summary["decoding"]["decode"] == "rerank" and summary["decoding"]["rerank_score"] == "logprob"
    episodes, _ = read_episodes(tmp_path / "menu" / "episodes.jsonl")
    actions = {t.text for ep in episodes for t in ep.turns if t.is_action}
    assert actions <= {"hello there\n", "go left\n", "stop\n"}
    for score in ("value", "turn"):  # a BC run has no value heads
        with pytest.raises(ValueError, match=f"rerank_score='{score}' needs a value-guided policy"):
            eval_main(run=run, task=MENU_TASK, episodes=2, decode="rerank", rerank_score=score)
