"""``lmrlgym bench rollout --policy openai:...``: rollout throughput against a served model.

The workload is evaluation itself: ``evaluate(OpenAIPolicy, task, ...)`` with at most ``c``
episodes running at once, for each concurrency level ``c``. ``evaluate`` steps the live
episodes in lockstep, so each turn sends up to ``c`` concurrent requests (one per episode), and
the server sees up to ``c`` requests in flight (``lmrlgym serve`` batches them; vLLM/SGLang
batch continuously). Reported per level:

- ``requests_per_s``: successful HTTP requests / time spent waiting for them (the serving
  throughput the client sees; retries do not count as requests but their time does);
- ``actions_per_s``: agent actions / wall time of the whole evaluation (end to end: requests,
  env steps, bookkeeping);
- ``latency_p50_s`` / ``latency_p95_s`` per request (retries included), ``attempts`` (> requests
  when retries happened) and the mean return (a sanity check that the policy is acting).

The same seeded episodes run at every level, so levels differ only in concurrency (with
sampling, in the sampled actions).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import numpy as np
import tyro

from lmrlgym.registry import parse_env_kwargs


def bench_served(
    policy_spec: str,
    task: str = "Maze-FO-v0",
    concurrency_levels: tuple[int, ...] = (1, 4, 16),
    episodes: int | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    mode: str = "completions",
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    timeout: float = 30.0,
    max_retries: int = 3,
) -> list[dict[str, Any]]:
    """One row per concurrency level (``concurrency``, ``requests_per_s``, ``actions_per_s``,
    latencies, ...) for ``episodes`` evaluation episodes of ``task`` against ``policy_spec``
    (``openai:<base_url>/<model>``). ``episodes`` defaults to the largest level and must be at
    least that, so every level really has that many episodes in flight."""
    from lmrlgym.eval.evaluate import evaluate
    from lmrlgym.eval.openai_policy import policy_from_spec

    if not concurrency_levels or any(c < 1 for c in concurrency_levels):
        raise ValueError(f"concurrency levels must be positive integers, got {concurrency_levels}")
    episodes = max(concurrency_levels) if episodes is None else episodes
    if episodes < max(concurrency_levels):
        raise ValueError(f"episodes ({episodes}) must be at least the largest concurrency level "
                         f"({max(concurrency_levels)})")
    rows = []
    for c in concurrency_levels:
        with policy_from_spec(policy_spec, max_concurrency=c, temperature=temperature,
                              max_tokens=max_tokens, mode=mode, timeout=timeout,
                              max_retries=max_retries) as policy:  # type: ignore[arg-type]
            policy.act(["warm-up\n"] * c)  # open the pooled connections first
            policy.reset_stats()
            start = time.perf_counter()
            result = evaluate(policy, task, episodes, seed=seed, env_kwargs=env_kwargs,
                              max_concurrent=c)
            seconds = time.perf_counter() - start
            stats = policy.stats
        actions = sum(ep.n_actions for ep in result.episodes)
        lat = np.asarray(stats.latencies)
        rows.append({
            "concurrency": c, "requests_per_s": stats.requests / stats.seconds_in_act,
            "actions_per_s": actions / seconds, "requests": stats.requests,
            "attempts": stats.attempts, "actions": actions, "episodes": episodes,
            "seconds": seconds, "latency_p50_s": float(np.percentile(lat, 50)),
            "latency_p95_s": float(np.percentile(lat, 95)),
            "mean_return": result.summary["mean_return"], "task": task, "policy": policy_spec,
            "temperature": temperature,
        })
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`bench_served` rows."""
    head = f"{'concurrency':>11}  {'requests/s':>10}  {'actions/s':>9}  {'p50 ms':>7}  " \
           f"{'p95 ms':>7}  {'requests':>8}  {'mean return':>11}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['concurrency']:>11}  {r['requests_per_s']:>10.1f}  "
                     f"{r['actions_per_s']:>9.1f}  {1e3 * r['latency_p50_s']:>7.1f}  "
                     f"{1e3 * r['latency_p95_s']:>7.1f}  {r['requests']:>8}  "
                     f"{r['mean_return']:>11.2f}")
    return "\n".join(lines)


def served_main(
    policy: str,
    task: str = "Maze-FO-v0",
    concurrency: tuple[int, ...] = (1, 4, 16),
    episodes: int | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    mode: str = "completions",
    seed: int = 0,
    env_kwargs: str = "{}",
    json_output: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Measure requests/s and actions/s of evaluation rollouts against a served model.

    Args:
        policy: The served model, openai:<base_url>/<model> (e.g. from lmrlgym serve RUN_DIR).
        task: Env id whose evaluation episodes are the workload.
        concurrency: Episodes (and requests) in flight, one measurement per level.
        episodes: Evaluation episodes per level (the same seeded ones at every level); default
            and minimum: the largest concurrency level.
        temperature: Sampling temperature sent with every request; 0 is greedy.
        max_tokens: Per-action token cap sent with every request; default: the server's.
        mode: completions (raw prompt) or chat (the observation as one user message).
        seed: Shifts the protocol's env seeds.
        env_kwargs: JSON object of env keyword arguments.
        json_output: One JSON object per level instead of a table.
    """
    kwargs = parse_env_kwargs(env_kwargs)
    rows = bench_served(policy, task, tuple(concurrency), episodes, temperature, max_tokens, mode,
                        seed, kwargs)
    if json_output:
        for r in rows:
            print(json.dumps(r))
    else:
        print(format_rows(rows))
