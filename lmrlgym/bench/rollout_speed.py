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

:func:`bench_episodes` measures whole rollouts instead (``evaluate`` on the real envs, greedy,
so every mode plays the same episodes), per task, with the tools a user would compare:

- ``naive``: one episode at a time, no KV cache;
- ``hf-generate``: Hugging Face ``model.generate`` on each turn's left-padded batch of the live
  episodes' prompts (its KV cache, the newline tokens as end tokens, special tokens suppressed);
- ``ours-no-reuse``: ``LMPolicy`` batched with its KV cache, each turn's prompt re-encoded;
- ``ours-reuse``: the same, each live episode keeping its cache between turns (the default).

By default the episodes are played by a model first trained by BC for ``bc_steps`` steps on
each task's behaviour data, so an action has the task's length (a Maze-FO move is 3 tokens, a
Wordle guess 6), as in the rollouts of an online method, which starts from BC. The untrained
model's greedy action is a newline: one token, which leaves nothing for a KV cache to save
within an action and measures prompt encoding alone (``--bc-steps 0``).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro

from lmrlgym.bench.report import print_table
from lmrlgym.models.policy import Generation, LMPolicy

MODES: dict[str, tuple[bool, bool]] = {  # mode -> (batched, use_cache)
    "unbatched-uncached": (False, False),
    "unbatched-cached": (False, True),
    "batched-uncached": (True, False),
    "batched-cached": (True, True),
}
EPISODE_MODES = ("naive", "hf-generate", "ours-no-reuse", "ours-reuse")


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


class HFGeneratePolicy(LMPolicy):
    """``LMPolicy``'s prompts, actions generated by Hugging Face ``model.generate`` instead:
    one left-padded batch per call, the KV cache on, every newline token an end token and the
    special tokens suppressed, so greedy actions equal ``LMPolicy``'s."""

    @torch.no_grad()
    def generate(self, prompts, action_sets=None, sessions=None) -> Generation:
        ids, mask = self._left_pad([list(p) for p in prompts])
        d = self.settings
        n_model = self.model.get_output_embeddings().weight.shape[0]
        suppress = sorted(set(self._banned.tolist()) | set(range(self.n_vocab, n_model)))
        out = self.model.generate(
            ids, attention_mask=mask, max_new_tokens=d.max_new_tokens, do_sample=not d.greedy,
            temperature=None if d.greedy else d.temperature, top_k=d.top_k or 0, top_p=d.top_p,
            eos_token_id=self._stops.nonzero().squeeze(1).tolist(), pad_token_id=self.pad_id,
            suppress_tokens=suppress, use_cache=True)[:, ids.shape[1]:].tolist()
        action_ids, truncated = [], []
        for row in out:
            end = next((k for k, t in enumerate(row) if self._stops[t]), None)
            truncated.append(end is None)
            action_ids.append(row + [self.newline_id] if end is None else row[: end + 1])
        texts = [self.tokenizer.decode(a, skip_special_tokens=False) for a in action_ids]
        self.n_actions += len(action_ids)
        self.last = Generation(texts, action_ids, truncated, [list(p) for p in prompts],
                               [None] * len(prompts))
        return self.last


# Behaviour episodes and BC steps that give a task-shaped policy (``bc_steps``): Maze-FO's
# moves are 3 tokens, a Wordle guess 6, where an untrained model's greedy action is a newline.
BC_EPISODES = {"Maze-FO-v0": 300, "Wordle-v0": 500}


def bc_model(model: str, task: str, steps: int, seed: int, workdir: Path) -> tuple[Any, Any]:
    """(tokenizer, model): ``model`` trained by BC (``lmrlgym train bc``'s loop) for ``steps``
    steps on the task's behaviour data, generated into ``workdir``."""
    from lmrlgym.algos import bc
    from lmrlgym.algos.rundir import MODEL_DIR, TOKENIZER_DIR
    from lmrlgym.data.generate import DATA_SEED_BASE, generate_dataset
    from lmrlgym.data.policies import default_policy
    from lmrlgym.models.factory import build_model
    from lmrlgym.models.tokenizer import load_tokenizer

    data, run = workdir / f"{task}_data", workdir / f"{task}_bc"
    generate_dataset(task, data, BC_EPISODES.get(task, 300), default_policy(task), DATA_SEED_BASE,
                     workers=1, overwrite=True)
    bc.train(bc.BCConfig(task=task, data=str(data), out=str(run), model=model, seed=seed,
                         vocab_size=512, max_steps=steps, batch_size=32, lr=1e-3,
                         max_context_tokens=256, save_every=steps, tensorboard=False))
    tok = load_tokenizer(run / TOKENIZER_DIR)
    return tok, build_model(str(run / MODEL_DIR), tok).eval()


