"""Learning tests (docs/algorithms.md §5.2): tiny models, fixed seeds, orderings not paper numbers.

Observed when written (seed 0, 2-layer 64-wide GPT-2): one-step toy success BC 0.54, filtered
BC 1.0, MC 1.0; BC on optimal Maze-FO data reaches validation NLL ≈ 0.08 per action token;
Maze-FO mixture data (500 steps each, 100 evaluation episodes), over three model
initialisations: BC −61.5 / −59.9 / −60.2, ILQL −29.4 / −41.5 / −39.7, MC (γ 0.9, β 4)
−50.2 / −57.4 / −63.2, filtered BC (top 20 % by return) −33.9 / −31.1 / −111.5. Only ILQL > BC
held for every initialisation there; MC is asserted with the settings below.

MC sweep on the same data and model (config seeds 0-4; BC −60.2 / −63.4 / −74.7 / −45.5 /
−72.6): at γ 0.9 the behaviour Q (a near-random walk) is ≈ −8 for every move far from the goal,
so β·Q only adds noise (β 4: −56.9 / −62.6 for seeds 0 / 1, β 16: −61.3 / −77.4). At γ 0.99 the
moves' Q differ enough but the return regression (loss ≈ 120) swamps the shared trunk (lr 3e-3,
bc_weight 10: seed 4 −165.7 with 44 % illegal moves, also at β 0). The asserted settings (γ
0.99, β 0.5, head bias −30, bc_weight 20, lr 1e-3): −42.7 / −55.5 / −57.1 / −49.3 / −61.4, i.e.
MC − BC = +17.6 / +7.9 / +17.6 / −3.9 / +11.1 (mean +10.1; seed 3 is BC's best run).
"""

import json

import pytest

from lmrlgym.algos import bc, filtered_bc, ilql, load_policy, mc
from lmrlgym.data.io import write_shard
from lmrlgym.eval.evaluate import evaluate
from tests.algos.helpers import maze_dataset, micro_model
from tests.algos.toy import TASK, toy_episodes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("learning")


@pytest.fixture(scope="module")
def model(root):
    return micro_model(root / "model", n_layer=2, n_embd=64)


def train_and_evaluate(module, task, data, model, out, n_episodes, **kw):
    base = dict(data=data, out=str(out), model=model, vocab_size=400, batch_size=32, lr=3e-3,
                log_every=50, tensorboard=False, seed=0)
    config = module.preset(task, **{**base, **kw})
    run_dir = module.train(config)
    return evaluate(load_policy(run_dir), task, n_episodes).metrics


@pytest.mark.slow(seconds=11)
def test_reward_aware_methods_pick_the_rewarded_move_on_a_one_step_toy(root, model):
    # ILQL is not asserted here: at this scale it learns the toy with seed 1 (success 1.0 after
    # 500 steps) but not with seed 0 (0.55, its Q heads stay unconditioned on the colour); see
    # the algorithms report.
    data = root / "toy.jsonl"  # a single file: no manifest needed
    write_shard(data, toy_episodes(400, seed=0))
    # 300 steps: success rates BC 0.55, filtered BC 1.0, MC 1.0 (as at 500 steps).
    common = dict(max_steps=300, max_context_tokens=16, max_new_tokens=4, gamma=1.0)
    success = {}
    for name, module, kw in (
        ("bc", bc, {}),
        ("filtered_bc", filtered_bc, {"keep": "success"}),
        ("mc", mc, {"beta": 16.0, "cql_weight": 0.1}),
    ):
        kw = {**common, **kw}
        if module in (bc, filtered_bc):
            kw.pop("gamma")
        success[name] = train_and_evaluate(module, TASK, str(data), model, root / name, 200,
                                           **kw)["eval/success_rate"]
    print("one-step toy success rates:", json.dumps(success))
    assert 0.35 < success["bc"] < 0.65, success  # imitates the 50/50 data
    for name in ("filtered_bc", "mc"):
        assert success[name] > 0.9, success


@pytest.mark.slow(seconds=4)
def test_bc_reaches_a_low_imitation_loss_on_optimal_maze_data(root, model):
    data = maze_dataset(root / "optimal", 100, "maze-optimal")
    run_dir = bc.train(bc.preset("Maze-FO-v0", data=data, out=str(root / "bc-opt"), model=model,
                                 vocab_size=400, batch_size=32, lr=3e-3, max_steps=100,
                                 val_fraction=0.1, log_every=50, tensorboard=False, seed=0))
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val_nll = [x["eval/nll"] for x in lines if "eval/nll" in x][-1]
    first_nll = [x["train/nll"] for x in lines if "train/nll" in x][0]
    print(f"BC on optimal Maze-FO data: train NLL {first_nll:.3f} -> validation NLL {val_nll:.3f}")
    # 100 steps (2026-12-05): 1.212 -> 0.072.
    assert val_nll < 0.15 < first_nll  # per action token; ln(400) ≈ 6 at init


