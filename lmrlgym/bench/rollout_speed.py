"""``lmrlgym bench rollout``: generated actions per second with and without batching and KV cache.

The workload is the evaluation one: Maze-FO and Wordle prompts (taken from scripted episodes
of the real envs, tokenized by a BPE tokenizer trained on their text) and one action of up to
``max_new_tokens`` per prompt from a ``gpt2-mini`` preset. The model is untrained, so almost
every action runs to the token cap: every mode generates the same number of tokens per action,
and the rates compare the generation machinery alone.

Without a cache, token ``k`` of an action recomputes the whole prompt, so the cached/uncached
ratio grows with the action length: on CPU, where the prompt's forward pass is compute bound,
it is at most about ``M (L + M/2) / (L + M)`` for ``L``-token prompts and ``M`` new tokens
(≈ 7x at M = 8, ≈ 13x at M = 16 for these ~32-token prompts), times what batching saves in
per-call overhead. The default ``M = 16`` is the Chess/Endgames cap, between Maze's 8 and the
dialogue tasks' 128+. Modes:

- ``unbatched-uncached``: one prompt at a time, the whole sequence recomputed per token;
- ``unbatched-cached``: one prompt at a time with a KV cache;
- ``batched-uncached``: all prompts in one left-padded batch, recomputed per token;
- ``batched-cached``: one batch with a KV cache (what ``evaluate`` uses).
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Any

import torch
import tyro

MODES: dict[str, tuple[bool, bool]] = {  # mode -> (batched, use_cache)
    "unbatched-uncached": (False, False),
    "unbatched-cached": (False, True),
    "batched-uncached": (True, False),
    "batched-cached": (True, True),
}


def workload(n_prompts: int, seed: int = 0) -> tuple[Any, list[list[Any]]]:
    """A tokenizer trained on Maze-FO and Wordle text, and ``n_prompts`` windowed contexts
    (turn lists) drawn from scripted episodes, half from each task."""
    from lmrlgym.data.policies import make_policy
    from lmrlgym.eval.evaluate import evaluate
    from lmrlgym.models.tokenizer import train_tokenizer
    from lmrlgym.registry import make

    contexts: list[list[Any]] = []
    texts: list[str] = []
    for task, policy in (("Maze-FO-v0", "maze-random"), ("Wordle-v0", "wordle-random")):
        env = make(task)
        episodes = evaluate(make_policy(policy, task), task, 25, seed=seed).episodes
        for ep in episodes:
            texts += [t.text for t in ep.turns]
            for k, t in enumerate(ep.turns):
                if t.is_action and len(contexts) < (n_prompts // 2 if task == "Maze-FO-v0" else n_prompts):
                    contexts.append(env.context_turns(ep.turns[:k]))
        env.close()
    return train_tokenizer(texts, vocab_size=512), contexts


def bench_rollout(
    model: str = "gpt2-mini",
    n_prompts: int = 64,
    n_prompts_unbatched: int = 16,
    max_new_tokens: int = 16,
    max_context_tokens: int = 256,
    modes: tuple[str, ...] = tuple(MODES),
    seed: int = 0,
    repeats: int = 3,
    greedy: bool = False,
) -> list[dict[str, Any]]:
    """Generated actions/s per mode (list of dicts with ``mode`` and ``actions_per_s``).

    ``actions_sha1`` digests the generated ids: with ``greedy`` decoding every mode run on the
    same prompts generates the same actions (batching and the KV cache change only the speed).

    Unbatched modes run ``n_prompts_unbatched`` prompts (they are slow and their rate does not
    depend on the count); batched modes run all ``n_prompts`` in one batch. The modes are
    timed round-robin ``repeats`` times and each keeps its fastest run, so a busy machine
    slows every mode alike and a transient stall does not count.
    """
    from lmrlgym.models.decoding import Decoding
    from lmrlgym.models.factory import build_model
    from lmrlgym.models.policy import LMPolicy

    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; valid: {', '.join(MODES)}")
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}")
    tok, contexts = workload(n_prompts, seed)
    torch.manual_seed(seed)
    lm = build_model(model, tok, dropout=0.0).eval()
    runs: dict[str, tuple[LMPolicy, list[list[int]]]] = {}
    decoding = Decoding(greedy=greedy, max_new_tokens=max_new_tokens, seed=seed)
    for mode in modes:
        batched, use_cache = MODES[mode]
        n = n_prompts if batched else min(n_prompts_unbatched, n_prompts)
        policy = LMPolicy(lm, tok, decoding, max_context_tokens=max_context_tokens,
                          use_cache=use_cache, batch_size=n if batched else 1)
        prompts = [policy.prompt(c) for c in contexts[:n]]
        policy.generate(prompts[:2])  # warm-up (allocations, kernels)
        runs[mode] = policy, prompts
    best: dict[str, tuple[float, int]] = {}
    digest: dict[str, str] = {}
    for _ in range(repeats):
        for mode, (policy, prompts) in runs.items():
            policy.reseed(seed)
            start = time.perf_counter()
            gen = policy.generate(prompts)
            seconds = time.perf_counter() - start
            digest[mode] = hashlib.sha1(repr(gen.action_ids).encode()).hexdigest()
            if mode not in best or seconds < best[mode][0]:
                best[mode] = seconds, sum(len(ids) for ids in gen.action_ids)
    rows = []
    for mode, (policy, prompts) in runs.items():
        seconds, tokens = best[mode]
        n = len(prompts)
        rows.append({
            "mode": mode, "actions_per_s": n / seconds, "tokens_per_s": tokens / seconds,
            "actions": n, "tokens": tokens, "seconds": seconds, "repeats": repeats,
            "batch_size": policy.batch_size, "use_cache": policy.use_cache, "model": model,
            "max_new_tokens": max_new_tokens, "mean_prompt_tokens": sum(map(len, prompts)) / n,
            "threads": torch.get_num_threads(), "actions_sha1": digest[mode],
        })
    base = next((r["actions_per_s"] for r in rows if r["mode"] == "unbatched-uncached"), None)
    for r in rows:
        r["speedup_vs_unbatched_uncached"] = r["actions_per_s"] / base if base else None
    return rows


def rollout_main(
    model: str = "gpt2-mini",
    prompts: int = 64,
    prompts_unbatched: int = 16,
    max_new_tokens: int = 16,
    threads: int | None = None,
    seed: int = 0,
    repeats: int = 3,
    json_output: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Measure generated actions/s with and without batching and KV cache (Maze/Wordle prompts).

    With ``--policy openai:<base_url>/<model>`` it measures a served model instead (see
    ``lmrlgym bench rollout --policy URL --help``).

    Args:
        model: Model preset or local model directory.
        prompts: Prompts in the batched modes (one batch).
        prompts_unbatched: Prompts in the unbatched modes (one at a time).
        max_new_tokens: Tokens per action (the untrained model almost always reaches the cap).
        threads: torch intra-op threads (default: torch's choice; 1 is faster on a busy machine).
        seed: Seed of the workload, model init and sampling.
        repeats: Timed runs per mode (round-robin); each mode reports its fastest.
        json_output: One JSON object per mode (mode, actions_per_s, ...).
    """
    import json

    if threads is not None:
        if threads <= 0:
            raise ValueError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    rows = bench_rollout(model, prompts, prompts_unbatched, max_new_tokens, seed=seed,
                         repeats=repeats)
    if json_output:
        for r in rows:
            print(json.dumps(r))
        return
    header = ["mode", "actions/s", "tokens/s", "speedup", "actions", "batch"]
    cells = [header] + [[r["mode"], f"{r['actions_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                         f"{r['speedup_vs_unbatched_uncached']:.1f}x", str(r["actions"]),
                         str(r["batch_size"])] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())
