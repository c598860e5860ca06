"""What `lmrlgym train` and `lmrlgym eval` show: a labelled progress report per phase (only
through the CLI's callback: train() from Python prints nothing), the training summary and the
eval summary's explanation of both normalisations."""

import json

from lmrlgym.algos import bc
from lmrlgym.algos.cli import train_summary
from lmrlgym.eval.evaluate import explain_normalization
from lmrlgym.eval.normalize import PAPER, PROJECT, score
from tests.algos.helpers import maze_dataset, micro_model


def test_every_phase_is_reported_and_python_callers_see_nothing(tmp_path, capsys):
    kw = dict(data=maze_dataset(tmp_path / "data", 12, "maze-optimal"),
              model=micro_model(tmp_path / "micro"), vocab_size=300, batch_size=8, max_steps=2,
              log_every=1, tensorboard=False, eval_episodes=2)
    seen = []

    def progress(done, total, metrics, phase="train"):
        if not seen or seen[-1][0] != phase:
            seen.append((phase, total))
        assert total is None or 0 <= done <= total

    bc.train(bc.preset("Maze-FO-v0", out=str(tmp_path / "a"), **kw), progress=progress)
    assert [p for p, _ in seen] == ["read data", "tokenizer", "render", "train", "validate",
                                    "evaluate", "export"]
    assert dict(seen)["train"] == 2 and dict(seen)["evaluate"] == 2
    assert dict(seen)["read data"] is None  # a status line: no count
    capsys.readouterr()
    bc.train(bc.preset("Maze-FO-v0", out=str(tmp_path / "b"), **kw))
    assert capsys.readouterr() == ("", "")


def _metrics(run_dir, *lines):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_training_summary_names_loss_eval_time_run_and_next_command(tmp_path):
    run = tmp_path / "my run"
    _metrics(run, {"step": 0, "data/skipped_lines": 0},
             {"step": 10, "train/loss": 0.9}, {"step": 20, "train/loss": 0.4567},
             {"step": 20, "eval/loss": 0.5, "eval/return": -51.5, "eval/success_rate": 0.82,
              "eval/n_episodes": 200, "eval/normalized_score": 49.96})
    text = train_summary(run, 265.2)
    assert text.splitlines() == [
        "trained in 4 min 25 s; final training loss 0.4567",
        "evaluation (200 episodes): mean return -51.5, success 82%, normalized score 50.0",
        f"run: {run}",
        f"next: lmrlgym eval --run '{run}'",
    ]
    other = tmp_path / "other"
    _metrics(other, {"step": 0, "data/skipped_lines": 3}, {"step": 5, "train/loss": 1.0})
    lines = train_summary(other, 42).splitlines()
    assert lines[0] == "trained in 42 s; final training loss 1"
    assert lines[1] == "skipped 3 malformed dataset lines (--skip-bad)"
    assert not any(x.startswith("evaluation") for x in lines)  # no evaluation was run


def _summary(task, mean):
    norm = {label: None if task not in table else {
        "score": score(mean, table[task]), **vars(table[task])}
        for label, table in (("project", PROJECT), ("paper", PAPER))}
    return {"task": task, "normalization": norm}


def test_eval_summary_explains_both_normalisations_and_negative_paper_scores():
    project, paper = explain_normalization(_summary("Maze-FO-v0", -367.0)).splitlines()
    assert project.startswith("project score 4.9: ")
    assert "0 = -401 (the minimum), 50 = -51.46 (the dataset's average), 100 = -6.84" in project
    assert paper.startswith("paper score -738.9: ") and "0 = -101 (its minimum)" in paper
    assert "50 = -83 (its dataset average), 100 = -6.84 (its optimum)" in paper
    assert "below -101 scores below 0, down to -833 at the worst possible return -401" in paper
    lines = explain_normalization(_summary("CarDealer-v0", 0.5)).splitlines()
    assert lines[1] == "paper score n/a: the paper gives no normalisation constants for this task."
