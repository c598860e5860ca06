"""Data-parallel training: the pure helpers, then real 2-process CPU (gloo) jobs under torchrun.

The launched jobs run ``train()`` unchanged; a small driver script (written by the test)
only records each rank's trained parameters, or makes rank 1 fail on purpose.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from lmrlgym.algos import (
    MODEL_DIR,
    TOKENIZER_DIR,
    bc,
    distributed,
    filtered_bc,
    ilql,
    latest_checkpoint,
    load_policy,
    loop,
    mc,
    online_filtered_bc,
    ppo,
)
from lmrlgym.algos.checkpoint import export_lm
from lmrlgym.models.factory import build_model
from lmrlgym.models.tokenizer import train_tokenizer
from tests.algos.helpers import maze_dataset, spy_on
from tests.algos.online_runs import logged
from tests.algos.toy import TASK as TOY
from tests.algos.toy import toy_episodes

ROOT = Path(__file__).resolve().parents[2]
ALGOS = {"bc": bc, "filtered_bc": filtered_bc, "mc": mc, "ilql": ilql}

# Runs each job's train() in every launched process and saves the parameters the optimizer
# updated, gathered into full tensors under FSDP, as <out>/<label>.rank<r>.safetensors. A job
# with "rewind": k then moves its run back to step k's checkpoint and resumes it.
DRIVER = textwrap.dedent('''
    import importlib, json, shutil, sys, time
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from lmrlgym.algos import ALGORITHMS, algorithm, distributed, loop
    from tests.algos.helpers import spy_on

    out, mode, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    captured = {}
    make_optimizer = loop.make_optimizer

    def spy(params, *args, **kw):
        captured["optimizer"] = make_optimizer(params, *args, **kw)
        return captured["optimizer"]

    for name in ALGORITHMS:
        algorithm(name)  # imported before the spy replaces make_optimizer in each
    spy_on(loop, "make_optimizer", spy)
    if mode != "ok":  # rank 1 dies (or hangs) in its third optimizer step, after two checkpoints
        optimizer_step = loop.Loop.optimizer_step

        def failing(self, step):
            if distributed.world().rank == 1 and step == 2:
                if mode == "hang":
                    time.sleep(600)
                raise RuntimeError("injected failure on rank 1")
            return optimizer_step(self, step)

        loop.Loop.optimizer_step = failing
    rank = distributed.world_from_env().rank
    for label, job in jobs.items():
        module = importlib.import_module(f"lmrlgym.algos.{job['algo']}")
        if job["task"] == "Toy-Choice-v0":
            importlib.import_module("tests.algos.toy")  # registers the toy task
        run_dir = module.train(module.preset(job.get("task", "Maze-FO-v0"), **job["config"]))
        if job.get("rewind"):
            if rank == 0:
                ckpt = run_dir / "checkpoints"
                (ckpt / "latest").write_text(f"step_{job['rewind']:08d}\\n")
                for later in ckpt.glob("step_*"):
                    if int(later.name[5:]) > job["rewind"]:
                        shutil.rmtree(later)
                shutil.rmtree(run_dir / "model")
            distributed.barrier()
            module.train(module.preset(job.get("task", "Maze-FO-v0"), resume=str(run_dir)))
        params = captured["optimizer"].param_groups[0]["params"]
        state = {str(i): (p.full_tensor() if distributed.is_sharded(p) else p).detach().contiguous()
                 for i, p in enumerate(params)}
        sharded = sum(distributed.is_sharded(p) for p in params)
        save_file(state, f"{out}/{label}.rank{rank}.safetensors", metadata={"sharded": str(sharded)})
''')


def test_world_from_env_single_and_launched():
    assert distributed.world_from_env({}) == distributed.World()
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29500"}
    assert distributed.world_from_env(env) == distributed.World(rank=1, world_size=2, local_rank=1)


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "RANK is not"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "not in [0, WORLD_SIZE=2)"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR and MASTER_PORT not set"),
])
def test_world_from_env_bad_input(env, message):
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        distributed.world_from_env(env)


def test_shard_covers_the_global_batch_once():
    idx = np.arange(10, 17)  # 7 rows over 3 ranks: 3 + 2 + 2
    parts = [distributed.shard(idx, r, 3) for r in range(3)]
    assert [p.tolist() for p, _ in parts] == [[10, 11, 12], [13, 14], [15, 16]]
    assert all(real for _, real in parts)


def test_shard_of_a_batch_smaller_than_the_world_gives_weightless_rows():
    parts = [distributed.shard(np.array([5]), r, 2) for r in range(2)]
    assert parts[0][0].tolist() == [5] and parts[0][1]
    assert parts[1][0].tolist() == [5] and not parts[1][1]  # runs the collectives, weight 0


def test_rank_seed_keeps_rank_zero_on_the_run_seed():
    assert distributed.rank_seed(7, rank=0) == 7
    assert len({distributed.rank_seed(7, rank=r) for r in range(4)}) == 4


def test_single_process_helpers_are_identities():
    loss = torch.tensor(2.0)
    out, metrics, attended = distributed.DataParallel({}, seed=1).weigh(loss, {"train/loss": loss}, 5, 9)
    assert out is loss and attended == 9 and metrics["train/action_tokens"] == 5
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.device_for("cuda") == "cuda"


def test_mixed_precision_rejects_unknown_values():
    with pytest.raises(ValueError, match="--mixed-precision must be one of no, bf16, fp16"):
        distributed.MixedPrecision("fp8", "cpu")


# --- launched jobs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    # Dropout 0: a 2-rank job draws different masks than one process (rank_seed), so only
    # dropout-free runs can match bit for bit up to summation order.
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=320, vocab_size=512,
                        bos_token_id=0, eos_token_id=1, pad_token_id=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(str(root / "micro"))
    return {"root": root, "model": str(root / "micro"),
            "data": maze_dataset(root / "maze", 40, "maze-mixture(p_solver=0.5)")}


def settings(assets, out, **kw):
    return {**dict(data=assets["data"], out=str(out), model=assets["model"], vocab_size=300,
                   batch_size=7, max_steps=3, log_every=1, tensorboard=False), **kw}


# BC also runs an env evaluation at the end: rank 0 alone samples from the gathered weights.
FSDP_EXTRA = {"bc": dict(save_every=1, eval_episodes=1), "ilql": dict(save_every=1)}


def fsdp_settings(assets, root):
    return {algo: settings(assets, root / f"{algo}_fsdp", data_parallel="fsdp", **extra)
            for algo, extra in FSDP_EXTRA.items()}


def start(tmp_path, runs, mode="ok"):
    """torchrun with 2 gloo processes running the driver's ``runs`` (see :func:`jobs`), started."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(driver), str(tmp_path), mode, json.dumps(runs)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(job):
    """The started job's end: its ``returncode``, ``stdout`` and ``stderr``."""
    try:
        stdout, stderr = job.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        job.kill()
        raise
    return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)


