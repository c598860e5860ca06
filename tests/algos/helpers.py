"""Tiny models and Maze datasets shared by the algorithm tests."""

import dataclasses
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmrlgym.algos import load_config, load_policy
from lmrlgym.data.generate import generate_dataset


def micro_model(path: Path, n_layer: int = 1, n_embd: int = 32) -> str:
    """A randomly initialised GPT-2 far below the presets (tests only), saved as a directory
    that ``--model`` loads; its 512 embedding rows cover any tokenizer of ``vocab_size <= 512``
    (rows beyond ``len(tokenizer)`` are sliced off)."""
    if not path.exists():
        torch.manual_seed(0)  # the same weights whichever tests ran before
        # No dropout: the learning tests' margins were calibrated with dropout off.
        config = GPT2Config(n_layer=n_layer, n_head=2, n_embd=n_embd, n_positions=320,
                            vocab_size=512, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        GPT2LMHeadModel(config).save_pretrained(str(path))
    return str(path)


def run_policy(run_dir: Path, beta: float | None = None, **changes):
    """``load_policy`` decoding with the run's own settings, ``changes`` (``greedy=True``,
    ``seed=1``) replaced."""
    decoding = dataclasses.replace(load_config(run_dir).decoding, **changes)
    return load_policy(run_dir, beta=beta, decoding=decoding)


def maze_dataset(path: Path, n: int, policy: str, seed: int = 1_000_000) -> str:
    if not (path / "manifest.json").exists():
        generate_dataset("Maze-FO-v0", path, n, policy, seed=seed, overwrite=True)
    return str(path)


def spy_on(home, name: str, spy, set_attr=setattr) -> None:
    """Replace function ``name`` of module ``home`` by ``spy`` there and in every loaded
    ``lmrlgym.algos`` module that imported it (the methods import their plumbing by name);
    ``set_attr``: e.g. ``monkeypatch.setattr``, to undo it after the test."""
    import sys

    current = getattr(home, name)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("lmrlgym.algos") and getattr(module, name, None) is current:
            set_attr(module, name, spy)
