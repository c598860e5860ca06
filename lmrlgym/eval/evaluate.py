"""``evaluate()``: batched rollouts of a policy under a task's evaluation protocol (docs/algorithms.md §4).

Each episode gets its own env, reset with the protocol's seed and options
(``env_cls.evaluation_resets``: Maze cycles its 25 start cells, Endgames its fixed positions).
Text policies act on the **unfinished** episodes only, all at once: an :class:`LMPolicy` gets
each env's window as turns (``act_turns``, tokenized per turn exactly as in training), any other
``Policy`` gets the observation strings (``act``). Scripted behaviour policies, which read the
env's state, run episode by episode (as ``lmrlgym.data.generate.run_episode`` does, with the
protocol's reset options). An LM policy whose ``decode`` mode is ``rerank`` or ``constrained``
also gets each live env's legal actions (``env.action_set()``); a task whose env gives none is
an error, and the turns of states without a known set (``None``) are decoded freely.

The summary follows docs/algorithms.md §4.3 and docs/tasks.md §1: mean return with standard error and a
seeded 95 % percentile-bootstrap CI, success rate, pooled illegal-action rate, mean episode
length, truncated-action rate, normalised scores (project and paper constants where they
exist) and the decoding settings (with ``free_turn_rate``, the share of agent turns decoded
freely for want of an action set, when the mode uses them). ``out_dir`` receives ``episodes.jsonl`` and
``eval_summary.json``, both written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmrlgym.core import Episode, Policy, TextEnv
from lmrlgym.data.io import dumps_episode, write_json, write_shard
from lmrlgym.data.policies import BehaviourPolicy
from lmrlgym.eval.normalize import PAPER, PROJECT, score
from lmrlgym.registry import Protocol, make
from lmrlgym.registry import spec as registry_spec

BOOTSTRAP_RESAMPLES = 10_000
SUMMARY_FILE = "eval_summary.json"
EPISODES_FILE = "episodes.jsonl"
#: Finished episodes, appended as they finish; removed once ``EPISODES_FILE`` is written.
PARTIAL_FILE = "episodes.partial.jsonl"


@dataclasses.dataclass
class EvalResult:
    """Episodes in protocol order, and their summary (also written as ``eval_summary.json``)."""

    summary: dict[str, Any]
    episodes: list[Episode]

    @property
    def metrics(self) -> dict[str, float]:
        """The flat ``eval/*`` scalars of docs/algorithms.md §4.3, for ``metrics.jsonl``."""
        return dict(self.summary["metrics"])


def env_class(task: str | type[TextEnv]) -> type[TextEnv]:
    """The env class of a registered id (for its classmethods; no env is built), or ``task``
    itself when it already is a ``TextEnv`` subclass (a custom env)."""
    if isinstance(task, type):
        if not issubclass(task, TextEnv):
            raise TypeError(f"{task.__name__} is not a TextEnv subclass")
        return task
    return registry_spec(task).env_class()


def _env_maker(task: str | type[TextEnv], env_kwargs: dict[str, Any]) -> Callable[[], TextEnv]:
    if isinstance(task, type):
        cls = env_class(task)
        return lambda: cls(**env_kwargs)
    return lambda: make(task, **env_kwargs)


def protocol_episodes(task: str | type[TextEnv]) -> int:
    """Episodes of the task's full evaluation (its registry protocol, docs/algorithms.md §4.2): the
    CLI's default. A custom env class gets the default protocol's count."""
    return registry_spec(task).protocol.episodes if isinstance(task, str) else Protocol().episodes


def evaluation_resets(
    task: str | type[TextEnv], n_episodes: int, seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
) -> list[tuple[int, dict[str, Any]]]:
    """The protocol's ``(env seed, reset options)`` list, every seed shifted by ``seed``.

    ``seed=0`` is the task's fixed protocol, shared by all methods (paired comparisons).
    """
    if isinstance(task, str):  # with the spec's kwargs (Chess/Endgames share a class)
        resets = registry_spec(task).evaluation_resets(n_episodes, **(env_kwargs or {}))
    else:
        resets = env_class(task).evaluation_resets(n_episodes, **(env_kwargs or {}))
    if len(resets) != n_episodes:
        raise ValueError(f"{task}.evaluation_resets({n_episodes}) returned {len(resets)} resets")
    return [(int(s) + seed, dict(opts)) for s, opts in resets]


def evaluate(
    policy: Any,
    task: str | type[TextEnv],
    n_episodes: int,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: Callable[[int], None] | None = None,
    max_concurrent: int | None = None,
    policy_name: str | None = None,
) -> EvalResult:
    """Run ``n_episodes`` protocol episodes of ``task`` (a registered id, or a ``TextEnv``
    subclass for a custom env) and summarise them.

    ``policy`` is an :class:`~lmrlgym.models.policy.LMPolicy`, any ``Policy`` (``act``), or a
    scripted :class:`BehaviourPolicy`. ``seed`` shifts the protocol's env seeds and reseeds an
    LM policy's sampler, so a call is reproducible. At most ``max_concurrent`` envs are open at
    once (an env is reused for the next episode; default: the policy's ``batch_size``, else 64,
    which also bounds engine processes on Chess). ``progress(k)`` is called with the number of
    episodes just finished.
    With ``out_dir``, each finished episode is also appended to ``episodes.partial.jsonl`` as
    it finishes, so a run that dies midway keeps them; the file is removed once
    ``episodes.jsonl`` and ``eval_summary.json`` are written.
    """
    from lmrlgym.models.policy import LMPolicy

    if n_episodes <= 0:
        raise ValueError(f"n_episodes must be positive, got {n_episodes}")
    if max_concurrent is None:
        max_concurrent = int(getattr(policy, "batch_size", 64))
    if max_concurrent <= 0:
        raise ValueError(f"max_concurrent must be positive, got {max_concurrent}")
    env_kwargs = dict(env_kwargs or {})
    resets = evaluation_resets(task, n_episodes, seed, env_kwargs)
    make = _env_maker(task, env_kwargs)
    task_name = task.__name__ if isinstance(task, type) else task
    if isinstance(policy, LMPolicy):
        policy.reseed(seed)
    n_actions_before = getattr(policy, "n_actions", 0)
    n_truncated_before = getattr(policy, "n_truncated", 0)
    n_free_before = getattr(policy, "n_free", 0)

    if isinstance(policy, LMPolicy) and policy.settings.decode != "sample":
        _check_action_set(make, resets[0], task_name, policy.settings.decode)

    name = policy_name or getattr(policy, "name", type(policy).__name__)
    keep = None if out_dir is None else _FinishedLog(Path(out_dir), name, env_kwargs)
    try:
        if isinstance(policy, BehaviourPolicy):
            episodes = _run_scripted(policy, task_name, resets, make, progress, keep)
        elif isinstance(policy, Policy):
            episodes = _run_batched(policy, task_name, resets, make, progress, max_concurrent, keep)
        else:
            raise TypeError(f"cannot evaluate {type(policy).__name__}: it has neither "
                            "act(observations) nor is it a BehaviourPolicy")
    finally:
        if keep is not None:
            keep.close()
    for ep in episodes:
        ep.policy = name
        ep.env_kwargs = dict(env_kwargs)

    decoding = dict(getattr(policy, "decoding", {}) or {})
    n_actions = getattr(policy, "n_actions", 0) - n_actions_before
    n_truncated = getattr(policy, "n_truncated", 0) - n_truncated_before
    if decoding.get("decode", "sample") != "sample" and n_actions:
        decoding["free_turn_rate"] = (getattr(policy, "n_free", 0) - n_free_before) / n_actions
    summary = summarize(episodes, task_name, seed=seed, decoding=decoding, policy=name,
                        truncated_actions=(n_truncated, n_actions) if n_actions else None)
    summary["env_kwargs"] = env_kwargs
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_shard(out / EPISODES_FILE, episodes)
        write_json(out / SUMMARY_FILE, summary)
        (out / PARTIAL_FILE).unlink(missing_ok=True)
    return EvalResult(summary, episodes)


class _FinishedLog:
    """Appends each finished episode to ``PARTIAL_FILE`` (flushed), so an evaluation that dies
    midway (e.g. a served model's endpoint going down) keeps the episodes it finished."""

    def __init__(self, out: Path, policy_name: str, env_kwargs: dict[str, Any]):
        out.mkdir(parents=True, exist_ok=True)
        self.policy_name, self.env_kwargs = policy_name, env_kwargs
        self._file = open(out / PARTIAL_FILE, "w", encoding="utf-8")  # noqa: SIM115

    def __call__(self, ep: Episode) -> None:
        ep.policy, ep.env_kwargs = self.policy_name, dict(self.env_kwargs)
        self._file.write(dumps_episode(ep) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# --- rollouts ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Slot:
    env: TextEnv
    index: int = -1
    obs: str = ""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    illegal: int = 0
    done: bool = True


def legal_actions(env: TextEnv) -> tuple[str, ...] | None:
    """The env's legal actions in its current state (without their newline), or None when it
    does not know them (no ``action_set`` method, or it returned None)."""
    action_set = getattr(env, "action_set", None)
    actions = None if action_set is None else action_set()
    return None if actions is None else tuple(actions)


def _check_action_set(make: Callable[[], TextEnv], reset: tuple[int, dict[str, Any]], task: str,
                      decode: str) -> None:
    """Fail before any episode runs (and before any file is written) when the task's env does
    not give its legal actions in the protocol's first start state."""
    env = make()
    try:
        env.reset(seed=reset[0], options=reset[1])
        if legal_actions(env) is None:
            raise ValueError(f"decode={decode!r} needs the legal actions, but {task}'s env gives "
                             "none (no action_set(), or it returns None); use decode='sample'")
    finally:
        env.close()


def _run_batched(policy, task, resets, make, progress, max_concurrent, keep=None) -> list[Episode]:
    from lmrlgym.models.policy import LMPolicy

    is_lm = isinstance(policy, LMPolicy)
    with_sets = is_lm and policy.settings.decode != "sample"
    episodes: list[Episode | None] = [None] * len(resets)
    slots = [_Slot(make()) for _ in range(min(max_concurrent, len(resets)))]
    next_index = 0

    def start(slot: _Slot) -> None:
        nonlocal next_index
        slot.index = next_index
        next_index += 1
        env_seed, options = resets[slot.index]
        slot.obs, slot.info = slot.env.reset(seed=env_seed, options=options)
        slot.illegal, slot.done = 0, False

    try:
        for slot in slots:
            start(slot)
        while True:
            live = [s for s in slots if not s.done]
            if not live:
                break
            if is_lm:
                actions = policy.act_turns(
                    [s.env.context_turns(s.info["turns"]) for s in live], window=False,
                    action_sets=[legal_actions(s.env) for s in live] if with_sets else None,
                    sessions=[s.index for s in live])  # each episode keeps its KV cache
            else:
                actions = policy.act([s.obs for s in live])
            if len(actions) != len(live):
                raise RuntimeError(f"policy returned {len(actions)} actions for {len(live)} observations")
            finished = 0
            for slot, action in zip(live, actions, strict=True):
                slot.obs, _, terminated, truncated, slot.info = slot.env.step(action)
                slot.illegal += bool(slot.info.get("illegal", False))
                if terminated or truncated:
                    env_seed, options = resets[slot.index]
                    episodes[slot.index] = Episode(
                        task=task, turns=list(slot.info["turns"]), terminated=bool(terminated),
                        truncated=bool(truncated), success=bool(slot.info["success"]),
                        seed=env_seed, reset_options=_jsonable(options),
                        meta={"illegal_actions": slot.illegal},
                    )
                    if keep is not None:
                        keep(episodes[slot.index])
                    finished += 1
                    slot.done = True
                    if next_index < len(resets):
                        start(slot)
            if progress and finished:
                progress(finished)
    finally:
        for slot in slots:
            slot.env.close()
        if is_lm:
            policy.end_episodes()
    assert all(ep is not None for ep in episodes)
    return episodes  # type: ignore[return-value]


def _run_scripted(policy, task, resets, make, progress, keep=None) -> list[Episode]:
    """Episode by episode (scripted policies keep per-episode state), as ``run_episode`` does
    but under the protocol: its reset options win over the policy's own (``reset_options``
    still runs, drawing from the same generator, to set up the policy's episode state), and
    data-generation cuts are off."""
    env = make()
    episodes = []
    try:
        for env_seed, options in resets:
            rng = np.random.default_rng([env_seed, 1])  # run_episode's policy stream
            options = {**policy.reset_options(env, rng), **options}
            obs, info = env.reset(seed=env_seed, options=options)
            terminated = truncated = False
            illegal = 0
            while not (terminated or truncated):
                obs, _, terminated, truncated, info = env.step(policy.act(env, obs, info, rng))
                illegal += bool(info.get("illegal", False))
            episodes.append(Episode(
                task=task, turns=list(info["turns"]), terminated=bool(terminated),
                truncated=bool(truncated), success=bool(info["success"]), seed=env_seed,
                reset_options=_jsonable(options),
                meta={**policy.episode_meta(env, info), "illegal_actions": illegal},
            ))
            if keep is not None:
                keep(episodes[-1])
            if progress:
                progress(1)
    finally:
        env.close()
    return episodes


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=list))


# --- statistics ----------------------------------------------------------------------------


def bootstrap_ci(
    values: np.ndarray | list[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded; resampled in chunks to bound memory)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci of no values")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        means[start : start + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize(
    episodes: list[Episode], task: str, seed: int = 0, decoding: dict[str, Any] | None = None,
    policy: str = "", truncated_actions: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The summary dict written as ``eval_summary.json`` (keys documented in the module)."""
    returns = np.array([ep.ret for ep in episodes], dtype=np.float64)
    n = len(returns)
    mean = float(returns.mean())
    std = float(returns.std(ddof=1)) if n > 1 else 0.0
    ci = bootstrap_ci(returns, seed=seed)
    n_turns = sum(ep.n_actions for ep in episodes)
    n_illegal = sum(int(ep.meta.get("illegal_actions", 0)) for ep in episodes)
    scores = {}
    for label, table in (("project", PROJECT), ("paper", PAPER)):
        c = table.get(task)
        scores[label] = None if c is None else {
            "score": score(mean, c), "ci95": [score(ci[0], c), score(ci[1], c)],
            "min": c.min, "avg": c.avg, "max": c.max, "source": c.source}
    trunc_rate = None if truncated_actions is None else truncated_actions[0] / truncated_actions[1]
    normalized = scores["project"]["score"] if scores["project"] else None
    summary: dict[str, Any] = {
        "task": task,
        "policy": policy,
        "seed": seed,
        "episodes": n,
        "mean_return": mean,
        "std_return": std,
        "stderr": std / math.sqrt(n),
        "ci95": [ci[0], ci[1]],
        "success_rate": float(np.mean([ep.success for ep in episodes])),
        "illegal_rate": n_illegal / n_turns if n_turns else 0.0,
        "episode_length": n_turns / n,
        "terminated_rate": float(np.mean([ep.terminated for ep in episodes])),
        "truncated_action_rate": trunc_rate,
        "normalized_score": normalized,
        "normalized_score_paper": scores["paper"]["score"] if scores["paper"] else None,
        "normalization": scores,
        "decoding": dict(decoding or {}),
    }
    metrics = {
        "eval/return": mean, "eval/return_ci_low": ci[0], "eval/return_ci_high": ci[1],
        "eval/return_stderr": summary["stderr"], "eval/success_rate": summary["success_rate"],
        "eval/illegal_rate": summary["illegal_rate"], "eval/episode_length": summary["episode_length"],
        "eval/n_episodes": float(n),
    }
    if normalized is not None:
        metrics["eval/normalized_score"] = normalized
    if trunc_rate is not None:
        metrics["eval/truncated_action_rate"] = trunc_rate
    if "temperature" in summary["decoding"]:
        metrics["eval/temperature"] = float(summary["decoding"]["temperature"])
    summary["metrics"] = metrics
    return summary


def format_summary_table(summary: dict[str, Any]) -> str:
    """A plain-text table of a summary, for the CLI and logs."""
    lo, hi = summary["ci95"]

    def num(x: float | None, fmt: str = "{:.3f}") -> str:
        return "n/a" if x is None else fmt.format(x)

    rows = [
        ("task", summary["task"]),
        ("policy", summary.get("policy") or "?"),
        ("episodes", str(summary["episodes"])),
        ("mean return", f"{summary['mean_return']:.3f} ± {summary['stderr']:.3f} (SE)"),
        ("95% CI (bootstrap)", f"[{lo:.3f}, {hi:.3f}]"),
        ("success rate", num(summary["success_rate"], "{:.1%}")),
        ("illegal-action rate", num(summary["illegal_rate"], "{:.1%}")),
        ("mean length (agent turns)", num(summary["episode_length"], "{:.2f}")),
        ("truncated-action rate", num(summary.get("truncated_action_rate"), "{:.1%}")),
        ("normalized score (project)", num(summary["normalized_score"], "{:.1f}")),
        ("normalized score (paper)", num(summary.get("normalized_score_paper"), "{:.1f}")),
    ]
    dec = summary.get("decoding") or {}
    if dec:
        mode = "greedy" if dec.get("greedy") else f"sampled, temperature {dec.get('temperature')}"
        extra = [f"{k} {dec[k]}" for k in ("top_k", "top_p") if dec.get(k) is not None]
        if dec.get("value_guided"):
            extra.append("value-guided")
        if dec.get("decode", "sample") != "sample":
            score = f" by {dec['rerank_score']}" if "rerank_score" in dec else ""
            extra.append(f"{dec['decode']}{score} over the legal actions")
        rows.append(("decoding", ", ".join([mode, *extra])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def explain_normalization(summary: dict[str, Any]) -> str:
    """One line per normalised score of a summary: what its 0, 50 and 100 are, and why the
    paper's can be far below 0 (docs/tasks.md §10)."""
    norm = summary["normalization"]
    project, paper = norm["project"], norm["paper"]
    lines = []
    if project:
        lines.append(
            f"project score {project['score']:.1f}: returns mapped piecewise-linearly so 0 = "
            f"{project['min']:g} (the minimum), 50 = {project['avg']:g} (the dataset's average), "
            f"100 = {project['max']:g} (the optimum, the best scripted policy's); not clipped.")
    if paper:
        line = (f"paper score {paper['score']:.1f}: the same rule with the paper's Table 5 "
                f"returns, 0 = {paper['min']:g} (its minimum), 50 = {paper['avg']:g} (its "
                f"dataset average), 100 = {paper['max']:g} (its optimum)")
        if project and project["min"] < paper["min"]:
            line += (f"; a mean return below {paper['min']:g} scores below 0, down to "
                     f"{score(project['min'], PAPER[summary['task']]):.0f} at the "
                     f"worst possible return {project['min']:g}")
        lines.append(line + ".")
    else:
        lines.append("paper score n/a: the paper gives no normalisation constants for this task.")
    return "\n".join(lines)
