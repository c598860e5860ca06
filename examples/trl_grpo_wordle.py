"""Train TRL's GRPOTrainer on lmrlgym's Wordle, multi-turn, through the env server.

GRPOTrainer's multi-turn hook in TRL 1.x is ``rollout_func(prompts, trainer)``: it plays whole
episodes and returns, per episode, the prompt tokens, the completion tokens (the agent's guesses
and the env's feedback, interleaved), the sampling log-probabilities and an ``env_mask`` that is
1 on the agent's tokens and 0 on the env's (so only the guesses are trained). Extra keys reach
the reward functions; here ``env_return``, the episode's return from the env, is the reward.

Each dataset row only names an episode (``"Wordle-v0 seed 17"``); the env supplies the text.
The env is ``lmrlgym.remote.make(url, ...)`` (a running ``lmrlgym env-server``) or, without
``--env-url``, ``lmrlgym.make`` in this process: the same API, so the same rollout code.

Run it (``pip install "lmrlgym[trl]"``; a model directory with a tokenizer, e.g. one built here)::

    lmrlgym env-server --port 8100 --tasks Wordle-v0 &
    python examples/trl_grpo_wordle.py --build-tiny runs/tiny_gpt2 --model runs/tiny_gpt2 \\
        --env-url http://127.0.0.1:8100 --max-steps 50 --out runs/grpo_wordle

``--build-tiny DIR`` writes a randomly initialised GPT-2 (2 layers x 64) and a tokenizer trained
here on the Wordle word list, so nothing is downloaded. Invalid guesses cost ``--invalid-reward``
(-2 by default, harsher than a valid miss, like the original's RL Wordle which used -10), which
gives a fresh model returns that differ between episodes, hence a learning signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

import lmrlgym
from lmrlgym import remote

TASK = "Wordle-v0"


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    env_url: str | None = None  # None: local envs
    invalid_reward: float = -2.0
    max_action_tokens: int = 4
    temperature: float = 1.0


@dataclasses.dataclass
class EpisodeRecord:
    """What one rollout did, kept so a caller can check the rewards against the env."""

    seed: int
    actions: list[str]
    ret: float


def build_tiny(out: Path, seed: int = 0) -> None:
    """A random GPT-2 and a byte-level BPE trained on the Wordle words (one token per word
    where the merges allow), saved with ``save_pretrained``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmrlgym.envs.wordle import WordleEnv
    from lmrlgym.models.tokenizer import train_tokenizer

    words = list(WordleEnv().vocab.answers)
    tok = train_tokenizer([f"{w}\n" for w in words] * 2 + ["Wordle:\n", "b y g b b\n"],
                          vocab_size=2048)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(out)
    tok.save_pretrained(out)


@torch.no_grad()
def sample_action(model: Any, context: list[int], settings: RolloutSettings, stop_id: int,
                  generator: torch.Generator) -> tuple[list[int], list[float]]:
    """Sample up to ``max_action_tokens`` tokens (stopping after a newline) with their
    log-probabilities at the sampling temperature, as GRPO's importance ratio expects."""
    ids: list[int] = []
    logps: list[float] = []
    device = next(model.parameters()).device
    for _ in range(settings.max_action_tokens):
        logits = model(torch.tensor([context + ids], device=device)).logits[0, -1].float()
        logp = torch.log_softmax(logits / settings.temperature, dim=-1)
        token = int(torch.multinomial(logp.exp().cpu(), 1, generator=generator))
        ids.append(token)
        logps.append(float(logp[token]))
        if token == stop_id:
            break
    return ids, logps