@pytest.mark.slow(seconds=77)
def test_ilql_and_mc_beat_bc_on_suboptimal_maze_data(root, model):
    # Mostly random moves with 15 % shortest-path moves (docs/tasks.md §2 mixture), unconfined; the
    # same data, model, seed and step count for all. CPU-scale settings (deviations from the
    # Maze preset, as docs/algorithms.md §3 allows for tiny models):
    # - BC and ILQL: lr 3e-3; ILQL γ 0.9 so the returns of 100-step random walks stay small next
    #   to the BC term in the shared trunk, β 4, Polyak 0.05.
    # - MC: γ 0.99, because MC fits the behaviour policy's Q, and with γ 0.9 a near-random walk's
    #   Q is ≈ −8 for every move away from the goal (no signal for β·Q to act on). Its returns
    #   then span ≈ [−64, 0] (mean ≈ −28), so β 0.5 (β·ΔQ of a few nats; β ≥ 2 amplifies the
    #   regression's noise) and head bias −30 ≈ the mean return (tokens never taken keep their
    #   initial Q, which must not outrank the moves). bc_weight 20 and lr 1e-3 keep the return
    #   regression (loss ≈ 120 vs BC ≈ 0.5) from wrecking the shared trunk's LM head (at lr 3e-3,
    #   bc_weight 10, one initialisation in five sampled 44 % illegal moves, even at β 0).
    # Filtered BC is not asserted here: at this scale its Maze-FO result depends on the
    # initialisation (see the module docstring); the one-step toy checks it.
    # 500 steps (2026-12-05): BC −65.8, ILQL −34.1, MC −45.5; at 400 steps ILQL had not yet
    # learned (BC −77.3, ILQL −81.1, MC −59.7), nor at 300 (ILQL +4.6 over BC).
    data = maze_dataset(root / "mixture", 300, "maze-mixture(p_solver=0.15)")
    returns = {}
    for name, module, kw in (
        ("bc", bc, {}),
        ("ilql", ilql, {"gamma": 0.9, "beta": 4.0, "polyak_alpha": 0.05}),
        ("mc", mc, {"gamma": 0.99, "beta": 0.5, "head_bias": -30.0, "bc_weight": 20.0,
                    "lr": 1e-3}),
    ):
        returns[name] = train_and_evaluate(module, "Maze-FO-v0", data, model, root / f"maze-{name}",
                                           100, max_steps=500, **kw)["eval/return"]
    print("Maze-FO mixture returns:", json.dumps(returns))
    assert returns["ilql"] > returns["bc"] + 5, returns
    assert returns["mc"] > returns["bc"] + 5, returns


@pytest.mark.slow(seconds=63)
def test_ilql_turn_backup_orders_the_maze_cells_sooner_than_token_backup(root, model):
    # Value heads alone on their own trunk (separate layout, no BC term, no CQL) with the
    # world-model loss, the CPU-scale settings of docs/cpu-scale.md ("The cpu profile's ILQL on
    # Maze-FO"); the same data, model, seed and steps for both backups. The value map's
    # Spearman ρ over the 25 start cells is logged at the last step; a flat map (every cell the
    # same V, as at initialisation) scores 0. Measured for config seeds 0 / 1 / 2: token −0.12 /
    # 0.36 / −0.12, turn 0.48 / 0.73 / 0.56. Without the world-model loss the comparison was
    # not stable: at batch 64 token −0.02 and turn 0.42, at batch 32 token 0.50 and turn −0.09.
    data = maze_dataset(root / "mixture", 300, "maze-mixture(p_solver=0.15)")
    rho = {}
    for backup in ("token", "turn"):
        run_dir = ilql.train(ilql.preset(
            "Maze-FO-v0", data=data, out=str(root / f"ilql-{backup}"), model=model,
            vocab_size=400, batch_size=32, lr=1e-3, max_steps=300, log_every=50,
            tensorboard=False, seed=0, value_model="separate", backup=backup, gamma=0.9,
            tau=0.9, polyak_alpha=0.05, head_bias=-5.0, cql_weight=0.0, aux_lm_weight=0.1))
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rho[backup] = [x["eval/value_rank_corr"] for x in lines if "eval/value_rank_corr" in x][-1]
    print("value-map rank correlation after 300 steps:", json.dumps(rho))
    assert rho["turn"] > 0.3 and rho["turn"] > rho["token"] + 0.2, rho
