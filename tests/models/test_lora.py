"""LoRA: spec parsing, training only adapters (and heads), saving and reloading the adapter."""

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmrlgym.algos import backbone, bc, ilql, load_policy, loop
from lmrlgym.models import lora
from tests.algos.helpers import maze_dataset, micro_model, spy_on


@pytest.mark.parametrize("text, spec", [
    ("r=16,alpha=32", lora.LoraSpec(r=16, alpha=32.0)),
    (" r=8 , alpha=16, dropout=0.05,targets=c_attn|c_proj ",
     lora.LoraSpec(r=8, alpha=16.0, dropout=0.05, targets=("c_attn", "c_proj"))),
])
def test_parse_lora(text, spec):
    assert lora.parse_lora(text) == spec
    assert lora.parse_lora(str(spec)) == spec  # str() round-trips


@pytest.mark.parametrize("text, message", [
    ("r=16", "missing alpha"),
    ("alpha=3", "missing r"),
    ("r=16,alpha=32,rank=4", "unknown key 'rank'"),
    ("r=16,alpha", "'alpha' is not key=value"),
    ("r=1.5,alpha=2", "r='1.5' is not an integer"),
    ("r=0,alpha=2", "r must be a positive integer"),
    ("r=4,alpha=-1", "alpha must be positive"),
    ("r=4,alpha=8,dropout=1", r"dropout must be in \[0, 1\)"),
    ("r=4,alpha=8,r=2", "'r' given twice"),
    ("r=4,alpha=8,targets=c_attn||c_proj", "empty module name"),
])
def test_parse_lora_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        lora.parse_lora(text)


def test_bad_spec_fails_in_the_config():
    with pytest.raises(ValueError, match="--lora 'r=4': missing alpha"):
        bc.BCConfig(lora="r=4")


def test_unknown_target_names_the_models_layers(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(micro_model(tmp_path / "m"))
    with pytest.raises(ValueError, match="no module named 'q_proj'.*c_attn, c_fc, c_proj"):
        lora.apply_lora(model, "r=2,alpha=4,targets=q_proj")


def test_missing_peft_names_the_extra(tmp_path, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(micro_model(tmp_path / "m"))
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r'pip install "lmrlgym\[hf\]"'):
        lora.apply_lora(model, "r=2,alpha=4")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return {"model": micro_model(root / "micro"),
            "data": maze_dataset(root / "maze", 30, "maze-mixture(p_solver=0.5)")}


def train_capturing_lm(module, assets, out, monkeypatch, **kw):
    """Train 3 steps with LoRA; returns (run_dir, the trained lm, its state before training,
    the optimizer's parameters with their values before training)."""
    seen = {}
    build_lm, make_optimizer = backbone.build_lm, loop.make_optimizer

    def spy_build(*args, **kwargs):
        seen["lm"] = build_lm(*args, **kwargs)
        seen["before"] = {k: v.clone() for k, v in seen["lm"].state_dict().items()}
        return seen["lm"]

    def spy_optimizer(params, *args, **kwargs):
        seen["params"] = list(params)
        seen["params_before"] = [p.detach().clone() for p in seen["params"]]
        return make_optimizer(seen["params"], *args, **kwargs)

    spy_on(backbone, "build_lm", spy_build, monkeypatch.setattr)
    spy_on(loop, "make_optimizer", spy_optimizer, monkeypatch.setattr)
    config = module.preset("Maze-FO-v0", data=assets["data"], out=str(out), model=assets["model"],
                           vocab_size=300, batch_size=8, max_steps=3, log_every=1,
                           tensorboard=False, lr=1e-2, lora="r=4,alpha=8,targets=c_attn|c_proj", **kw)
    run_dir = module.train(config)
    return run_dir, seen


@pytest.mark.parametrize("module", [bc, ilql], ids=["bc", "ilql"])
def test_lora_trains_only_adapters_and_heads(module, assets, tmp_path, monkeypatch):
    run_dir, seen = train_capturing_lm(module, assets, tmp_path / "run", monkeypatch)
    lm, before = seen["lm"], seen["before"]
    after = lm.state_dict()
    adapters = [k for k in after if ".lora_" in k]
    assert adapters and all(not torch.equal(after[k], before[k]) for k in adapters if "lora_B" in k)
    base = [k for k in after if ".lora_" not in k]
    changed = [k for k in base if not torch.equal(after[k], before[k])]
    assert not changed, f"base weights changed: {changed[:5]}"
    trainable = {id(p) for p in lm.parameters() if p.requires_grad}
    assert trainable == {id(p) for n, p in lm.named_parameters() if ".lora_" in n}
    if module is ilql:  # the heads are full-rank and trained (every optimizer param moved)
        moved = [not torch.equal(p.detach(), b) for p, b in zip(seen["params"], seen["params_before"], strict=True)
                 if p.requires_grad and id(p) not in trainable]
        assert moved and all(moved)


@pytest.fixture(scope="module")
def bc_run(assets, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return train_capturing_lm(bc, assets, tmp_path_factory.mktemp("bc") / "run", monkeypatch)


def test_saved_adapter_reloads_with_the_same_logits(bc_run):
    from peft import PeftModel

    run_dir, seen = bc_run
    lm = seen["lm"].eval()
    model_dir = run_dir / "model"
    assert (model_dir / "adapter" / "adapter_config.json").exists()
    assert (model_dir / "adapter" / "adapter_model.safetensors").exists()
    ids = torch.tensor([[0, 5, 9, 17, 3, 4, 250]])
    with torch.no_grad():
        expected = lm(input_ids=ids).logits
        policy = load_policy(run_dir)
        assert torch.equal(policy.model(input_ids=ids).logits, expected)
        # The export opens with plain transformers + PEFT, no lmrlgym code.
        base = AutoModelForCausalLM.from_pretrained(str(model_dir))
        # The base saved alone is the untrained model: the adapter is what was learned.
        assert not torch.allclose(base(input_ids=ids).logits, expected)
        peft_model = PeftModel.from_pretrained(base, str(model_dir / "adapter")).eval()
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected)


def test_init_from_a_lora_run_merges_its_adapter(bc_run):
    run_dir, seen = bc_run
    tokenizer = load_policy(run_dir).tokenizer
    config = bc.preset("Maze-FO-v0", init_from=str(run_dir))
    merged = backbone.build_lm(config, tokenizer).eval()
    assert not lora.is_lora(merged)
    ids = torch.tensor([[0, 5, 9, 17]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, seen["lm"].eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)


def test_online_methods_start_from_a_lora_policy(tmp_path):
    # PPO and online filtered BC build their policy with online.load_init (backbone.build_lm).
    # A full PPO round with LoRA takes minutes on this CPU (rollouts of an untrained policy),
    # so the test checks the shared entry point; the optimizer then sees only adapters and
    # heads as trainable, as in the offline tests above.
    from lmrlgym.algos import online, ppo
    from tests.algos.online_runs import TINY, random_init

    config = ppo.PPOConfig(task="Maze-FO-v0", init_from=str(random_init(tmp_path, "Maze-FO-v0")),
                           out=str(tmp_path / "ppo"), lora="r=2,alpha=4", **TINY)
    (tmp_path / "ppo").mkdir()
    lm, _ = online.load_init(config, tmp_path / "ppo")
    assert lora.is_lora(lm)
    assert {n for n, p in lm.named_parameters() if p.requires_grad} == {
        n for n, _ in lm.named_parameters() if ".lora_" in n}