def make_rollout_func(settings: RolloutSettings, records: list[EpisodeRecord]) -> Any:
    """TRL's ``rollout_func``: one whole episode per prompt (the sampler already repeats each
    prompt ``num_generations`` times)."""
    from lmrlgym.models.tokenizer import newline_id

    def make_env() -> Any:
        kwargs = {"invalid_reward": settings.invalid_reward}
        return (remote.make(settings.env_url, TASK, **kwargs) if settings.env_url
                else lmrlgym.make(TASK, **kwargs))

    def rollout_func(prompts: list[str], trainer: Any) -> dict[str, list]:
        tok = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model)
        stop = newline_id(tok)
        generator = torch.Generator().manual_seed(trainer.args.seed + trainer.state.global_step)
        out: dict[str, list] = {k: [] for k in
                                ("prompt_ids", "completion_ids", "logprobs", "env_mask",
                                 "env_return")}
        env = make_env()
        try:
            for prompt in prompts:
                seed = int(prompt.rsplit(" ", 1)[1])
                obs, _ = env.reset(seed=seed)
                prompt_ids = [tok.bos_token_id] + tok.encode(obs, add_special_tokens=False)
                ids: list[int] = []
                mask: list[int] = []
                logps: list[float] = []
                record = EpisodeRecord(seed, [], 0.0)
                done = False
                while not done:
                    action_ids, action_logps = sample_action(model, prompt_ids + ids, settings,
                                                             stop, generator)
                    ids += action_ids
                    mask += [1] * len(action_ids)
                    logps += action_logps
                    action = tok.decode(action_ids)
                    _, reward, terminated, truncated, info = env.step(action)
                    record.actions.append(action)
                    record.ret += reward
                    done = terminated or truncated
                    # The env's reply (and the newline the env adds to an unfinished action)
                    # are context, not trained: mask 0, log-prob 0.
                    reply = ("" if action_ids[-1] == stop else "\n") + info["turns"][-1].text
                    reply_ids = tok.encode(reply, add_special_tokens=False)
                    ids += reply_ids
                    mask += [0] * len(reply_ids)
                    logps += [0.0] * len(reply_ids)
                records.append(record)
                for key, value in (("prompt_ids", prompt_ids), ("completion_ids", ids),
                                   ("logprobs", logps), ("env_mask", mask),
                                   ("env_return", record.ret)):
                    out[key].append(value)
        finally:
            env.close()
        return out

    return rollout_func


def env_return(prompts: list[str], completions: list[Any], env_return: list[float],
               **kwargs: Any) -> list[float]:
    """The reward: each episode's return, as the env computed it."""
    return list(env_return)


def train(model_dir: Path, out: Path, settings: RolloutSettings, max_steps: int = 2,
          batch_size: int = 4, num_generations: int = 4, learning_rate: float = 1e-3,
          seed: int = 0) -> tuple[Any, list[EpisodeRecord]]:
    """Run GRPOTrainer for ``max_steps`` optimiser steps; returns the trainer and the episodes."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    n_prompts = max_steps * batch_size // num_generations
    dataset = Dataset.from_dict({"prompt": [f"{TASK} seed {s}" for s in range(n_prompts)]})
    args = GRPOConfig(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=batch_size,
        num_generations=num_generations, learning_rate=learning_rate, weight_decay=0.0,
        temperature=settings.temperature, beta=0.0, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, seed=seed, shuffle_dataset=False,
        max_completion_length=256)
    records: list[EpisodeRecord] = []
    trainer = GRPOTrainer(model=model, reward_funcs=env_return, args=args,
                          train_dataset=dataset, processing_class=tok,
                          rollout_func=make_rollout_func(settings, records))
    trainer.train()
    return trainer, records


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="local model + tokenizer directory")
    p.add_argument("--build-tiny", type=Path, help="first write a tiny random GPT-2 here")
    p.add_argument("--env-url", help="a running lmrlgym env-server (default: envs in-process)")
    p.add_argument("--out", type=Path, default=Path("runs/grpo_wordle"))
    p.add_argument("--max-steps", type=int, default=2)
    p.add_argument("--max-action-tokens", type=int, default=4)
    p.add_argument("--invalid-reward", type=float, default=-2.0)
    a = p.parse_args(argv)
    if a.build_tiny:
        build_tiny(a.build_tiny)
    settings = RolloutSettings(a.env_url, a.invalid_reward, a.max_action_tokens)
    trainer, records = train(a.model, a.out, settings, a.max_steps)
    trainer.save_model(str(a.out))
    returns = [r.ret for r in records]
    print(f"{len(records)} episodes, mean return {sum(returns) / len(returns):+.2f}; "
          f"saved {a.out}")


if __name__ == "__main__":
    main()
