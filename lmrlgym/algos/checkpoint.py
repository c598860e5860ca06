"""Checkpoints and exports of a run directory, written atomically (temp file or dir, then
rename), so a kill at any moment leaves the previous one intact.

``checkpoints/step_<N>/``: every trained module's weights (safetensors), the optimizer and
RNG states (``state.json`` and ``state.safetensors``) and the loop's own counters
(``meta.json``), for an exact ``--resume``. The export (``model/``, ``tokenizer/``,
``heads.safetensors``; ``value_model/`` for a separate value trunk) is what ``load_policy``
reads.

Nothing in a run directory is unpickled: run directories are shared (downloaded baselines, a
lab's NFS), and a pickle can run code when loaded (docs/security.md). Tensors go to safetensors,
everything else to JSON. Runs written before this layout keep their state in ``state.pt``
(``torch.save``); it is read with torch's weights-only loader and refused when that fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lmrlgym.algos import distributed
from lmrlgym.algos.rundir import CKPT_DIR, HEADS_FILE, LATEST, MODEL_DIR, VALUE_MODEL_DIR
from lmrlgym.data.io import atomic_write_text, honour_umask, temp_beside, write_json

STATE_JSON = "state.json"  # optimizer and RNG state: structure and scalars
STATE_TENSORS = "state.safetensors"  # ... and their tensors, referenced by name from the JSON
LEGACY_STATE = "state.pt"  # the same, pickled by torch.save (run dirs of older versions)
META = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely; the message names the file and what to do."""


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch RNG states as JSON values and a tensor."""
    version, internal, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, key.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (or the pickled tuples of a legacy ``state.pt``)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def pack(obj: Any, tensors: dict[str, Tensor], name: str = "") -> Any:
    """``obj`` (tensors in dicts, lists, tuples and JSON scalars) as a JSON value: each tensor
    moves to ``tensors`` under its path and is referenced as ``{"tensor": path}``; dicts
    (whose keys may be ints, as an optimizer's) and tuples are tagged to come back as such."""
    if isinstance(obj, Tensor):
        tensors[name] = obj.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"checkpoint state {name!r}: dict keys must be str or int")
        return {"dict": [[k, pack(v, tensors, f"{name}.{k}".lstrip("."))] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {type(obj).__name__: [pack(v, tensors, f"{name}.{i}") for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state {name!r}: cannot store a {type(obj).__name__}")


def unpack(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """The inverse of :func:`pack`; anything else raises ``ValueError``."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ValueError(f"unexpected value {str(obj)[:80]}")
    (tag, value), = obj.items()
    if tag == "tensor" and value in tensors:
        return tensors[value]
    if tag == "dict" and isinstance(value, list):
        return {k: unpack(v, tensors) for k, v in value}
    if tag in ("list", "tuple") and isinstance(value, list):
        items = [unpack(v, tensors) for v in value]
        return items if tag == "list" else tuple(items)
    raise ValueError(f"unexpected value {str(obj)[:80]}")


def save_checkpoint(
    run_dir: Path, step: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
    extra: dict[str, Any], keep: int, optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> Path:
    """Write ``checkpoints/step_<N>/`` atomically: build it in a temp dir, rename it, then
    point ``checkpoints/latest`` at it. A kill at any moment leaves the previous one intact.
    Under torchrun only rank 0 writes (the ranks hold the same weights). ``optimizers``: a
    method's own optimizers besides the loop's (ArCHer's critic), by name."""
    from safetensors.torch import save_file

    root = run_dir / CKPT_DIR
    final = root / f"step_{step:08d}"
    # Under FSDP every rank gathers the full weights and optimizer state (collectives).
    states = {name: distributed.full_state_dict(module) for name, module in modules.items()}
    optimizer_state = distributed.full_optimizer_state(optimizer)
    if not distributed.is_main():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(final, directory=True)
    try:
        for name, state in states.items():
            save_state(state, tmp / f"{name}.safetensors")
        tensors: dict[str, Tensor] = {}
        packed = pack({"optimizer": optimizer_state, "rng": rng_state(),
                       "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()}},
                      tensors)
        save_file(tensors, str(tmp / STATE_TENSORS))
        write_json(tmp / STATE_JSON, packed)
        write_json(tmp / META, {"step": step, **extra})
        honour_umask(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
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
    """Restore weights, optimizer (and ``optimizers``) and RNG states; returns the checkpoint's
    meta (step, ...).
    A file that is missing, malformed or does not fit the run raises :class:`CheckpointError`
    naming it."""
    from safetensors.torch import load_model

    for name, module in modules.items():
        with _reading(path / f"{name}.safetensors"):
            load_model(module, str(path / f"{name}.safetensors"))
    state, state_file = read_state(path)
    with _reading(state_file):
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        for name, opt in (optimizers or {}).items():
            opt.load_state_dict(state["optimizers"][name])
        set_rng_state(state["rng"])
    with _reading(path / META):
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
            raise ValueError("no integer 'step'")
    return meta


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Errors of reading or applying ``path`` (a missing file, bad JSON or safetensors, state
    that does not fit the model or optimizer) as one :class:`CheckpointError` naming it."""
    try:
        yield
    except CheckpointError:
        raise
    # SafetensorError and the errors of load_state_dict/setstate on a foreign file; RecursionError
    # from deeply nested JSON.
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot resume from this checkpoint: "
                              f"{type(e).__name__}: {str(e)[:300]}") from None


def read_state(checkpoint: Path) -> tuple[dict[str, Any], Path]:
    """The optimizer and RNG state of a checkpoint directory and the file it came from:
    ``state.json`` with its tensors in ``state.safetensors``, or a legacy ``state.pt``
    (:func:`read_legacy_state`)."""
    from safetensors.torch import load_file

    path = checkpoint / STATE_JSON
    if not path.exists():
        if (checkpoint / LEGACY_STATE).exists():
            return read_legacy_state(checkpoint / LEGACY_STATE), checkpoint / LEGACY_STATE
        raise CheckpointError(f"{checkpoint}: no {STATE_JSON}: the checkpoint is incomplete; "
                              "delete it (and point checkpoints/latest at an earlier one) or "
                              "start the run again")
    with _reading(checkpoint / STATE_TENSORS):
        tensors = load_file(str(checkpoint / STATE_TENSORS))
    with _reading(path):
        state = unpack(json.loads(path.read_text(encoding="utf-8")), tensors)
        if not isinstance(state, dict) or not {"optimizer", "rng"} <= state.keys():
            raise ValueError("expected the keys 'optimizer' and 'rng'")
    return state, path


def read_legacy_state(path: Path) -> dict[str, Any]:
    """``state.pt`` of a run written by an older lmrlgym, through torch's weights-only loader:
    it builds tensors, plain containers and (allowlisted here) NumPy uint32 arrays, the RNG's,
    and refuses anything else instead of calling it. A file it refuses is not unpickled."""
    if torch.__version__ < "2.6":
        raise CheckpointError(f"{path}: a legacy pickled checkpoint; the weights-only loader of "
                              f"torch {torch.__version__} has known bypasses (CVE-2025-32434), so "
                              "it is not read. Upgrade torch to 2.6 or later to resume this run")
    reconstruct = np.ndarray(0).__reduce__()[0]  # NumPy's array unpickling helper
    allowed = [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the loader's notes on foreign pickle protocols
            state = torch.load(path, map_location="cpu", weights_only=True)
    # Whatever the loader raises on a hostile or broken file (UnpicklingError, EOFError, ...),
    # the answer is the same: refuse it.
    except Exception:
        raise CheckpointError(
            f"{path}: refused: this pickled checkpoint holds more than tensors and plain values, "
            "and lmrlgym never unpickles other objects (a run directory from elsewhere could run "
            "code that way). Start the run again without --resume, or a new run from its "
            "exported model/ with --init-from") from None
    if not isinstance(state, dict) or not {"optimizer", "rng"} <= state.keys():
        raise CheckpointError(f"{path}: expected the keys 'optimizer' and 'rng'")
    return state


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
        tmp_file = temp_beside(run_dir / HEADS_FILE)
        try:
            save_file(state, str(tmp_file))
            honour_umask(tmp_file)
            os.replace(tmp_file, run_dir / HEADS_FILE)
        except BaseException:
            tmp_file.unlink(missing_ok=True)
            raise


def save_model_dir(model: nn.Module, state: dict[str, Tensor], tokenizer: Any, path: Path) -> None:
    """``model`` with ``state`` as its weights, and ``tokenizer``, in the directory ``path``
    (replaced atomically: written beside it, then renamed)."""
    from transformers.utils import logging as hf_logging

    from lmrlgym.models import lora

    hf_logging.disable_progress_bar()  # progress bars belong to the CLI layer
    tmp = temp_beside(path, directory=True)
    if lora.is_lora(model):
        lora.save_pretrained(model, tmp)
    else:
        model.save_pretrained(str(tmp), state_dict=state)
    tokenizer.save_pretrained(str(tmp))
    honour_umask(tmp)  # safetensors writes 0600 whatever the umask
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def load_heads(run_dir: Path, heads: nn.ModuleDict) -> nn.ModuleDict:
    """The exported weights of ``heads`` (``heads.safetensors``, keys ``<head>.<param>``)."""
    from safetensors.torch import load_file

    heads.load_state_dict(load_file(str(Path(run_dir) / HEADS_FILE)))
    return heads
