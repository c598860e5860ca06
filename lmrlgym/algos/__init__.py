"""The training methods, and the API the rest of lmrlgym uses to read their runs (sections:
docs/algorithms.md).

Public: :data:`ALGORITHMS` and :func:`algorithm` (the method table), :func:`load_config`,
:func:`load_policy`, :func:`training_rows`, ``TrainConfig`` and the run-directory layout
(:mod:`.rundir`).
``eval``, ``serve`` and ``bench`` import only these.

One module per concern; an arrow is "imports":

- ``bc``, ``filtered_bc``, ``mc``, ``ilql``: the offline methods, each a frozen config, its
  paper presets, a pure loss and a ``train()`` around :class:`.loop.Loop`.
- ``ppo``, ``online_filtered_bc``, ``grpo``, ``rloo``, ``gigpo``, ``archer``: the online
  methods, each a config and a round method run by :func:`.online.run` (rollouts in rounds,
  §3.6-3.8); ``grpo`` also holds the clipped policy-gradient method the last four share.
- ``rl``: pure tensor math (decision slots, discounting, returns-to-go, GAE, pooled means).
- ``config`` (``TrainConfig``), ``presets`` (per-task tables), ``rundir`` (file layout),
  ``checkpoint`` (atomic save/load/export), ``metrics`` (logging), ``progress`` (the
  phases reported to the CLI), ``dataset`` (episodes ->
  rows -> minibatches), ``lm`` (model building, hidden states, the evaluation policy),
  ``loop`` (run start and the offline loop), ``online`` (rollouts and the online loop),
  ``distributed`` (torchrun/accelerate), ``cli`` (``lmrlgym train``).

An algorithm module defines ``CONFIG`` (its config class, with ``ALGO`` = its name),
``preset(task, **overrides)`` and ``train(config, progress=None)``. A value-guided method
(MC, ILQL) also defines ``make_heads(config, d, n_vocab)`` (the heads it exports),
``logits_adjust(heads, beta)`` (its decoding rule, §3.5) and ``value_readout(heads)`` (its Q and
V, for the value-map diagnostic); :func:`load_policy` uses all three.

This module imports no torch at import time (``lmrlgym train --help`` stays fast).
"""

from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lmrlgym.algos.config import TrainConfig
from lmrlgym.algos.rundir import (
    CONFIG_FILE,
    HEADS_FILE,
    MODEL_DIR,
    TOKENIZER_DIR,
    VALUE_MODEL_DIR,
    config_from_fields,
    latest_checkpoint,
    read_config,
)
from lmrlgym.models.decoding import Decoding

if TYPE_CHECKING:  # type-only: importing these needs torch
    from lmrlgym.models.policy import LMPolicy
    from lmrlgym.models.render import Segment

__all__ = ["ALGORITHMS", "CONFIG_FILE", "HEADS_FILE", "MODEL_DIR", "TOKENIZER_DIR", "TrainConfig",
           "VALUE_MODEL_DIR", "algorithm", "latest_checkpoint", "load_config", "load_policy",
           "training_rows"]

# name -> module holding CONFIG, preset(task) and train(config, progress)
ALGORITHMS: dict[str, str] = {
    "bc": "lmrlgym.algos.bc",
    "filtered_bc": "lmrlgym.algos.filtered_bc",
    "mc": "lmrlgym.algos.mc",
    "ilql": "lmrlgym.algos.ilql",
    "ppo": "lmrlgym.algos.ppo",
    "online_filtered_bc": "lmrlgym.algos.online_filtered_bc",
    "grpo": "lmrlgym.algos.grpo",
    "rloo": "lmrlgym.algos.rloo",
    "gigpo": "lmrlgym.algos.gigpo",
    "archer": "lmrlgym.algos.archer",
}


def algorithm(name: str) -> ModuleType:
    """The module of a training method; an unknown name raises listing the valid ones."""
    if name not in ALGORITHMS:
        close = difflib.get_close_matches(name, list(ALGORITHMS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown algorithm {name!r}.{hint} Valid: {', '.join(ALGORITHMS)}")
    return importlib.import_module(ALGORITHMS[name])


def load_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved config of a run directory, as its algorithm's config class."""
    algo, fields = read_config(run_dir)
    if algo not in ALGORITHMS:
        raise ValueError(f"{Path(run_dir) / CONFIG_FILE}: unknown algo {algo!r}; "
                         f"valid: {', '.join(ALGORITHMS)}")
    return config_from_fields(algorithm(algo).CONFIG, fields, str(Path(run_dir) / CONFIG_FILE))


def load_policy(run_dir: str | os.PathLike, beta: float | None = None, device: str = "cpu",
                decoding: Decoding | None = None, batch_size: int = 64) -> LMPolicy:
    """An ``LMPolicy`` from a finished run (``lmrlgym eval --run``): the exported ``model/``
    and ``tokenizer/``, value-guided with the run's heads and β for MC and ILQL (§3.5); a
    ``value_model="separate"`` run's heads read the value trunk in ``value_model/``.

    ``beta`` overrides the run's β and ``decoding`` its decoding (default: the run's,
    ``load_config(run_dir).decoding``; ``dataclasses.replace`` it to change a field);
    ``batch_size`` is the policy's prompts per forward pass.
    """
    from lmrlgym.algos.backbone import lm_policy
    from lmrlgym.algos.checkpoint import load_heads
    from lmrlgym.models.lora import build_model  # the factory's, plus a saved LoRA adapter
    from lmrlgym.models.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if not (run_dir / MODEL_DIR).is_dir():
        raise FileNotFoundError(f"{run_dir}: no exported {MODEL_DIR}/ (the run has not finished; "
                                f"resume it with --resume {run_dir})")
    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR)
    lm = build_model(str(run_dir / MODEL_DIR), tokenizer).to(device).eval()
    module = algorithm(config.ALGO)
    if not hasattr(module, "logits_adjust"):
        return lm_policy(lm, tokenizer, config, decoding=decoding, batch_size=batch_size)
    value_lm = None
    if config.value_model == "separate":
        value_lm = build_model(str(run_dir / VALUE_MODEL_DIR), tokenizer).to(device).eval()
    d = lm.get_output_embeddings().in_features
    heads = load_heads(run_dir, module.make_heads(config, d, len(tokenizer))).to(device).eval()
    beta = config.beta if beta is None else float(beta)
    policy = lm_policy(lm, tokenizer, config, module.logits_adjust(heads, beta), value_lm,
                       decoding, batch_size, name=f"{config.ALGO}(beta={beta:g})",
                       value_readout=module.value_readout(heads), beta=beta)
    policy.value_trunk = lm if value_lm is None else value_lm  # for `lmrlgym diagnose values`
    return policy


def training_rows(config: TrainConfig, run_dir: str | os.PathLike) -> list[Segment]:
    """The rendered training rows of an offline method's config (its dataset, split and the
    run's tokenizer), as its loop trains on them; ``bench train`` counts their FLOPs."""
    from lmrlgym.algos.dataset import prepare_data

    return prepare_data(config, Path(run_dir)).train_rows
