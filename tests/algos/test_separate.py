"""MC and ILQL with ``value_model="separate"`` (docs/algorithms.md §2.3): only the value trunk and
heads train, π_β is the frozen BC model, the export round-trips through ``load_policy``, and
resume is exact."""

import dataclasses
import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

from lmrlgym import make
from lmrlgym.algos import backbone, bc, ilql, load_policy, loop, mc
from lmrlgym.algos.cli import parse_config
from tests.algos.helpers import maze_dataset, micro_model, run_policy, spy_on

MODULES = {"mc": mc, "ilql": ilql}
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("separate")
    data = maze_dataset(root / "mixture", 40, "maze-mixture(p_solver=0.5)")
    bc_run = bc.train(bc.preset("Maze-FO-v0", data=data, out=str(root / "bc"),
                                model=micro_model(root / "micro"), vocab_size=300, batch_size=8,
                                max_steps=3, tensorboard=False))
    return {"root": root, "data": data, "bc": bc_run}


def config(module, assets, out, **kw):
    base = dict(data=assets["data"], out=str(out), init_from=str(assets["bc"]), batch_size=8,
                max_steps=3, log_every=1, tensorboard=False, value_model="separate")
    return module.preset("Maze-FO-v0", **{**base, **kw})


@pytest.fixture(scope="module")
def runs(assets):
    """Each method's separate run, with what it built: the frozen policy, the value trunk, the
    optimised parameters and the training loop (whose ``make_policy`` is the live policy)."""
    out = {}
    for algo, module in MODULES.items():
        seen = {}
        make_optimizer, value_trunk, Loop = loop.make_optimizer, backbone.value_trunk, loop.Loop

        def optimizer_spy(params, *args, seen=seen, make_optimizer=make_optimizer, **kw):
            seen["params"] = list(params)
            return make_optimizer(seen["params"], *args, **kw)

        def trunk_spy(lm, config, seen=seen, value_trunk=value_trunk):
            seen["lm"], seen["trunk"] = lm, value_trunk(lm, config)
            return seen["trunk"]

        class RecordingLoop(Loop):
            def __init__(self, *args, seen=seen, **kw):
                super().__init__(*args, **kw)
                seen["loop"] = self

        RecordingLoop.__name__ = "Loop"
        with pytest.MonkeyPatch.context() as mp:
            for home, name, spy in ((loop, "make_optimizer", optimizer_spy),
                                    (backbone, "value_trunk", trunk_spy),
                                    (loop, "Loop", RecordingLoop)):
                spy_on(home, name, spy, mp.setattr)
            seen["run"] = module.train(config(module, assets, assets["root"] / algo))
        out[algo] = seen
    return out


def losses(run_dir, key="train/loss"):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x[key] for x in lines if key in x]


def maze_turns(n=6):
    env = make("Maze-FO-v0")
    return [env.reset(seed=s)[1]["turns"] for s in range(n)]


@pytest.mark.parametrize("algo", list(MODULES))
def test_only_the_value_trunk_and_heads_train(algo, assets, runs):
    run = runs[algo]
    lm, trunk, params = run["lm"], run["trunk"], {id(p) for p in run["params"]}
    trunk_params = {id(p) for p in trunk.parameters()}
    n_heads = len(list(MODULES[algo].make_heads(MODULES[algo].preset("Maze-FO-v0"), 4, 4).parameters()))
    assert trunk_params <= params and len(params) == len(trunk_params) + n_heads
    assert not params & {id(p) for p in lm.parameters()}
    assert not any(p.requires_grad for p in lm.parameters())
    assert len(losses(run["run"])) == 3 and all(map(torch.isfinite, torch.tensor(losses(run["run"]))))
    assert losses(run["run"], "train/bc_loss") == []  # no BC term
    # The exported policy is the BC model, weight for weight; the value trunk has moved.
    bc_w = load_file(assets["bc"] / "model" / WEIGHTS)
    policy_w = load_file(run["run"] / "model" / WEIGHTS)
    value_w = load_file(run["run"] / "value_model" / WEIGHTS)
    assert policy_w.keys() == bc_w.keys() == value_w.keys()
    assert all(torch.equal(policy_w[k], bc_w[k]) for k in bc_w)
    assert not all(torch.equal(value_w[k], bc_w[k]) for k in bc_w)


@pytest.mark.parametrize("algo", list(MODULES))
def test_at_beta_zero_the_policy_is_the_bc_policy(algo, assets, runs):
    turns = maze_turns()
    for seed in (0, 1):
        expected = run_policy(assets["bc"], seed=seed).act_turns(turns)
        assert run_policy(runs[algo]["run"], beta=0.0, seed=seed).act_turns(turns) == expected
    assert expected != run_policy(assets["bc"], seed=0).act_turns(turns)  # sampling, not fixed


