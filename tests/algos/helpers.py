"""Tiny models and Maze datasets shared by the algorithm tests."""

import dataclasses
import shutil
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


def rewound_copy(run_dir: Path, dest: Path, step: int) -> Path:
    """A copy of a finished run as a kill right after its step-``step`` checkpoint would have
    left it: no export, no later checkpoints (their metrics lines stay until resume drops them)."""
    shutil.copytree(run_dir, dest)
    shutil.rmtree(dest / "model")
    (dest / "heads.safetensors").unlink(missing_ok=True)
    for ckpt in (dest / "checkpoints").glob("step_*"):
        if int(ckpt.name.removeprefix("step_")) > step:
            shutil.rmtree(ckpt)
    (dest / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")
    return dest


def spy_on(home, name: str, spy, set_attr=setattr) -> None:
    """Replace function ``name`` of module ``home`` by ``spy`` there and in every loaded
    ``lmrlgym.algos`` module that imported it (the methods import their plumbing by name);
    ``set_attr``: e.g. ``monkeypatch.setattr``, to undo it after the test."""
    import sys

    current = getattr(home, name)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("lmrlgym.algos") and getattr(module, name, None) is current:
            set_attr(module, name, spy)


class MaliciousPickle:
    """Unpickling this calls ``open(marker, "w")``: it creates ``marker``, where a real attack
    would run any command (issue 13 item 1)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickles(run_dir: Path, marker: Path) -> list[Path]:
    """Replace every file of ``run_dir`` that a loader could unpickle by a malicious pickle:
    each checkpoint's state (as an older version's ``state.pt``) and the exported model's
    weights (as ``pytorch_model.bin``). Returns the planted files."""
    planted = []
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*")):
        for name in ("state.json", "state.safetensors"):
            (ckpt / name).unlink(missing_ok=True)
        planted.append(ckpt / "state.pt")
    if (run_dir / "model").is_dir():
        (run_dir / "model" / "model.safetensors").unlink(missing_ok=True)
        planted.append(run_dir / "model" / "pytorch_model.bin")
    for path in planted:
        torch.save({"optimizer": MaliciousPickle(marker), "rng": {}}, path)
    return planted
