"""`--preset` of `lmrlgym train` and `lmrlgym eval`: the CPU preset where no GPU is found,
the paper's settings on request, and explicit flags always winning."""

import pytest
import torch

from lmrlgym.algos.cli import parse_train
from lmrlgym.bench.presets import PAPER_MODEL, PROFILES, choose_preset
from lmrlgym.eval.cli import eval_main

CPU = PROFILES["cpu"]
DATA = ["--task", "Maze-FO-v0", "--data", "data/maze"]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_without_flags_gets_the_cpu_profile_sizes(no_gpu):
    config, line = parse_train("bc", DATA)
    assert (config.model, config.max_steps, config.batch_size) == ("gpt2-tiny", 300, 32)
    assert config.lr == pytest.approx(1e-4 * CPU.lr_scale) and config.vocab_size == 512
    assert config.device == "cpu"
    assert line == ("no GPU found: using the CPU preset (model gpt2-tiny, 300 steps, batch 32); "
                    "pass --preset paper for the paper's settings")
    ilql, _ = parse_train("ilql", DATA)  # the profile's CPU-scale value settings too
    assert (ilql.gamma, ilql.beta, ilql.polyak_alpha) == (0.9, 4.0, 0.05)
    ppo, line = parse_train("ppo", ["--task", "Maze-FO-v0", "--init", "runs/bc"])
    assert (ppo.n_rounds, ppo.rollouts_per_round) == (4, 48)
    assert "(4 rounds of 48 rollouts, batch 64)" in line
    wordle, _ = parse_train("bc", ["--task", "Wordle-v0"])  # the profile's lengths
    assert (wordle.max_context_tokens, wordle.max_new_tokens) == (256, 16)


def test_explicit_flags_win_over_the_preset(no_gpu):
    config, line = parse_train("bc", [*DATA, "--model", "gpt2-mini", "--max-steps", "7",
                                      "--batch-size", "16", "--lr", "0.002", "--vocab-size", "700"])
    assert (config.model, config.max_steps, config.batch_size) == ("gpt2-mini", 7, 16)
    assert (config.lr, config.vocab_size) == (0.002, 700)
    assert "(model gpt2-mini, 7 steps, batch 16)" in line  # announces what will run


def test_preset_paper_gets_the_papers_settings(no_gpu):
    from lmrlgym.algos import mc

    config, line = parse_train("mc", ["--task", "Wordle-v0", "--preset", "paper"])
    paper = mc.preset("Wordle-v0")
    assert line is None and config.model == PAPER_MODEL["Wordle-v0"] == "gpt2"
    assert (config.max_steps, config.batch_size, config.lr) == (None, paper.batch_size, paper.lr)
    assert (config.beta, config.gamma) == (paper.beta, paper.gamma) == (64.0, 1.0)  # Table 3
    explicit, _ = parse_train("bc", [*DATA, "--preset=cpu", "--max-steps", "5"])
    assert explicit.max_steps == 5 and explicit.model == "gpt2-tiny"


def test_auto_is_paper_on_a_gpu_unless_the_device_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config, line = parse_train("bc", DATA)
    assert line is None and config.device == "cuda" and config.max_steps is None
    config, line = parse_train("bc", [*DATA, "--device", "cpu"])
    assert config.max_steps == 300 and line.startswith("--device cpu: using the CPU preset")
    choice = choose_preset("cpu", None, cuda=True)  # asked for: no "no GPU found" reason
    assert choice.device == "cuda" and choice.announcement("x") == "using the CPU preset (x)"
    with pytest.raises(ValueError, match="--preset 'gpu'"):
        choose_preset("gpu")


def test_eval_on_cpu_defaults_to_the_cpu_profiles_episode_count(no_gpu, tmp_path, capsys):
    eval_main(policy="maze-optimal", task="Maze-PO-v0", out=tmp_path / "ev")
    err = capsys.readouterr().err
    assert f"no GPU found: using the CPU preset ({CPU.eval['Maze-PO-v0']} episodes)" in err
    eval_main(policy="maze-optimal", task="Maze-PO-v0", out=tmp_path / "ev2", episodes=3)
    assert "CPU preset" not in capsys.readouterr().err  # --episodes given: nothing to announce
