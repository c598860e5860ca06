"""Compute the project's normalisation constants (docs/tasks.md §10): one function per task.

Each function returns ``{task_id: Constants}`` with a provenance string (script, policy and
settings, episodes, package version, date); the printed entries are pasted into
``lmrlgym/eval/normalize.py``'s ``PROJECT`` table. Everything is seeded, so a rerun with the same
package version prints the same numbers (only the date changes).

    python scripts/compute_constants.py                # every task
    python scripts/compute_constants.py maze wordle    # some tasks
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable

import numpy as np

import lmrlgym
from lmrlgym.data.generate import DATA_SEED_BASE, run_episode
from lmrlgym.data.policies import BehaviourPolicy, make_policy
from lmrlgym.eval.normalize import Constants

SCRIPT = "scripts/compute_constants.py"


def _stamp() -> str:
    return f"lmrlgym {lmrlgym.__version__}, {datetime.date.today().isoformat()}"


def protocol_returns(
    task: str, policy: BehaviourPolicy, resets: list[tuple[int, dict]]
) -> np.ndarray:
    """Returns of a scripted policy on the task's evaluation episodes ``(seed, options)``.

    The policy's generator is seeded from the episode seed as in dataset generation.
    """
    env = lmrlgym.make(task)
    returns = []
    for seed, options in resets:
        rng = np.random.default_rng([seed, 1])
        obs, info = env.reset(seed=seed, options=options)
        done, ret = False, 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy.act(env, obs, info, rng))
            ret += reward
            done = terminated or truncated
        returns.append(ret)
    env.close()
    return np.array(returns)


def _mean_se(x: np.ndarray) -> str:
    return f"{x.mean():.4f} +- {x.std(ddof=1) / np.sqrt(len(x)):.4f} (SE)"


def maze() -> dict[str, Constants]:
    """docs/tasks.md §2. min -401 (true minimum); avg: the unconfined behaviour policy
    ``maze-mixture(p_solver=0.15)`` under the evaluation protocol (25 starts x 32); max: the
    optimum under the protocol (FO shortest path; PO belief-MDP optimum, -7.24)."""
    out = {}
    for task, optimal in (("Maze-FO-v0", "maze-optimal"), ("Maze-PO-v0", "maze-belief")):
        env_cls = type(lmrlgym.make(task))
        resets = env_cls.evaluation_resets(800)
        behaviour = protocol_returns(task, make_policy("maze-mixture(p_solver=0.15)", task), resets)
        best = protocol_returns(task, make_policy(optimal, task), resets)
        source = (
            f"{SCRIPT} maze: avg = maze-mixture(p_solver=0.15) unconfined, evaluation protocol "
            f"(800 episodes, 25 starts x 32, seeds 32*i+k), mean {_mean_se(behaviour)}; "
            f"max = {optimal} on the same 800 episodes; min = true minimum; {_stamp()}"
        )
        out[task] = Constants(
            -401.0, round(float(behaviour.mean()), 2), round(float(best.mean()), 2), source
        )
    return out


def wordle(n_dataset: int = 100_000) -> dict[str, Constants]:
    """docs/tasks.md §4. min -6; avg: the default dataset (``wordle-mixture(p_smart=1/3)``, seeds
    from 1,000,000; any default dataset starts with these episodes); max: ``wordle-greedy``
    under the evaluation protocol (4,096 episodes, seeds 0-4095)."""
    task = "Wordle-v0"
    env = lmrlgym.make(task)
    policy = make_policy("wordle-mixture", task)
    data = np.array(
        [run_episode(env, policy, DATA_SEED_BASE + i, task).ret for i in range(n_dataset)]
    )
    greedy = protocol_returns(
        task, make_policy("wordle-greedy", task), [(i, {}) for i in range(4096)]
    )
    per_answer = protocol_returns(
        task, make_policy("wordle-greedy", task), type(env).answer_resets()
    )
    source = (
        f"{SCRIPT} wordle: avg = {policy.name} default dataset, first {n_dataset} episodes "
        f"(seeds {DATA_SEED_BASE}+i), mean {_mean_se(data)}; max = wordle-greedy, evaluation "
        f"protocol (4096 episodes, seeds 0-4095), mean {_mean_se(greedy)} (one episode per "
        f"answer: {per_answer.mean():.4f}); min = true minimum; {_stamp()}"
    )
    return {
        task: Constants(-6.0, round(float(data.mean()), 3), round(float(greedy.mean()), 3), source)
    }


def _dataset_chunk(job: tuple[str, list[int]]) -> list[tuple[float, bool, int]]:
    """(return, success, length) of default-dataset episodes ``seeds`` (one env, one policy:
    for chess one engine pair per worker)."""
    from lmrlgym.data.policies import default_policy

    task, seeds = job
    env = lmrlgym.make(task)
    policy = make_policy(default_policy(task), task)
    try:
        episodes = [run_episode(env, policy, seed, task) for seed in seeds]
    finally:
        policy.close()
        env.close()
    return [(ep.ret, ep.success, ep.n_actions) for ep in episodes]


def _dataset_rows(task: str, n: int, workers: int) -> tuple[np.ndarray, float, float]:
    """Returns, success rate and mean length of the first ``n`` default-dataset episodes,
    generated in ``workers`` spawned processes."""
    import multiprocessing as mp

    seeds = [DATA_SEED_BASE + i for i in range(n)]
    jobs = [(task, seeds[k::workers]) for k in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        rows = [row for chunk in pool.map(_dataset_chunk, jobs) for row in chunk]
    data = np.array([r[0] for r in rows])
    return data, float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows]))


def _chess_constants(task: str, n: int, workers: int) -> dict[str, Constants]:
    # docs/tasks.md §5-6: min -400 (400 illegal moves), max 1 (a win), avg = the default dataset's
    # mean return: its first n episodes against the default opponent (Elo 1350's weakened pick,
    # seeded from each episode: a rerun with the same engine build gives the same mean).
    from lmrlgym.data.policies import default_policy

    data, success, length = _dataset_rows(task, n, workers)
    name = make_policy(default_policy(task), task).name
    source = (
        f"{SCRIPT} {task.split('-')[0].lower()}: avg = {name} default dataset, first {n} "
        f"episodes (seeds {DATA_SEED_BASE}+i) against the default opponent "
        f"(stockfish-elo-seeded:1350), mean {_mean_se(data)}, success {success:.3f}, "
        f"length {length:.1f}; Stockfish 15.1; min = 400 illegal moves; max = a win; {_stamp()}"
    )
    return {task: Constants(-400.0, round(float(data.mean()), 3), 1.0, source)}


def chess(n_dataset: int = 150, workers: int = 2) -> dict[str, Constants]:
    """docs/tasks.md §5. min -400; avg: the default ``chess-stockfish`` dataset; max 1."""
    return _chess_constants("Chess-v0", n_dataset, workers)


def endgames(n_dataset: int = 300, workers: int = 2) -> dict[str, Constants]:
    """docs/tasks.md §6. min -400; avg: the default ``endgame-epsilon`` dataset; max 1."""
    return _chess_constants("Endgames-v0", n_dataset, workers)


def car_dealer(n_dataset: int = 19_000) -> dict[str, Constants]:
    """docs/tasks.md §9. min 0 (no sale); avg: the default ``car-seller`` dataset (the paper's 19k
    dialogues, seeds from 1,000,000); max: the best scripted seller ``car-seller-expert`` under
    the evaluation protocol (256 episodes, seeds 0-255)."""
    from lmrlgym.data.policies import default_policy

    task = "CarDealer-v0"
    env = lmrlgym.make(task)
    seller = make_policy(default_policy(task), task)
    episodes = [run_episode(env, seller, DATA_SEED_BASE + i, task) for i in range(n_dataset)]
    data = np.array([ep.ret for ep in episodes])
    success = np.mean([ep.success for ep in episodes])
    length = np.mean([ep.n_actions for ep in episodes])
    expert = make_policy("car-seller-expert", task)
    best = protocol_returns(task, expert, type(env).evaluation_resets(256))
    source = (
        f"{SCRIPT} car_dealer: avg = {seller.name} default dataset, first {n_dataset} episodes "
        f"(seeds {DATA_SEED_BASE}+i), mean {_mean_se(data)}, success {success:.3f}, length "
        f"{length:.2f}; max = {expert.name}, evaluation protocol (256 episodes, seeds 0-255), "
        f"mean {_mean_se(best)}; min = no sale; {_stamp()}"
    )
    return {task: Constants(0.0, round(float(data.mean()), 3), round(float(best.mean()), 3), source)}


def _questions_constants(
    name: str, task: str, n_dataset: int, n_items: int
) -> dict[str, Constants]:
    # docs/tasks.md §7-8: min -20 (no correct guess in 20 questions); avg: the default dataset, its
    # first n episodes (seeds from 1,000,000); max: the best scripted asker (OPTIMAL_POLICY)
    # under the evaluation protocol (one episode per item, seed = index).
    from lmrlgym.data.policies import OPTIMAL_POLICY, default_policy

    env = lmrlgym.make(task)
    behaviour = make_policy(default_policy(task), task)
    episodes = [run_episode(env, behaviour, DATA_SEED_BASE + i, task) for i in range(n_dataset)]
    data = np.array([ep.ret for ep in episodes])
    success = np.mean([ep.success for ep in episodes])
    length = np.mean([ep.n_actions for ep in episodes])
    best_policy = make_policy(OPTIMAL_POLICY[task], task)
    best = protocol_returns(task, best_policy, type(env).evaluation_resets(n_items))
    source = (
        f"{SCRIPT} {name}: avg = {behaviour.name} default dataset, first {n_dataset} episodes "
        f"(seeds {DATA_SEED_BASE}+i), mean {_mean_se(data)}, success {success:.3f}, length "
        f"{length:.2f}; max = {best_policy.name}, evaluation protocol ({n_items} episodes, one "
        f"per item, seed = index), mean {_mean_se(best)}; min = no correct guess; {_stamp()}"
    )
    return {task: Constants(-20.0, round(float(data.mean()), 3), round(float(best.mean()), 3), source)}


def twenty_questions(n_dataset: int = 10_000) -> dict[str, Constants]:
    """docs/tasks.md §7. min -20; avg: the default ``twentyq-splitter`` dataset; max: the best
    splitter (``p_info=1``) on all 158 objects."""
    from lmrlgym.envs.twenty_questions import load_kb

    return _questions_constants(
        "twenty_questions", "TwentyQuestions-v0", n_dataset, len(load_kb().items)
    )


def guess_city(n_dataset: int = 10_000) -> dict[str, Constants]:
    """docs/tasks.md §8. min -20; avg: the default ``guesscity-asker`` dataset; max: the best asker
    (``p_info=1``, guessing as soon as one candidate remains) on all 100 cities."""
    from lmrlgym.envs.guess_city import load_kb

    return _questions_constants("guess_city", "GuessCity-v0", n_dataset, len(load_kb().cities))


def textnav(n_dataset: int = 2500, workers: int = 2) -> dict[str, Constants]:
    """docs/tasks.md §3. min 0; avg: the default ``textnav-half-expert`` dataset (the paper's 2.5k
    trajectories, seeds from 1,000,000); max: ``textnav-walkthrough`` under the evaluation
    protocol (8 start rooms x 32, seeds 32*i+k), which wins every episode."""
    from lmrlgym.data.policies import OPTIMAL_POLICY, default_policy

    out = {}
    for task in ("TextNav-FO-v0", "TextNav-PO-v0"):
        data, success, length = _dataset_rows(task, n_dataset, workers)
        behaviour = make_policy(default_policy(task), task)
        best_policy = make_policy(OPTIMAL_POLICY[task], task)
        env_cls = type(lmrlgym.make(task))
        best = protocol_returns(task, best_policy, env_cls.evaluation_resets(256))
        source = (
            f"{SCRIPT} textnav: avg = {behaviour.name} default dataset, first {n_dataset} "
            f"episodes (seeds {DATA_SEED_BASE}+i), mean {_mean_se(data)}, success "
            f"{success:.3f}, length {length:.2f}; max = {best_policy.name}, evaluation protocol "
            f"(256 episodes, 8 rooms x 32, seeds 32*i+k), mean {best.mean():.4f}; min = no win; "
            f"TextWorld 1.7.0; {_stamp()}"
        )
        out[task] = Constants(0.0, round(float(data.mean()), 3), round(float(best.mean()), 3), source)
    return out


TASKS: dict[str, Callable[[], dict[str, Constants]]] = {
    "maze": maze, "wordle": wordle, "chess": chess, "endgames": endgames,
    "car_dealer": car_dealer, "twenty_questions": twenty_questions, "guess_city": guess_city,
    "textnav": textnav,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "tasks",
        nargs="*",
        metavar="TASK",
        help=f"tasks to compute (default: all of {', '.join(TASKS)})",
    )
    args = parser.parse_args()
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    for name in args.tasks or TASKS:
        for task_id, c in TASKS[name]().items():
            print(
                f"    {task_id!r}: Constants(\n        {c.min!r}, {c.avg!r}, {c.max!r},\n"
                f"        {c.source!r},\n    ),"
            )


if __name__ == "__main__":
    main()