@pytest.mark.parametrize("algo", list(MODULES))
def test_the_exported_run_loads_as_the_live_policy(algo, runs):
    live = runs[algo]["loop"].make_policy()
    loaded = load_policy(runs[algo]["run"])
    turns = maze_turns()
    assert loaded.act_turns(turns) == live.act_turns(turns)
    # The same numbers at every stage: policy logits, value trunk states, guided logits.
    ids = torch.tensor([loaded.prompt(turns[0])])
    with torch.no_grad():
        a, b = (p.model(ids, output_hidden_states=True) for p in (live, loaded))
        assert torch.equal(a.logits, b.logits)
        assert torch.equal(a.hidden_states[-1], b.hidden_states[-1])
        h, logits = a.hidden_states[-1][:, -1], a.logits[:, -1, : len(loaded.tokenizer)]
        assert torch.equal(live.logits_adjust(h, logits), loaded.logits_adjust(h, logits))
        assert not torch.equal(live.logits_adjust(h, logits), logits)  # the heads do guide


def test_separate_ilql_resumes_to_the_uninterrupted_run(assets, tmp_path):
    full = ilql.train(config(ilql, assets, tmp_path / "full", max_steps=6, save_every=3))
    # The same run stopped after its step-3 checkpoint: drop what came later, then resume.
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for name in ("model", "value_model"):
        shutil.rmtree(part / name)
    (part / "heads.safetensors").unlink()
    shutil.rmtree(part / "checkpoints" / "step_00000006")
    (part / "checkpoints" / "latest").write_text("step_00000003\n")
    assert ilql.train(ilql.ILQLConfig(resume=str(part))) == part
    for name in ("model/" + WEIGHTS, "value_model/" + WEIGHTS, "heads.safetensors",
                 "checkpoints/step_00000006/target.safetensors"):
        a, b = load_file(full / name), load_file(part / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert losses(full) == losses(part) and len(losses(full)) == 6


@pytest.mark.parametrize("module", [mc, ilql])
def test_bc_weight_defaults_per_layout_and_is_refused_in_separate_mode(module, capsys):
    assert module.CONFIG().bc_term == 1.0 and module.CONFIG(bc_weight=3.0).bc_term == 3.0
    assert module.CONFIG(value_model="separate").bc_term == 0.0
    assert module.CONFIG(value_model="separate", bc_weight=0.0).bc_term == 0.0
    with pytest.raises(ValueError, match="--bc-weight 0.5 with --value-model separate"):
        module.CONFIG(value_model="separate", bc_weight=0.5)
    with pytest.raises(ValueError, match="--bc-weight must be non-negative"):
        module.CONFIG(bc_weight=-1.0)
    with pytest.raises(SystemExit) as exit_info:  # the CLI: a clear message, exit code 2
        parse_config(module.CONFIG.ALGO, ["--value-model", "separate", "--bc-weight", "1"])
    assert exit_info.value.code == 2
    assert "--bc-weight 1.0 with --value-model separate" in " ".join(capsys.readouterr().err.split())



def test_ilql_aux_lm_loss_leaves_the_rows_states_unchanged(assets, tmp_path, capsys):
    # Step 1 starts from the same weights and batch: the appended next context comes after each
    # row's positions, so the states the V head reads there are the plain pass's, and the total
    # adds aux_lm_weight × the logged world-model loss. Weight 0 logs no such loss.
    def first_step(out, **kw):
        seen = {}
        make_heads, ilql_loss = ilql.make_heads, ilql.ilql_loss

        def record(module, args):  # the V head's first input: the rows' states, (B, T, d)
            seen.setdefault("h", args[0].detach())

        def heads_spy(*args):
            heads = make_heads(*args)
            heads["v"].register_forward_pre_hook(record)
            return heads

        def loss_spy(*args):
            seen.setdefault("batch", args[7])
            return ilql_loss(*args)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ilql, "make_heads", heads_spy)
            mp.setattr(ilql, "ilql_loss", loss_spy)
            run = ilql.train(config(ilql, assets, tmp_path / out, max_steps=1, backup="turn", **kw))
        return run, seen["h"][seen["batch"].attention_mask.bool()]  # (tokens, d)

    plain, h_plain = first_step("plain")
    aux, h_aux = first_step("aux", aux_lm_weight=0.1)
    torch.testing.assert_close(h_aux, h_plain, rtol=1e-5, atol=1e-5)
    assert losses(plain, "train/aux_lm_loss") == []
    (lm,) = losses(aux, "train/aux_lm_loss")
    assert 0 < lm < 10  # a real cross-entropy over a ~300-token vocabulary
    assert losses(aux)[0] == pytest.approx(losses(plain)[0] + 0.1 * lm, rel=1e-5)
    with pytest.raises(SystemExit) as exit_info:  # the CLI: a clear message, exit code 2
        parse_config("ilql", ["--aux-lm-weight", "0.1", "--value-model", "shared"])
    assert exit_info.value.code == 2
    assert "--aux-lm-weight 0.1 needs --value-model separate" in capsys.readouterr().err


