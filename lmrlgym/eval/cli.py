"""``lmrlgym eval``: evaluate a trained run or a scripted policy under a task's protocol."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from lmrlgym.models.decoding import RerankScore


def eval_main(
    run: Path | None = None,
    task: str | None = None,
    episodes: int | None = None,
    seed: int = 0,
    out: Path | None = None,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    beta: float | None = None,
    decode: Literal["sample", "rerank", "constrained"] | None = None,
    rerank_score: RerankScore | None = None,
    policy: str | None = None,
    env_kwargs: str = "{}",
    batch_size: int = 64,
    served_mode: Literal["completions", "chat"] = "completions",
    preset: Literal["auto", "cpu", "paper"] = "auto",
    device: str | None = None,
    threads: int | None = None,
    json_output: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Evaluate a trained run (--run) or a scripted/served policy (--policy) on a task.

    Prints a summary table (mean return ± SE, bootstrap 95% CI, success, illegal-action rate,
    length, normalized score) and writes episodes.jsonl and eval_summary.json to the output
    directory. Sampling at temperature 1 without top-k/top-p is the benchmark's protocol;
    greedy and other settings are recorded in the summary.

    Args:
        run: Training run directory (its exported model/ and tokenizer/).
        task: Env id; default: the run's task.
        episodes: Evaluation episodes; default: the --preset's count (cpu: the benchmark's `cpu`
            profile, e.g. Maze 200; paper: the task's full protocol, Maze 800 = 25 starts x 32).
        seed: Shifts the protocol's env seeds and seeds sampling (0 = the shared protocol).
        out: Output directory; default: <run>/eval/<task>__seed<seed>/ (with --policy: required).
            An evaluation that dies midway keeps its finished episodes in episodes.partial.jsonl.
        greedy: Greedy decoding instead of sampling.
        temperature: Sampling temperature.
        top_k: Sample from the k most likely tokens only.
        top_p: Nucleus sampling mass.
        max_new_tokens: Per-action token cap; default: the run's.
        beta: Value-guidance strength for MC/ILQL runs; default: the run's.
        decode: How actions are decoded: free sampling, or over the env's legal actions (tasks
            whose env knows them: Maze, Wordle, Text-Nav, Chess, Endgames) by reranking every
            candidate or by sampling constrained to spell one; default: the run's (MC and ILQL
            rerank on Maze). Recorded in the summary.
        rerank_score: With --decode rerank: the candidate's log-probability under the policy,
            or (MC/ILQL runs) its summed beta*(Q - V), the original's Maze reranker, or beta*Q
            at its last token (turn, for turn-level backups); default: the run's.
        policy: Instead of a run: a scripted policy spec (e.g. maze-optimal) or a served model
            behind an OpenAI-compatible endpoint, openai:<base_url>/<model> (e.g.
            openai:http://127.0.0.1:8000/v1/maze-bc; --greedy sends temperature 0).
        env_kwargs: JSON object of env keyword arguments, e.g. '{"grid": "double_t_maze"}'.
        batch_size: Prompts per forward pass (in-process models).
        served_mode: For openai: policies, the /completions (raw prompt) or /chat/completions API.
        preset: Where --episodes is not given, its count: cpu, paper, or auto (cpu where no
            GPU is found, else paper).
        device: Torch device (default: cuda when a GPU is found, else cpu).
        threads: torch intra-op threads (default: torch's choice; 1 is much faster for small
            models on a machine busy with other work).
        json_output: Print the summary as JSON instead of a table.
    """
    from tqdm import tqdm

    from lmrlgym.bench.presets import choose_preset
    from lmrlgym.eval.evaluate import evaluate, explain_normalization, format_summary_table
    from lmrlgym.registry import parse_env_kwargs

    if threads is not None:
        if threads <= 0:
            raise ValueError(f"--threads must be positive, got {threads}")
        import torch

        torch.set_num_threads(threads)
    if (run is None) == (policy is None):
        raise ValueError("give exactly one of --run RUN_DIR or --policy NAME")
    kwargs = parse_env_kwargs(env_kwargs)
    choice = choose_preset(preset, device)

    if run is not None:
        # These flags, left unset, keep the run's own (e.g. the value methods' Maze reranker).
        given = {k: v for k, v in (("max_new_tokens", max_new_tokens), ("decode", decode),
                                   ("rerank_score", rerank_score)) if v is not None}
        sampling = dict(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        pol, task = _run_policy(run, task, {**sampling, **given}, beta, choice.device, batch_size)
        out = out or run / "eval" / f"{task}__seed{seed}"
    else:
        if task is None:
            raise ValueError("--task is required with --policy")
        if decode not in (None, "sample"):
            raise ValueError(f"--decode {decode} needs a trained run (--run); scripted and served "
                             "policies choose their actions themselves")
        if out is None:
            raise ValueError("--out is required with --policy (there is no run directory)")
        pol = _named_policy(policy, task, served_mode, greedy, temperature, top_p, max_new_tokens)
    if episodes is None:
        episodes = choice.profile.eval_episodes(task)
        announcement = choice.announcement(f"{episodes} episodes")
        if announcement:
            print(announcement, file=sys.stderr)
    if episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {episodes}")

    try:
        # smoothing 0: the ETA is the mean rate so far (episodes finish in bursts).
        with tqdm(total=episodes, desc=f"eval {task}", unit="ep", delay=0.5, smoothing=0) as bar:
            result = evaluate(pol, task, episodes, seed=seed, env_kwargs=kwargs, out_dir=out,
                              progress=bar.update)
    finally:
        if hasattr(pol, "close"):
            pol.close()
    if json_output:
        print(json.dumps({k: v for k, v in result.summary.items() if k != "metrics"}, indent=2))
    else:
        print(format_summary_table(result.summary))
        print(explain_normalization(result.summary))
        print(f"wrote {out}/episodes.jsonl and {out}/eval_summary.json")


def _run_policy(run: Path, task: str | None, changes: dict[str, Any], beta: float | None,
                device: str, batch_size: int) -> tuple[Any, str]:
    """A trained run's policy and its task (``task`` or the run's). ``changes``: the
    :class:`~lmrlgym.models.decoding.Decoding` fields that replace the run's own."""
    from lmrlgym.algos import load_config, load_policy

    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    config = load_config(run)
    if changes.get("decode") not in (None, "rerank") and "rerank_score" not in changes:
        changes = {**changes, "rerank_score": "logprob"}  # a value score only ranks candidates
    decoding = dataclasses.replace(config.decoding, **changes)
    return load_policy(run, beta=beta, device=device, decoding=decoding,
                       batch_size=batch_size), task or config.task


def _named_policy(spec: str, task: str, served_mode: str, greedy: bool, temperature: float,
                  top_p: float | None, max_new_tokens: int | None) -> Any:
    """A scripted policy (``maze-optimal``) or a served one (``openai:<base_url>/<model>``)."""
    from lmrlgym.data.policies import make_policy
    from lmrlgym.eval.openai_policy import is_openai_spec, policy_from_spec

    if is_openai_spec(spec):
        return policy_from_spec(spec, mode=served_mode, top_p=top_p, max_tokens=max_new_tokens,
                                temperature=0.0 if greedy else temperature)
    return make_policy(spec, task)
