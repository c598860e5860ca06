"""examples/trl_grpo_wordle.py: TRL's GRPOTrainer trains on Wordle through the env server."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl", reason='needs trl: pip install "lmrlgym[trl]"')

import lmrlgym  # noqa: E402
from lmrlgym.envserver import ServerConfig, create_app, serve_in_thread  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trl_grpo_wordle.py"


def load_example():
    spec = importlib.util.spec_from_file_location("trl_grpo_wordle", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow(seconds=2)
def test_grpo_trains_on_env_rewards(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # everything is local; a download would fail
    ex = load_example()
    model_dir = tmp_path / "tiny"
    ex.build_tiny(model_dir)
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).state_dict()
    with serve_in_thread(create_app(ServerConfig(tasks=("Wordle-v0",)))) as url:
        settings = ex.RolloutSettings(env_url=url, max_action_tokens=1)
        trainer, records = ex.train(model_dir, tmp_path / "out", settings, max_steps=2)

    assert trainer.state.global_step == 2
    # Every reward is the return the env gives for that episode's seed and actions.
    assert len(records) == 8
    for r in records:
        env = lmrlgym.make("Wordle-v0", invalid_reward=settings.invalid_reward)
        env.reset(seed=r.seed)
        assert sum(env.step(a)[1] for a in r.actions) == r.ret
        assert env.done and len(r.actions) <= 6
    logged = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(logged) == 2
    for step, value in enumerate(logged):
        batch = [r.ret for r in records[4 * step : 4 * step + 4]]
        assert math.isclose(value, sum(batch) / 4, rel_tol=1e-6)
    assert len({r.ret for r in records}) > 1  # returns differ: GRPO's advantages are not all 0
    # No weight decay and beta = 0: only the policy gradient from those rewards moves weights.
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before)
