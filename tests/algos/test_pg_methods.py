"""GRPO, RLOO, GiGPO and ArCHer as online runs (docs/algorithms.md §3.8-3.9): finite logs on
Maze-FO and Wordle, exact resume, config errors, and learning on Maze-FO (slow)."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from lmrlgym.algos import algorithm, archer, grpo, rloo
from lmrlgym.algos.rundir import MODEL_DIR
from tests.algos import online_runs
from tests.algos.online_runs import (
    LEARNING_EPISODES,
    LEARNING_MARGIN,
    TINY,
    logged,
    maze_bc_init,
)

METHODS = ["grpo", "rloo", "gigpo", "archer"]


def tiny(base, algo, task, init, **kw):
    sizes = dict(rollouts_per_round=4, rollout_batch_size=4, batch_size=16, epochs_per_round=1,
                 lr=1e-3, max_new_tokens=online_runs.MAX_NEW_TOKENS[task])
    if algo == "archer":  # round 1 trains only the critic, round 2 also the actor
        sizes.update(critic_steps=2, critic_batch_size=8, warmup_rounds=1)
    else:
        sizes["group_size"] = 2
    return algorithm(algo).preset(task, init_from=str(init), out=str(base / f"{algo}_{task}_{sorted(kw)}"),
                                  **{**sizes, **TINY, **kw})


@pytest.mark.parametrize("task", ["Maze-FO-v0", "Wordle-v0"])
@pytest.mark.parametrize("algo", METHODS)
def test_two_rounds_log_finite_values_and_train_the_policy(algo, task, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    init = maze_bc_init(base) if task == "Maze-FO-v0" else online_runs.random_init(base, task)
    run = algorithm(algo).train(tiny(base, algo, task, init, n_rounds=2))
    online_runs.assert_all_finite(run)
    lines = logged(run)
    assert [ln["step"] for ln in lines] == [1, 2]
    keys = ["rollout/return", "train/advantage_std", "train/pg_loss", "train/clip_frac"]
    keys += ["train/critic_loss", "train/q_mean"] if algo == "archer" else ["train/kl_loss", "train/flat_groups"]
    assert all(k in lines[-1] for k in keys), sorted(lines[-1])
    assert lines[-1]["train/optimizer_steps"] > 0
    before = load_file(str(init / MODEL_DIR / "model.safetensors"))
    after = load_file(str(run / MODEL_DIR / "model.safetensors"))
    # The policy moves exactly when some advantage is non-zero: groups of equal returns (an
    # untrained Wordle policy loses every game) give no gradient, not even through the KL
    # term, whose gradient is 0 while the policy equals the reference.
    signal = any(ln.get("train/advantage_std", 0.0) > 0 for ln in lines)
    assert any(not torch.equal(before[k], after[k]) for k in before) == signal
    if task == "Maze-FO-v0" or algo == "archer":
        assert signal


@pytest.mark.parametrize("algo", ["gigpo", "archer"])
def test_resume_replays_the_interrupted_run_exactly(algo, tmp_path_factory):
    # ArCHer's replay buffer, critic, target and critic optimizer all come back from the
    # checkpoint and replay.jsonl.
    base = tmp_path_factory.getbasetemp()
    init = online_runs.random_init(base, "Wordle-v0")
    extra = dict(warmup_rounds=0) if algo == "archer" else {}
    full = algorithm(algo).train(tiny(base / "full", algo, "Wordle-v0", init, n_rounds=3, save_every=1, **extra))

    class Stop(Exception):
        pass

    def stop_after_second(done, n, metrics):
        if done == 2:
            raise Stop

    config = tiny(base / "cut", algo, "Wordle-v0", init, n_rounds=3, save_every=1, **extra)
    with pytest.raises(Stop):
        algorithm(algo).train(config, progress=stop_after_second)
    resumed = algorithm(algo).train(dataclasses.replace(config, resume=config.out))
    strip = lambda lines: [{k: v for k, v in ln.items() if not k.startswith("time/")} for ln in lines]  # noqa: E731
    assert strip(logged(resumed)) == strip(logged(full))
    a = load_file(str(full / MODEL_DIR / "model.safetensors"))
    b = load_file(str(resumed / MODEL_DIR / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_settings_name_the_flag():
    with pytest.raises(ValueError, match="--rollouts-per-round 10 is not a multiple of --group-size 4"):
        rloo.RLOOConfig(rollouts_per_round=10, group_size=4)
    with pytest.raises(ValueError, match="--group-size must be at least 2"):
        grpo.GRPOConfig(group_size=1, rollouts_per_round=8)
    with pytest.raises(ValueError, match="--critic-steps must be positive"):
        archer.ArcherConfig(critic_steps=0)
    with pytest.raises(ValueError, match="--kl-coef must be non-negative"):
        grpo.GRPOConfig(kl_coef=-1.0)
    with pytest.raises(ValueError, match="--adam-eps must be positive"):
        archer.ArcherConfig(adam_eps=0.0)


# --- learning (docs/algorithms.md §5.2) ------------------------------------------------------------

# Per method: the group methods K = 8 at PPO's earlier test step size, each for the fewest
# rounds that clear the margin with room (the per-round returns in the test below). Found on
# the earlier gpt2-tiny BC init (-75) and kept on the 2 x 64 one: RLOO at 2e-4 (its
# advantages are raw returns, std ~30, and at 5e-4 it rose and fell: -75 -> -73 -> -99). ArCHer
# at 1e-4: at 5e-4 two BC inits differing by 1e-5 in their weights (built with 1 and 2 threads)
# gave -75 -> -51 and -75 -> -350. Its critic needs enough updates per round: after 20 its Q − V
# still had std 0.001 (its actor's Adam ε of 1e-5 keeps steps on that noise small,
# docs/algorithms.md §3.9). 100 updates at 1e-3 learn (-75 -> -63, 1 % illegal moves), and so do
# 50 at 2e-3 (-75 -> -61) at two thirds of the CPU time; batch 16 did not (-75 -> -76). On the
# 2 x 64 init, 30 updates per round (-73.0 -> -73.0, -67.4, -58.2) learn as 50 do (-> -57.1
# after round 3); 20 do not clear the margin (-> -63.8). On the second machine (200 episodes,
# online_runs.LEARNING_MARGIN) round 3 gained only +6.5 / -0.1 (config seeds 1 / 2), rounds 4
# and 5 +15.8 / +7.9 and +12.6 / +12.2, so ArCHer runs 5 rounds.
LEARN = {
    "grpo": dict(group_size=8, lr=5e-4, n_rounds=2),
    "rloo": dict(group_size=8, lr=2e-4, n_rounds=2),
    "gigpo": dict(group_size=8, lr=5e-4, n_rounds=2),
    "archer": dict(lr=1e-4, n_rounds=5, warmup_rounds=1, critic_steps=30, critic_batch_size=32,
                   critic_lr=2e-3),  # round 1 trains only the critic
}
LEARN_SECONDS = {"grpo": 13, "rloo": 16, "gigpo": 14, "archer": 40}  # on one idle core


@pytest.mark.parametrize("algo", [pytest.param(m, marks=pytest.mark.slow(seconds=s))
                                  for m, s in LEARN_SECONDS.items()])
def test_each_method_improves_its_bc_init_on_maze_fo(algo, tmp_path_factory):
    # As PPO's test: the same BC init (about 60 % of its episodes succeed), evaluated on the
    # same LEARNING_EPISODES protocol episodes at step 0 and after the last round. Before token
    # centring (docs/algorithms.md §3.8) GRPO, RLOO and ArCHer fell from -75 to -134 or below (up to 44 %
    # and 96 % illegal moves). Measured with every round evaluated (2026-12-05, the 2 x 64 BC
    # init, -73.0): GRPO -> -57.1, -55.9; RLOO -> -68.9, -58.4, -55.9; GiGPO -> -70.7, -59.8;
    # ArCHer (round 1 trains only the critic) -> -73.0, -62.5, -57.1, -62.5. Evaluations change
    # neither rollouts nor updates, so the test stops at round 2 for GRPO, RLOO and GiGPO (+17,
    # +15, +13) and at ArCHer's round 5 (see LEARN). One draw: with config seed 2 (init -65.8) GRPO, RLOO (round 3), GiGPO and ArCHer
    # (50 updates) gained +7.9, +9.7, +11.7 and +9.3; with 100 evaluation episodes, seeds 1 / 2:
    # +13.9 / +12.8, +13.0 / +13.7, +11.3 / +8.0, +10.4 / +5.7. The methods improve the init by
    # about 10 to 15 points (online_runs.LEARNING_MARGIN says how the margin was chosen).
    base = tmp_path_factory.getbasetemp()
    init = maze_bc_init(base)
    n_rounds = LEARN[algo]["n_rounds"]
    config = algorithm(algo).preset("Maze-FO-v0", init_from=str(init), out=str(base / f"{algo}_learn"),
                                    rollouts_per_round=32, batch_size=64,
                                    epochs_per_round=1, eval_every=n_rounds,
                                    eval_episodes=LEARNING_EPISODES,
                                    max_new_tokens=8, **{**LEARN[algo], **TINY})
    returns = [(ln["step"], ln["eval/return"]) for ln in logged(algorithm(algo).train(config))
               if "eval/return" in ln]
    assert [s for s, _ in returns] == [0, n_rounds]
    (_, init_return), (_, last) = returns
    assert last >= init_return + LEARNING_MARGIN, returns