def launch(tmp_path, runs, mode="ok"):
    return finish(start(tmp_path, runs, mode))


def single_process(module, kwargs, monkeypatch, task="Maze-FO-v0"):
    captured = {}
    make_optimizer = loop.make_optimizer

    def spy(params, *args, **kw):
        captured["params"] = list(params)
        return make_optimizer(captured["params"], *args, **kw)

    spy_on(loop, "make_optimizer", spy, monkeypatch.setattr)
    run_dir = module.train(module.preset(task, **kwargs))
    monkeypatch.undo()  # a second call must spy on the real make_optimizer, not on this spy
    return run_dir, [p.detach() for p in captured["params"]]


def jobs(task="Maze-FO-v0", **configs):
    """``label=(algo, config)`` or ``label=(algo, config, rewind)`` -> the driver's jobs."""
    return {label: {"algo": spec[0], "config": spec[1], "rewind": spec[2] if len(spec) > 2 else None,
                    "task": task}
            for label, spec in configs.items()}


def assert_ranks_equal_one_process(tmp_path, label, params):
    rank0 = load_file(str(tmp_path / f"{label}.rank0.safetensors"))
    rank1 = load_file(str(tmp_path / f"{label}.rank1.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), f"{label}: ranks diverged"
    assert len(params) == len(rank0)
    for i, p in enumerate(params):
        torch.testing.assert_close(rank0[str(i)], p, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, i=i: f"{label} parameter {i}: {m}")
    return max(float((rank0[str(i)] - p).abs().max()) for i, p in enumerate(params))


def losses(run_dir):
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [x["train/loss"] for x in lines if "train/loss" in x]


@pytest.mark.slow(seconds=16, group="gloo_job")  # the first of the group: runs both jobs
def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(assets, gloo_job, tmp_path, monkeypatch):
    # batch 7 over 2 ranks: slices of 4 and 3 rows with different token counts, so a plain
    # average of per-rank means would NOT match; the token-weighted sync must.
    root = gloo_job
    for algo, module in ALGOS.items():
        run_dir, params = single_process(module, settings(assets, tmp_path / f"{algo}_1"), monkeypatch)
        assert_ranks_equal_one_process(root, algo, params)
        two, one = losses(root / f"{algo}_2ranks"), losses(run_dir)
        assert len(two) == len(one) == 3
        np.testing.assert_allclose(two, one, rtol=1e-5, err_msg=algo)
        # rank 0 alone wrote the run: one metrics line per step, the export and checkpoints
        assert (root / f"{algo}_2ranks" / "model" / "config.json").exists()
        assert (root / f"{algo}_2ranks" / "checkpoints" / "latest").read_text().strip() == "step_00000003"


@pytest.mark.slow(seconds=12)
def test_a_failing_rank_stops_the_job_named_and_keeps_the_last_checkpoint(assets, tmp_path):
    run = tmp_path / "bc_fail"
    job = launch(tmp_path, jobs(bc=("bc", settings(assets, run, max_steps=6, save_every=1))), mode="fail")
    assert job.returncode != 0
    log = job.stdout + job.stderr
    assert "injected failure on rank 1" in log
    assert "[rank 1] RuntimeError: injected failure on rank 1" in log  # our rank-prefixed report
    # torchrun's summary names rank 1 as the root cause, with its traceback (error file)
    assert re.search(r"Root Cause.*?rank\s*: 1 \(local_rank: 1\).*?injected failure", log, re.DOTALL)
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step_00000002"
    # The surviving checkpoint resumes in a single process and finishes the run.
    run_dir = bc.train(bc.preset("Maze-FO-v0", resume=str(run)))
    assert len(losses(run_dir)) == 6 and (run_dir / "model" / "config.json").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32_with_fp32_weights(precision, assets, tmp_path, monkeypatch):
    ref_dir, ref = single_process(bc, settings(assets, tmp_path / "fp32", max_steps=2), monkeypatch)
    run_dir, params = single_process(bc, settings(assets, tmp_path / precision, max_steps=2,
                                                  mixed_precision=precision), monkeypatch)
    assert all(p.dtype == torch.float32 for p in params)  # autocast only; master weights fp32
    np.testing.assert_allclose(losses(run_dir), losses(ref_dir), rtol=1e-2)
    assert any(not torch.equal(p, r) for p, r in zip(params, ref, strict=True))  # it did run in low precision


@pytest.mark.slow(seconds=6, group="gloo_job")
def test_a_hung_rank_makes_the_others_time_out(hung_job):
    run, job = hung_job
    job = finish(job)
    assert job.returncode != 0
    log = job.stdout + job.stderr
    # rank 0 waited --dist-timeout seconds in the gradient all-reduce, then failed by itself
    assert re.search(r"Root Cause.*?rank\s*: 0 \(local_rank: 0\)", log, re.DOTALL), log[-3000:]
    assert "[rank 0] RuntimeError: rank 0/2: gradient all-reduce failed: another rank died or hung" in log
    assert latest_checkpoint(run).name == "step_00000002"


@pytest.mark.slow(seconds=2, group="gloo_job")
def test_fsdp_two_gloo_ranks_equal_one_process_and_resume_from_a_sharded_checkpoint(
        assets, gloo_job, tmp_path, monkeypatch):
    # Each run trains 3 steps, is rewound to its step-2 checkpoint (full weights and optimizer
    # state gathered by both ranks, written by rank 0) and resumed under FSDP: the optimizer
    # state is sliced back into shards. ILQL adds an FSDP-sharded EMA target trunk and extra
    # bootstrap forwards that only some ranks run (FSDP_EXTRA: BC's env evaluation).
    root = gloo_job
    fsdp = fsdp_settings(assets, root)
    for algo, config in fsdp.items():
        module = ALGOS[algo]
        run_dir, params = single_process(module, settings(assets, tmp_path / f"{algo}_1", **FSDP_EXTRA[algo]),
                                         monkeypatch)
        assert_ranks_equal_one_process(root, f"{algo}_fsdp", params)
        with safe_open(str(root / f"{algo}_fsdp.rank0.safetensors"), "pt") as f:
            assert int(f.metadata()["sharded"]) == 12  # the block's weights were DTensor shards
        two = Path(config["out"])
        np.testing.assert_allclose(losses(two), losses(run_dir), rtol=1e-5, err_msg=algo)
        evals = [[x for x in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                  if "eval/loss" in x] for d in (two, run_dir)]
        assert evals[0][-1].keys() == evals[1][-1].keys()
        np.testing.assert_allclose([evals[0][-1][k] for k in sorted(evals[1][-1])],
                                   [evals[1][-1][k] for k in sorted(evals[1][-1])], rtol=1e-4, err_msg=algo)
        # The checkpoint rank 0 wrote holds the full (gathered) weights, in the one-process layout.
        for name in ("lm.safetensors", "state.json", "state.safetensors"):
            assert (two / "checkpoints" / "step_00000003" / name).exists()
        ckpt, ref = (load_file(str(d / "checkpoints" / "step_00000003" / "lm.safetensors"))
                     for d in (two, run_dir))
        assert ckpt.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(ckpt[k], ref[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k, algo=algo: f"{algo} {k}: {m}")
        policy = load_policy(two)  # the export reloads
        assert policy.model.config.n_layer == 1


def test_fsdp_rejects_fp16_and_lora():
    with pytest.raises(ValueError, match="fsdp with --mixed-precision fp16"):
        bc.BCConfig(data_parallel="fsdp", mixed_precision="fp16")
    with pytest.raises(ValueError, match="fsdp with --lora"):
        bc.BCConfig(data_parallel="fsdp", lora="r=4,alpha=8")


def test_transformer_blocks_are_the_declared_no_split_classes(assets):
    lm = GPT2LMHeadModel.from_pretrained(assets["model"])
    blocks = distributed.transformer_blocks({"lm": lm, "copy": lm})
    assert [type(b).__name__ for b in blocks] == ["GPT2Block"] * lm.config.n_layer  # once each
    assert all(b is h for b, h in zip(blocks, lm.transformer.h, strict=True))
    assert distributed.transformer_blocks({"head": torch.nn.Linear(2, 2)}) == []


# --- online methods ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_init(assets):
    """An untrained micro GPT-2 with a tokenizer of the toy task's text, as a finished run."""
    run = assets["root"] / "toy_init"
    run.mkdir()
    tokenizer = train_tokenizer((t.text for e in toy_episodes(50, 0) for t in e.turns), 300)
    torch.manual_seed(0)
    export_lm(build_model(assets["model"], tokenizer, dropout=0.0), tokenizer, run)
    tokenizer.save_pretrained(str(run / TOKENIZER_DIR))
    return str(run)


def online_settings(init, out, **kw):
    # 7 episodes in batches of 2: rank 0 plays batches 0 and 2 (and the short last one, 3),
    # rank 1 batch 1; steps of 3 rows split 2 + 1 over the ranks. lr 1e-4 as in the offline
    # test: at 1e-3 Adam turns float noise in near-zero gradients into 5e-5 differences in a
    # few elements (1 in 4000).
    return {**dict(init_from=init, out=str(out), n_rounds=2, rollouts_per_round=7,
                   rollout_batch_size=2, batch_size=3, epochs_per_round=2, lr=1e-4,
                   max_new_tokens=3, max_context_tokens=32, tensorboard=False), **kw}


ONLINE = {"ppo": (ppo, dict(value_head_bias=0.0, kl_target=0.1, kl_horizon=20)),
          "online_filtered_bc": (online_filtered_bc, dict(keep="top_fraction", top_fraction=0.5))}


@pytest.fixture(scope="module")
def hung_job(assets):
    """A BC job whose rank 1 hangs in its third step, started in the background before
    ``gloo_job``: it spends most of its time waiting out ``--dist-timeout``, which that job's
    work fills. Returns the run directory and the started job."""
    root = assets["root"] / "hung_job"
    root.mkdir()
    run = root / "bc_hang"
    config = settings(assets, run, max_steps=6, save_every=1, dist_timeout=8.0)
    job = start(root, jobs(bc=("bc", config)), mode="hang")
    yield run, job
    if job.poll() is None:  # the test did not wait for it
        job.kill()
        job.wait()


@pytest.fixture(scope="module")
def gloo_job(assets, toy_init, hung_job):
    """The directory of one torchrun job (2 gloo ranks) that ran the launched runs of the
    three tests marked ``group="gloo_job"``: the DDP runs of every offline method (label: the
    method), the FSDP runs rewound to step 2 and resumed (``<method>_fsdp``) and the online
    runs on the toy task. Starting a job (three processes importing torch and transformers,
    ~13 CPU-s) costs more than its runs, so the tests share one; the test suite's scheduler
    keeps a group on one worker (tests/conftest.py), with ``hung_job`` running beside it."""
    root = assets["root"] / "gloo_job"
    root.mkdir()
    runs = {**jobs(**{algo: (algo, settings(assets, root / f"{algo}_2ranks")) for algo in ALGOS}),
            **jobs(**{f"{algo}_fsdp": (algo, config, 2) for algo, config in fsdp_settings(assets, root).items()}),
            **jobs(task=TOY, **{algo: (algo, online_settings(toy_init, root / f"{algo}_2ranks", **extra))
                                for algo, (_, extra) in ONLINE.items()})}
    job = launch(root, runs)
    assert job.returncode == 0, job.stderr[-3000:]
    return root


@pytest.mark.slow(seconds=1, group="gloo_job")
def test_online_methods_on_two_gloo_ranks_equal_one_process_with_the_same_rollouts(
        toy_init, gloo_job, tmp_path, monkeypatch):
    # Each rank plays its share of every round's episodes; the update shards each microbatch
    # and syncs token-weighted gradients, as the offline loops do. The adaptive KL controller
    # and PPO's advantage whitening use the whole round.
    root = gloo_job
    for algo, (module, extra) in ONLINE.items():
        one, params = single_process(module, online_settings(toy_init, tmp_path / f"{algo}_1", **extra),
                                     monkeypatch, task=TOY)
        assert_ranks_equal_one_process(root, algo, params)
        init = load_file(str(Path(toy_init) / "model" / "model.safetensors"))["transformer.wte.weight"]
        assert (params[0] - init).abs().max() > 1e-4  # the embeddings (parameter 0) trained
        run = root / f"{algo}_2ranks"
        a, b = logged(run), logged(one)
        assert [x["step"] for x in a] == [x["step"] for x in b] == [1, 2]
        for x, y in zip(a, b, strict=True):  # the same rollouts, global metrics
            assert {k: v for k, v in x.items() if k.startswith("rollout/")} == \
                   {k: v for k, v in y.items() if k.startswith("rollout/")}
            keys = sorted(k for k in y if k.startswith("train/"))
            assert sorted(k for k in x if k.startswith("train/")) == keys
            np.testing.assert_allclose([x[k] for k in keys], [y[k] for k in keys], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{algo}: {keys}")
        assert (run / "model" / "config.json").exists()
        assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"


def test_a_rollout_batch_is_the_same_whichever_batches_a_rank_plays(toy_init):
    # What makes the ranks' shares add up to a single process's round: each batch samples from
    # its own seed, so playing batches [2, 1] alone gives the same episodes as playing all.
    from lmrlgym.algos import online
    from lmrlgym.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(Path(toy_init) / TOKENIZER_DIR)
    lm = build_model(str(Path(toy_init) / MODEL_DIR), tokenizer, dropout=0.0)
    seeds, samplers = online.rollout_seeds(3, 0, 5), [11, 22, 33]

    def play(batches):
        policy = online.LMPolicy(lm, tokenizer, online.Decoding(max_new_tokens=3, seed=0),
                                 max_context_tokens=32)
        out = online.collect_rollouts(policy, TOY, seeds, batch_size=2, sampler_seeds=samplers,
                                      batches=batches)
        return [(r.episode.seed, r.action_ids) for r in out]

    every = play(None)
    assert [s for s, _ in every] == seeds
    assert play([2, 1]) == every[4:] + every[2:4]
    assert len({tuple(map(tuple, ids)) for _, ids in every}) > 1  # the samples do differ
