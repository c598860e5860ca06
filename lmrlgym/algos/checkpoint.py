"""Checkpoints and exports of a run directory, written atomically (temp file or dir, then
rename), so a kill at any moment leaves the previous one intact.

``checkpoints/step_<N>/``: every trained module's weights (safetensors), the optimizer and
RNG states and the loop's own counters (``meta.json``), for an exact ``--resume``. The export
(``model/``, ``tokenizer/``, ``heads.safetensors``; ``value_model/`` for a separate value
trunk) is what ``load_policy`` reads.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lmrlgym.algos import distributed
from lmrlgym.algos.rundir import CKPT_DIR, HEADS_FILE, LATEST, MODEL_DIR, VALUE_MODEL_DIR
from lmrlgym.data.io import write_json


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    run_dir: Path, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
    extra: dict[str, Any], keep: int, optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> Path:
    """Write ``checkpoints/step_<N>/`` atomically: build it in a temp dir, rename it, then
    point ``checkpoints/latest`` at it. A kill at any moment leaves the previous one intact.
    Under torchrun only rank 0 writes (the ranks hold the same weights). ``optimizers``: a
    method's own optimizers besides the loop's (ArCHer's critic), by name."""

    root = run_dir / CKPT_DIR
    final = root / f"step_{step:08d}"
    # Under FSDP every rank gathers the full weights and optimizer state (collectives).
    states = {name: distributed.full_state_dict(module) for name, module in modules.items()}
    optimizer_state = distributed.full_optimizer_state(optimizer)
    if not distributed.is_main():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp_"))
    try:
        for name, state in states.items():
            save_state(state, tmp / f"{name}.safetensors")
        torch.save({"optimizer": optimizer_state, "rng": rng_state(),
                    "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()}},
                   tmp / "state.pt")
        write_json(tmp / "meta.json", {"step": step, **extra})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fd, ptr = tempfile.mkstemp(dir=root, prefix=".latest.")
    with os.fdopen(fd, "w") as f:
        f.write(final.name + "\n")
    os.replace(ptr, root / LATEST)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_state(state: dict[str, Tensor], path: Path) -> None:
    """A module's state dict as safetensors, the way ``safetensors.torch.save_model`` writes it:
    of tensors sharing memory (GPT-2's tied ``lm_head``/``wte``) only the first name is kept
    (``load_model`` restores the others), recorded in the metadata."""
    from safetensors.torch import save_file

    kept: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, Tensor] = {}
    metadata: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in kept:
            metadata[name] = kept[key]
        else:
            kept[key] = name
            out[name] = t.contiguous()
    save_file(out, str(path), metadata=metadata or None)


def load_checkpoint(
    path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer (and ``optimizers``) and RNG states; returns the
    checkpoint's meta (step, ...)."""
    from safetensors.torch import load_model

    for name, module in modules.items():
        load_model(module, str(path / f"{name}.safetensors"))
    state = torch.load(path / "state.pt", weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    for name, opt in (optimizers or {}).items():
        opt.load_state_dict(state["optimizers"][name])
    set_rng_state(state["rng"])
    return json.loads((path / "meta.json").read_text())


def export_lm(lm: nn.Module, tokenizer: Any, run_dir: Path, heads: dict[str, nn.Module] | None = None,
              value_lm: nn.Module | None = None) -> None:
    """Write ``model/`` (Hugging Face ``save_pretrained``), the heads' weights and, for a
    separate value trunk, ``value_model/`` (laid out as ``model/``), each atomically. A LoRA
    model writes its frozen base there and the adapter in ``model/adapter/`` (PEFT format).
    Rank 0 only under torchrun/accelerate."""
    from safetensors.torch import save_file

    # Under FSDP every rank gathers the full weights (collectives); rank 0 writes them.
    # model/ last: load_policy takes it as the sign of a finished export.
    models = {**({VALUE_MODEL_DIR: value_lm} if value_lm is not None else {}), MODEL_DIR: lm}
    states = {name: distributed.full_state_dict(model) for name, model in models.items()}
    head_states = {name: distributed.full_state_dict(head) for name, head in (heads or {}).items()}
    if not distributed.is_main():
        return
    for name, model in models.items():
        save_model_dir(model, states[name], tokenizer, run_dir / name)
    if heads:
        state = {f"{name}.{k}": v.detach().contiguous() for name, head_state in head_states.items()
                 for k, v in head_state.items()}
        fd, tmp_file = tempfile.mkstemp(dir=run_dir, prefix=".heads.")
        os.close(fd)
        save_file(state, tmp_file)
        os.replace(tmp_file, run_dir / HEADS_FILE)


def save_model_dir(model: nn.Module, state: dict[str, Tensor], tokenizer: Any, path: Path) -> None:
    """``model`` with ``state`` as its weights, and ``tokenizer``, in the directory ``path``
    (replaced atomically: written beside it, then renamed)."""
    from transformers.utils import logging as hf_logging

    from lmrlgym.models import lora

    hf_logging.disable_progress_bar()  # progress bars belong to the CLI layer
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    if lora.is_lora(model):
        lora.save_pretrained(model, tmp)
    else:
        model.save_pretrained(str(tmp), state_dict=state)
    tokenizer.save_pretrained(str(tmp))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_heads(run_dir: Path, heads: nn.ModuleDict) -> nn.ModuleDict:
    """The exported weights of ``heads`` (``heads.safetensors``, keys ``<head>.<param>``)."""
    from safetensors.torch import load_file

    heads.load_state_dict(load_file(str(Path(run_dir) / HEADS_FILE)))
    return heads