def bench_episodes(
    model: str = "gpt2-mini",
    tasks: tuple[str, ...] = ("Maze-FO-v0", "Wordle-v0"),
    n_episodes: int = 16,
    n_episodes_naive: int = 1,
    max_new_tokens: int = 16,
    seed: int = 0,
    modes: tuple[str, ...] = EPISODE_MODES,
    bc_steps: int = 0,
) -> list[dict[str, Any]]:
    """Actions/s of greedy evaluation rollouts per (task, mode): ``n_episodes`` episodes at
    once (``naive``: ``n_episodes_naive``, one at a time), each task's prompt budget ``P``,
    ``max_new_tokens`` per action. ``episodes_sha1`` digests the transcripts: the modes play
    the same episodes (the naive mode its first ones).

    ``bc_steps`` > 0 first trains the model by BC on each task's behaviour data
    (:func:`bc_model`), so its actions have the task's length, as a rollout of an online
    method's BC start has; 0 times the untrained model, whose greedy actions are mostly one
    token, so prompt encoding is almost all of each action's work."""
    from lmrlgym.envs import task_lengths
    from lmrlgym.eval.evaluate import evaluate
    from lmrlgym.models.decoding import Decoding
    from lmrlgym.models.factory import build_model
    from lmrlgym.registry import make

    unknown = set(modes) - set(EPISODE_MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; valid: {', '.join(EPISODE_MODES)}")
    if bc_steps < 0:
        raise ValueError(f"bc_steps must be >= 0, got {bc_steps}")
    if not bc_steps:  # one untrained model, with a tokenizer of both tasks' text
        tok, _ = workload(2, seed)
        torch.manual_seed(seed)
        lm = build_model(model, tok, dropout=0.0).eval()
    decoding = Decoding(greedy=True, max_new_tokens=max_new_tokens, seed=seed)
    rows = []
    for task in tasks:
        if bc_steps:
            with tempfile.TemporaryDirectory(prefix="lmrlgym-bench-rollout-") as workdir:
                tok, lm = bc_model(model, task, bc_steps, seed, Path(workdir))
        env = make(task)
        window, budget = env.context_turns, task_lengths()[task]["max_context_tokens"]
        env.close()
        for mode in modes:
            naive = mode == "naive"
            n = n_episodes_naive if naive else n_episodes
            policy = (HFGeneratePolicy if mode == "hf-generate" else LMPolicy)(
                lm, tok, decoding, context_turns=window, max_context_tokens=budget,
                use_cache=not naive, batch_size=1 if naive else n,
                pad_budget=float("inf"), reuse_cache=mode == "ours-reuse")
            policy.generate([[policy.bos_id]] * 2)  # warm-up (allocations, kernels)
            start = time.perf_counter()
            episodes = evaluate(policy, task, n, seed=seed, max_concurrent=n).episodes
            seconds = time.perf_counter() - start
            actions = [t.text for ep in episodes for t in ep.turns if t.is_action]
            transcript = [[t.text for t in ep.turns] for ep in episodes]
            action_tokens = sum(len(tok.encode(a, add_special_tokens=False)) for a in actions)
            rows.append({"task": task, "mode": mode, "actions_per_s": len(actions) / seconds,
                         "actions": len(actions), "episodes": n, "seconds": seconds,
                         "tokens_per_action": action_tokens / len(actions), "bc_steps": bc_steps,
                         "max_new_tokens": max_new_tokens, "max_context_tokens": budget,
                         "model": model, "threads": torch.get_num_threads(),
                         "episodes_sha1": hashlib.sha1(repr(transcript).encode()).hexdigest()})
        rates = {r["mode"]: r["actions_per_s"] for r in rows if r["task"] == task}
        for r in rows:
            if r["task"] == task:
                r["vs_naive"] = r["actions_per_s"] / rates["naive"] if "naive" in rates else None
                r["vs_hf_generate"] = (r["actions_per_s"] / rates["hf-generate"]
                                       if "hf-generate" in rates else None)
    return rows


def rollout_main(
    model: str = "gpt2-mini",
    prompts: int = 64,
    prompts_unbatched: int = 16,
    max_new_tokens: int = 16,
    threads: int | None = None,
    seed: int = 0,
    repeats: int = 3,
    episodes: int = 16,
    episodes_naive: int = 1,
    bc_steps: int = 150,
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
        episodes: Greedy Maze-FO and Wordle episodes played at once per rollout mode (naive,
            HF generate batched, ours without and with cross-turn KV reuse); 0 skips them.
        episodes_naive: Episodes of the naive rollout mode (one at a time, no cache).
        bc_steps: BC steps on each task's behaviour data before its episodes are played, so the
            actions have the task's length (Maze-FO 3 tokens, Wordle 6) as an online method's
            BC start's do; 0: the untrained model, whose greedy actions are one token.
        json_output: One JSON object per mode (mode, actions_per_s, ...).
    """
    import json

    if threads is not None:
        if threads <= 0:
            raise ValueError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    if episodes < 0 or episodes_naive < 1 or bc_steps < 0:
        raise ValueError(f"--episodes and --bc-steps must be >= 0 and --episodes-naive >= 1, got "
                         f"{episodes}, {bc_steps} and {episodes_naive}")
    rows = bench_rollout(model, prompts, prompts_unbatched, max_new_tokens, seed=seed,
                         repeats=repeats)
    episode_rows = (bench_episodes(model, n_episodes=episodes, n_episodes_naive=episodes_naive,
                                   max_new_tokens=max_new_tokens, seed=seed, bc_steps=bc_steps)
                    if episodes else [])
    if json_output:
        for r in rows + episode_rows:
            print(json.dumps(r))
        return
    print_table(["mode", "actions/s", "tokens/s", "speedup", "actions", "batch"],
                 [[r["mode"], f"{r['actions_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                   f"{r['speedup_vs_unbatched_uncached']:.1f}x", str(r["actions"]),
                   str(r["batch_size"])] for r in rows])
    if episode_rows:
        print()
        print_table(["task", "rollout", "actions/s", "vs naive", "vs HF generate", "actions",
                      "tokens/action", "episodes"],
                     [[r["task"], r["mode"], f"{r['actions_per_s']:.1f}", f"{r['vs_naive']:.1f}x",
                       f"{r['vs_hf_generate']:.2f}x", str(r["actions"]),
                       f"{r['tokens_per_action']:.1f}", str(r["episodes"])]
                      for r in episode_rows])
        print(f"(models trained by BC for {bc_steps} steps per task)" if bc_steps
              else "(untrained model)")
