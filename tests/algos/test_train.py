"""Training loops: short smoke runs, determinism, resume, CLI and value-guided decoding."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmrlgym.algos import ALGORITHMS, algorithm, bc, filtered_bc, ilql, loop, mc, ppo
from lmrlgym.algos.backbone import check_usable
from lmrlgym.algos.cli import parse_config, train_main
from lmrlgym.envs import TASK_IDS
from lmrlgym.models.factory import PRESETS
from tests.algos.helpers import maze_dataset, micro_model, rewound_copy, run_policy, spy_on

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
    part = rewound_copy(full, tmp_path / "part", 3)
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


def test_a_resumed_run_logs_what_the_uninterrupted_run_logged_from_any_cwd(assets, tmp_path,
                                                                           monkeypatch):
    # Issue 13 item 8. Checkpoints at 3 fall inside the logging interval 1-4: the running means
    # of steps 1-3 travel in the checkpoint. The run is started with relative paths and resumed
    # from another working directory.
    data = Path(assets["data"])
    monkeypatch.chdir(data.parent)
    full = bc.train(config(bc, assets, tmp_path / "full", data=data.name, max_steps=6,
                           log_every=4, save_every=3))
    saved = json.loads((full / "config.json").read_text())
    assert saved["data"] == str(data)
    part = rewound_copy(full, tmp_path / "part", 3)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    bc.train(bc.BCConfig(resume=str(part)))

    def logged(run_dir):
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().split("\n") if x]
        return [{k: v for k, v in x.items() if not k.startswith("time/")} for x in lines]

    assert [x["step"] for x in logged(full) if "train/loss" in x] == [4, 6]
    assert logged(part) == logged(full)
    # A run dir of an older version saved the path as given: from elsewhere, a clear error.
    (part / "config.json").write_text(json.dumps({**saved, "data": data.name}))
    with pytest.raises(FileNotFoundError, match="relative to the directory the run was started"):
        bc.train(bc.BCConfig(resume=str(part)))


def test_new_run_refuses_an_existing_run_and_resume_needs_a_run(assets, tmp_path):
    run_dir = bc.train(config(bc, assets, tmp_path / "run", max_steps=1))
    with pytest.raises(FileExistsError, match="--resume"):
        bc.train(config(bc, assets, run_dir, max_steps=1))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        bc.train(bc.BCConfig(resume=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="'bc', not 'mc'"):
        mc.train(mc.MCConfig(resume=str(run_dir)))


@pytest.mark.parametrize("bad,error,match", [
    ({"data": "missing"}, FileNotFoundError, "missing"),
    ({"data": "corrupt.jsonl"}, ValueError, "corrupt.jsonl"),
    ({"task": "Maze-F0-v0"}, KeyError, "Maze-F0-v0"),
    ({"model": "./models/nope"}, FileNotFoundError, "neither a preset"),
    ({"model": "."}, FileNotFoundError, "no config.json"),
    ({"init_from": "runs/none"}, FileNotFoundError, "not a finished training run"),
])
def test_a_run_that_cannot_start_leaves_nothing_behind(bad, error, match, assets, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.jsonl").write_text('{"task": "Maze-FO-v0", "turns": [\n')
    out = tmp_path / "runs" / "x"
    with pytest.raises(error, match=match):
        bc.train(dataclasses.replace(config(bc, assets, out), **bad))
    assert not out.exists() and not (tmp_path / "runs" / "x").exists()


class Stop(Exception):
    pass


def _stop(step, n_steps, metrics, phase="train"):
    if phase == "train":
        raise Stop  # a run killed before its first checkpoint


def test_a_run_without_a_checkpoint_starts_again(assets, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        bc.train(config(bc, assets, out, max_steps=2), progress=_stop)
    assert (out / "config.json").exists() and (out / "metrics.jsonl").exists()
    assert not (out / "checkpoints").exists()
    (out / "notes.txt").write_text("mine")
    # The same --out starts it again (with the new flags), from a clean directory.
    bc.train(config(bc, assets, out, max_steps=3))
    assert len(metrics(out)) == 3 and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["max_steps"] == 3

    # --resume on a run without a checkpoint restarts it with its saved config.
    other = tmp_path / "other"
    with pytest.raises(Stop):
        bc.train(config(bc, assets, other, max_steps=2), progress=_stop)
    args = ["bc", "--resume", str(other)]
    assert train_main(args) == other
    assert f"{other} never reached a checkpoint" in capsys.readouterr().err
    assert len(metrics(other)) == 2 and (other / "model").is_dir()


def test_a_config_json_that_is_not_a_runs_is_never_cleared(assets, tmp_path):
    out = tmp_path / "hf_model"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "gpt2"}')
    (out / "tokenizer").mkdir()
    with pytest.raises(FileExistsError, match="another config.json"):
        bc.train(config(bc, assets, out))
    assert (out / "tokenizer").is_dir()


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_every_task_preset_fits_every_model_preset(algo):
    # Issue 13 item 4: the per-task defaults give runs that can be evaluated and served.
    module = algorithm(algo)
    for task in TASK_IDS:
        for model, shape in PRESETS.items():
            config = module.preset(task, model=model)
            assert config.max_context_tokens + config.max_new_tokens <= shape.n_positions, task
            check_usable(config)


def test_settings_the_finished_run_could_not_use_are_refused_before_any_work(assets, tmp_path):
    # Wordle's former 2048 + 128 on a 2048-position preset: refused before the (Maze) data is
    # read and before the run directory exists.
    with pytest.raises(ValueError, match="= 2176 exceeds the 2048 positions of model 'gpt2-mini'"):
        bc.train(bc.preset("Wordle-v0", data=assets["data"], out=str(tmp_path / "wordle"),
                           max_context_tokens=2048))
    # A loaded model (320 positions), and an online run's init_from model.
    with pytest.raises(ValueError, match="= 324 exceeds the 320 positions"):
        bc.train(config(bc, assets, tmp_path / "micro", max_context_tokens=316))
    init = tmp_path / "init"
    shutil.copytree(assets["model"], init / "model")
    (init / "tokenizer").mkdir()
    with pytest.raises(ValueError, match="= 324 exceeds the 320 positions"):
        ppo.train(ppo.preset("Maze-FO-v0", init_from=str(init), out=str(tmp_path / "ppo"),
                             max_context_tokens=316))
    assert not any((tmp_path / name).exists() for name in ("wordle", "micro", "ppo"))
    for bad in (dict(max_context_tokens=1), dict(temperature=0.0), dict(temperature=float("nan"))):
        with pytest.raises(ValueError, match="--max-context-tokens|--temperature"):
            bc.preset("Maze-FO-v0", **bad)
    assert bc.preset("Maze-FO-v0", temperature=0.0, greedy=True).greedy
    with pytest.raises(ValueError, match="--rollout-temperature"):
        ppo.preset("Maze-FO-v0", rollout_temperature=0.0)


def test_cli_trains_and_the_run_loads_as_a_value_guided_policy(assets, tmp_path):
    out = tmp_path / "cli"
    run_dir = train_main(["ilql", "--task", "Maze-FO-v0", "--data", assets["data"], "--out",
                          str(out), "--model", assets["model"], "--vocab-size", "300",
                          "--batch-size", "8", "--max-steps", "2", "--beta", "3",
                          "--no-tensorboard", "--preset", "paper"])
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
        parse_config("mc", ["--task", "Wordle-v0", "--preset", "paper", "--help"])
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


@pytest.mark.slow(seconds=6)
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
