"""Offline dataset generation: run a behaviour policy in a task env and write JSONL shards.

Generation is a pure function of (task, env kwargs, policy spec, episode count, base seed):
episode ``i`` uses env seed ``base_seed + i`` and a policy generator seeded from it, and
shard ``k`` always holds episodes ``k*shard_size .. (k+1)*shard_size-1``, so the files are
byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmrlgym.core import Episode, TextEnv
from lmrlgym.data.io import MANIFEST, read_episodes, write_json, write_shard
from lmrlgym.data.policies import BehaviourPolicy, make_policy
from lmrlgym.data.stats import episode_stats

DATA_SEED_BASE = 1_000_000  # docs/tasks.md §1: data seeds start here; evaluation uses 0 .. N-1
SHARD_SIZE = 1000


def run_episode(env: TextEnv, policy: BehaviourPolicy, seed: int, task: str = "") -> Episode:
    """One episode of a scripted policy. ``policy.cut`` may end the record early (truncated)."""
    rng = np.random.default_rng([seed, 1])  # the policy's own stream, independent of the env's
    options = policy.reset_options(env, rng)
    obs, info = env.reset(seed=seed, options=options)
    terminated = truncated = False
    cut = None
    while not (terminated or truncated):
        action = policy.act(env, obs, info, rng)
        obs, _, terminated, truncated, info = env.step(action)
        if not (terminated or truncated):
            cut = policy.cut(env, info)
            truncated = cut is not None
    meta = dict(policy.episode_meta(env, info))
    if cut is not None:
        meta["cut"] = cut
    return Episode(
        task=task or getattr(env, "spec_id", type(env).__name__),
        turns=list(info["turns"]),
        terminated=terminated,
        truncated=truncated,
        success=bool(info["success"]),
        seed=seed,
        policy=policy.name,
        reset_options=_jsonable(options),
        meta=meta,
    )


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=list))


def _generate_shard(job: tuple, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Play and write one shard; ``progress(1)`` after each episode (in-process callers only:
    a worker pool reports whole shards)."""
    task, env_kwargs, policy_spec, seeds, path = job
    from lmrlgym.registry import make  # noqa: PLC0415  (fresh import in spawned workers)

    env = make(task, **env_kwargs)
    policy = make_policy(policy_spec, task)
    try:
        episodes = []
        for s in seeds:
            episodes.append(run_episode(env, policy, s, task))
            episodes[-1].env_kwargs = dict(env_kwargs)
            if progress:
                progress(1)
        write_shard(path, episodes)
    finally:
        policy.close()
        env.close()
    return len(seeds), sum(ep.success for ep in episodes)


def generate_dataset(
    task: str,
    out: str | os.PathLike,
    n_episodes: int,
    policy_spec: str | None = None,
    seed: int = DATA_SEED_BASE,
    workers: int = 1,
    env_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Generate a dataset directory and return its manifest."""
    from lmrlgym.data.policies import default_policy
    from lmrlgym.registry import spec as env_spec

    env_spec(task)  # unknown id -> KeyError listing the valid ids
    if n_episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {n_episodes}")
    if workers <= 0:
        raise ValueError(f"--workers must be positive, got {workers}")
    policy_spec = policy_spec or default_policy(task)
    policy = make_policy(policy_spec, task)  # validates name and settings before any work
    env_kwargs = dict(env_kwargs or {})
    out = prepare_output(out, overwrite)

    jobs = []
    for k, start in enumerate(range(0, n_episodes, SHARD_SIZE)):
        seeds = [seed + i for i in range(start, min(start + SHARD_SIZE, n_episodes))]
        jobs.append((task, env_kwargs, policy_spec, seeds, out / f"shard-{k:05d}.jsonl"))
    if workers == 1 or len(jobs) == 1:
        for job in jobs:  # in this process: progress after every episode
            _generate_shard(job, progress)
    else:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for n, _ in pool.imap_unordered(_generate_shard, jobs):
                if progress:
                    progress(n)

    episodes, _ = read_episodes(out, allow_partial=True)  # the manifest comes next
    manifest = _manifest(episodes, policy.name, [job[4].name for job in jobs],
                         env_kwargs=env_kwargs, base_seed=seed,
                         policy_extra=policy.manifest_extra())
    policy.close()
    write_json(out / MANIFEST, manifest)  # written last: a manifest means a complete dataset
    return manifest


def prepare_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """Create the output directory; refuse a non-empty one unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite to replace it")
        for p in out.iterdir():
            if p.is_file() and (p.name == MANIFEST or p.name.endswith(".jsonl")):
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"{out} is not writable")
    return out


def _manifest(episodes: list[Episode], generator: str, shards: list[str], **extra: Any) -> dict:
    tasks = sorted({ep.task for ep in episodes})
    return {
        "format": "lmrlgym.dataset/1",
        "task": tasks[0] if len(tasks) == 1 else tasks,
        "generator": generator,
        "shards": shards,
        **extra,
        **episode_stats(episodes),
        "lmrlgym_version": _version(),
    }


def write_dataset(
    episodes: list[Episode], out: str | os.PathLike, generator: str, overwrite: bool = False
) -> dict[str, Any]:
    """Write given episodes (e.g. imported ones) as a dataset directory; returns the manifest."""
    if not episodes:
        raise ValueError("no episodes to write")
    out = prepare_output(out, overwrite)
    shards = []
    for k, start in enumerate(range(0, len(episodes), SHARD_SIZE)):
        shards.append(f"shard-{k:05d}.jsonl")
        write_shard(out / shards[-1], episodes[start : start + SHARD_SIZE])
    manifest = _manifest(episodes, generator, shards)
    write_json(out / MANIFEST, manifest)
    return manifest


def _version() -> str:
    from lmrlgym import __version__

    return __version__


__all__ = ["DATA_SEED_BASE", "generate_dataset", "run_episode", "write_dataset"]
