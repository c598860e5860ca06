"""Training loops: short smoke runs, determinism, resume, CLI and value-guided decoding."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmrlgym.algos import bc, filtered_bc, ilql, loop, mc
from lmrlgym.algos.cli import parse_config, train_main
from tests.algos.helpers import maze_dataset, micro_model, run_policy, spy_on

MODULES = {"bc": bc, "filtered_bc": filtered_bc, "mc": mc, "ilql": ilql}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("algos")
    return {"model": micro_model(root / "micro"),
            "data": maze_dataset(root / "mixture", 40, "maze-mixture(p_solver=0.5)")}


def config(module, assets, out, **kw):
    base = dict(data=assets["data"], out=str(out), model=assets["model"], vocab_size=300,
                batch_size=8, max_steps=2, log_every=1, tensorboard=False)
    return module.preset("Maze-FO-v0", **{**base, **kw})


def metrics(run_dir, key="train/loss"):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x[key] for x in lines if key in x]


@pytest.mark.parametrize("algo", list(MODULES))
def test_three_steps_change_every_trainable_parameter(algo, assets, tmp_path, monkeypatch):
    # Three steps, not two: heads start with a zero output layer (docs/algorithms.md §2.2), so
    # their first layer gets no gradient until the output layer has moved, and ILQL's V loss is
    # exactly 0 on the first step (V and the target Qs all start at head_bias).
    captured = {}
    make_optimizer = loop.make_optimizer

    def spy(params, *args, **kw):
        captured["params"] = list(params)
        captured["before"] = [p.detach().clone() for p in captured["params"]]
        return make_optimizer(captured["params"], *args, **kw)

    spy_on(loop, "make_optimizer", spy, monkeypatch.setattr)
    run_dir = MODULES[algo].train(config(MODULES[algo], assets, tmp_path / "run", max_steps=3))
    unchanged = [i for i, (p, b) in enumerate(zip(captured["params"], captured["before"], strict=True))
                 if torch.equal(p.detach(), b)]
    assert not unchanged, f"{len(unchanged)} of {len(captured['params'])} parameters did not change"
    losses = metrics(run_dir)
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert (run_dir / "model" / "config.json").exists() and (run_dir / "tokenizer").is_dir()
    assert json.loads((run_dir / "config.json").read_text())["algo"] == algo


@pytest.mark.parametrize("algo", ["bc", "ilql"])
def test_same_seed_gives_identical_losses(algo, assets, tmp_path):
    runs = [MODULES[algo].train(config(MODULES[algo], assets, tmp_path / f"run{k}", max_steps=20))
            for k in range(2)]
    first, second = metrics(runs[0]), metrics(runs[1])
    assert len(first) == 20 and first == second
    other = MODULES[algo].train(config(MODULES[algo], assets, tmp_path / "other", max_steps=3,
                                       seed=2))
    assert metrics(other)[:3] != first[:3]


def test_resume_reaches_the_uninterrupted_weights(assets, tmp_path):
    full = ilql.train(config(ilql, assets, tmp_path / "full", max_steps=6, save_every=3,
                             keep_checkpoints=2))
    # The same run stopped after its step-3 checkpoint: drop what came later, then resume.
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "model")
    (part / "heads.safetensors").unlink()
    shutil.rmtree(part / "checkpoints" / "step_00000006")
    (part / "checkpoints" / "latest").write_text("step_00000003\n")
    resumed = ilql.train(ilql.ILQLConfig(resume=str(part)))
    assert resumed == part
    a, b = load_file(full / "model" / "model.safetensors"), load_file(part / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = load_file(full / "heads.safetensors"), load_file(part / "heads.safetensors")
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
    ta = load_file(full / "checkpoints" / "step_00000006" / "target.safetensors")
    tb = load_file(part / "checkpoints" / "step_00000006" / "target.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert metrics(full) == metrics(part)


def test_new_run_refuses_an_existing_run_and_resume_needs_a_run(assets, tmp_path):
    run_dir = bc.train(config(bc, assets, tmp_path / "run", max_steps=1))
    with pytest.raises(FileExistsError, match="--resume"):
        bc.train(config(bc, assets, run_dir, max_steps=1))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        bc.train(bc.BCConfig(resume=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="'bc', not 'mc'"):
        mc.train(mc.MCConfig(resume=str(run_dir)))


def test_cli_trains_and_the_run_loads_as_a_value_guided_policy(assets, tmp_path):
    out = tmp_path / "cli"
    run_dir = train_main(["ilql", "--task", "Maze-FO-v0", "--data", assets["data"], "--out",
                          str(out), "--model", assets["model"], "--vocab-size", "300",
                          "--batch-size", "8", "--max-steps", "2", "--beta", "3",
                          "--no-tensorboard"])
    assert run_dir == out
    saved = json.loads((out / "config.json").read_text())
    assert saved["beta"] == 3.0 and saved["tau"] == 0.99  # Maze preset, flag override
    policy = run_policy(out, greedy=True)
    assert policy.logits_adjust is not None and policy.beta == 3.0
    assert all(a.endswith("\n") for a in policy.act_turns([[t] for t in _maze_obs()]))
    with pytest.raises(ValueError, match="unknown algorithm 'bcc'.*Did you mean 'bc'"):
        parse_config("bcc", [])


def test_cli_help_comes_from_the_config_docstrings(capsys):
    with pytest.raises(SystemExit):
        parse_config("mc", ["--task", "Wordle-v0", "--help"])
    text = capsys.readouterr().out
    assert "Decoding weight of Q" in text and "(default: 64.0)" in text  # Wordle's paper β


def _maze_obs():
    from lmrlgym import make

    env = make("Maze-FO-v0")
    obs, info = env.reset(seed=0)
    return info["turns"]


@pytest.mark.parametrize("beta", [0.0, 8.0])
def test_value_guided_decoding_is_the_behaviour_policy_at_init_or_beta_zero(beta):
    torch.manual_seed(0)
    h, logits = torch.randn(5, 16), torch.randn(5, 40)
    heads = ilql.make_heads(ilql.ILQLConfig(head="mlp", head_bias=-4.1), 16, 40)
    assert torch.equal(ilql.logits_adjust(heads, beta)(h, logits), logits)
    q_heads = mc.make_heads(mc.MCConfig(head="linear", head_bias=0.0), 16, 40)
    assert torch.equal(mc.logits_adjust(q_heads, beta)(h, logits), logits)
    torch.nn.init.normal_(q_heads["q"].linear.weight)  # a trained head changes the policy unless β = 0
    assert torch.equal(mc.logits_adjust(q_heads, beta)(h, logits), logits) == (beta == 0.0)


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_weights(assets, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["train", "bc", "--task", "Maze-FO-v0", "--data", assets["data"], "--model",
            assets["model"], "--vocab-size", "300", "--batch-size", "8", "--max-steps", "80",
            "--save-every", "5", "--no-tensorboard"]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lmrlgym", *args, "--out", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = int(latest.read_text().strip().removeprefix("step_"))
    assert step % 5 == 0 and 5 <= step <= 80  # a complete checkpoint, whenever the kill landed
    train_main(["bc", "--resume", str(killed)])
    full = train_main([*args[1:], "--out", str(tmp_path / "full")])
    a = load_file(killed / "model" / "model.safetensors")
    b = load_file(full / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("algo", ["mc", "ilql"])
def test_value_methods_log_the_maze_value_map_and_diagnose_draws_it(algo, assets, tmp_path,
                                                                    capsys):
    from lmrlgym.cli import main

    run_dir = MODULES[algo].train(config(MODULES[algo], assets, tmp_path / "run", max_steps=3,
                                         eval_every=3))
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [x for x in logged if "eval/value_rank_corr" in x][-1]
    assert -1.0 <= last["eval/value_rank_corr"] <= 1.0
    assert last["eval/move_accuracy"] in {k / 25 for k in range(26)}  # a share of 25 cells
    main(["diagnose", "values", "--run", str(run_dir), "--out", str(tmp_path / "map.png")])
    printed = capsys.readouterr().out
    assert f"Spearman ρ(V, optimal value) = {last['eval/value_rank_corr']:.3f}" in printed
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"


def test_diagnose_values_refuses_a_run_without_value_heads(assets, tmp_path, capsys):
    from lmrlgym.cli import main

    run_dir = bc.train(config(bc, assets, tmp_path / "bc", max_steps=1))
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", "values", "--run", str(run_dir)])
    assert exit_info.value.code == 2
    assert "has no value heads" in capsys.readouterr().err
