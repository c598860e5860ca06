"""``lmrlgym bench envs``: environment steps per second with a seeded scripted policy.

Only ``env.step`` is timed (the policy choosing the actions is not), with the task's random
policy where one exists, else its default behaviour policy, so the number is the env's own
cost. Resets are timed separately.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lmrlgym.data.policies import DEFAULT_POLICY, POLICIES, make_policy
from lmrlgym.registry import make, spec


def action_policy(task: str) -> str:
    """The policy that drives a speed run: ``<family>-random`` if registered, else the default."""
    for name, (_, tasks) in POLICIES.items():
        if name.endswith("-random") and task in tasks:
            return name
    return DEFAULT_POLICY[task]


def bench_env(
    task: str, min_steps: int = 2000, min_seconds: float = 1.0, seed: int = 0, **env_kwargs: Any
) -> dict[str, Any]:
    """Step ``task`` until both ``min_steps`` and ``min_seconds`` are reached; report rates."""
    spec(task)
    env = make(task, **env_kwargs)
    policy_spec = action_policy(task)
    policy = make_policy(policy_spec, task)
    rng = np.random.default_rng(seed)
    step_time = reset_time = 0.0
    steps = episodes = 0
    try:
        while steps < min_steps or step_time < min_seconds:
            options = policy.reset_options(env, rng)
            t0 = time.perf_counter()
            obs, info = env.reset(seed=seed + episodes, options=options)
            reset_time += time.perf_counter() - t0
            episodes += 1
            done = False
            while not done:
                action = policy.act(env, obs, info, rng)
                t0 = time.perf_counter()
                obs, _, terminated, truncated, info = env.step(action)
                step_time += time.perf_counter() - t0
                steps += 1
                done = terminated or truncated
    finally:
        policy.close()
        env.close()
    return {
        "env": task,
        "env_kwargs": env_kwargs,
        "policy": policy.name,
        "steps": steps,
        "episodes": episodes,
        "steps_per_s": steps / step_time,
        "reset_ms": 1000 * reset_time / episodes,
    }