@pytest.mark.parametrize("module", [mc, ilql])
def test_a_fresh_value_trunk_is_new_weights_of_the_same_model(module, assets, capsys):
    # value_init="fresh": the value trunk has the policy's architecture and none of its weights,
    # drawn from the seeded RNG (the same seed gives the same trunk), with dropout off; the
    # policy is still the frozen BC model.
    cfg = config(module, assets, assets["root"] / "unused", value_init="fresh")

    def trunk(seed):
        lm = backbone.build_lm(cfg, load_policy(assets["bc"]).tokenizer)
        torch.manual_seed(seed)
        return lm, backbone.value_trunk(lm, cfg)

    lm, fresh = trunk(0)
    lm_w, fresh_w = lm.state_dict(), fresh.state_dict()
    assert fresh is not lm and fresh_w.keys() == lm_w.keys()
    assert all(fresh_w[k].shape == lm_w[k].shape for k in lm_w)
    weights = [k for k in lm_w if k.endswith(".weight") and lm_w[k].ndim == 2]
    assert weights and not any(torch.equal(fresh_w[k], lm_w[k]) for k in weights)
    assert all(torch.equal(fresh_w[k], trunk(0)[1].state_dict()[k]) for k in lm_w)
    assert not all(torch.equal(fresh_w[k], trunk(1)[1].state_dict()[k]) for k in weights)
    assert fresh.training and not lm.training and not any(p.requires_grad for p in lm.parameters())
    assert all(m.p == 0 for m in fresh.modules() if isinstance(m, torch.nn.Dropout))
    copied = backbone.value_trunk(backbone.build_lm(cfg, load_policy(assets["bc"]).tokenizer),
                                  config(module, assets, assets["root"] / "unused"))
    assert all(torch.equal(copied.state_dict()[k], lm_w[k]) for k in lm_w)  # the default copies
    with pytest.raises(SystemExit) as exit_info:  # the CLI: a clear message, exit code 2
        parse_config(module.CONFIG.ALGO, ["--value-init", "fresh", "--value-model", "shared"])
    assert exit_info.value.code == 2
    assert "--value-init fresh needs --value-model separate" in capsys.readouterr().err


def test_choosing_the_shared_layout_drops_the_presets_separate_trunk_settings(capsys):
    # The cpu preset's ILQL on Maze-FO trains a fresh separate value trunk with the world-model
    # loss; --value-model shared on the command line gets the shared layout with those two at
    # their defaults, not an error about flags the user never gave. Given explicitly, they
    # still conflict.
    args = ["--preset", "cpu", "--task", "Maze-FO-v0"]
    preset = parse_config("ilql", args)
    assert (preset.value_model, preset.value_init, preset.aux_lm_weight) == ("separate", "fresh", 0.1)
    shared = parse_config("ilql", [*args, "--value-model", "shared"])
    assert (shared.value_model, shared.value_init, shared.aux_lm_weight) == ("shared", "policy", 0.0)
    assert shared.backup == preset.backup and shared.gamma == preset.gamma  # the rest is kept
    # --lora trains adapters on the pretrained trunk: the value trunk starts from the policy.
    lora = parse_config("ilql", [*args, "--lora", "r=8,alpha=16", "--init-from", "RUN"])
    assert (lora.value_model, lora.value_init, lora.aux_lm_weight) == ("separate", "policy", 0.1)
    with pytest.raises(SystemExit):
        parse_config("ilql", [*args, "--value-model", "shared", "--aux-lm-weight", "0.1"])
    assert "--aux-lm-weight 0.1 needs --value-model separate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config("ilql", [*args, "--lora", "r=8,alpha=16", "--value-init", "fresh"])
    assert "--value-init fresh with --lora" in " ".join(capsys.readouterr().err.split())


def test_a_separate_run_without_a_bc_init_warns_unless_only_the_values_decode(assets):
    # Without --init-from the frozen policy is the untrained --model: fine when the four moves
    # are reranked by Q alone (rerank_score="turn"), a warning for every decoding that reads it.
    lm = backbone.build_lm(config(ilql, assets, assets["root"] / "unused"),
                           load_policy(assets["bc"]).tokenizer)
    alone = config(ilql, assets, assets["root"] / "unused", init_from=None)
    with pytest.warns(UserWarning, match="separate without --init-from: the frozen policy"):
        backbone.value_trunk(lm, alone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone.value_trunk(lm, dataclasses.replace(alone, decode="rerank", rerank_score="turn"))
        backbone.value_trunk(lm, config(ilql, assets, assets["root"] / "unused"))  # with a BC init
