"""The trained causal LM: building it (from a preset, a path or an ``init_from`` run, with
LoRA), dropout off, the separate layout's value trunk, its hidden states, and the evaluation
policy of a run (docs/algorithms.md §2.1, §2.3, §3.5)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from lmrlgym.algos.config import TrainConfig, ValueGuidedConfig, config_algo
from lmrlgym.algos.dataset import context_fn
from lmrlgym.algos.rundir import MODEL_DIR
from lmrlgym.models.decoding import Decoding
from lmrlgym.models.dual import DualLM
from lmrlgym.models.policy import LMPolicy, LogitsAdjust, ValueReadout
from lmrlgym.models.render import Batch


def model_source(config: TrainConfig) -> str:
    """What the run's LM is built from: ``init_from``'s exported model, else ``--model``."""
    return str(Path(config.init_from) / MODEL_DIR) if config.init_from else config.model


def check_usable(config: TrainConfig) -> None:
    """Refuse, before any work, settings with which the finished run could not be evaluated or
    served: a prompt of ``max_context_tokens`` plus ``max_new_tokens`` generated tokens must fit
    in the model's positions (``LMPolicy``'s rule)."""
    from lmrlgym.models.factory import model_positions

    source = model_source(config)
    n_pos = model_positions(source)
    total = config.max_context_tokens + config.max_new_tokens
    if n_pos is not None and total > n_pos:
        raise ValueError(f"--max-context-tokens {config.max_context_tokens} + --max-new-tokens "
                         f"{config.max_new_tokens} = {total} exceeds the {n_pos} positions of "
                         f"model {source!r}: the trained run could not be evaluated or served; "
                         "lower them or use a model with more positions")


def build_lm(config: TrainConfig, tokenizer: PreTrainedTokenizerBase,
             dropout: float | None = None) -> nn.Module:
    """The causal LM (:func:`model_source`). Rows never exceed a prompt and its action
    (``check_usable`` keeps ``P + M`` within the positions), so the position table is kept.
    An ``init_from`` LoRA run's adapter is merged in; ``--lora`` then adds fresh adapters."""
    from lmrlgym.models import lora

    source = model_source(config)
    # from_pretrained returns eval mode; training mode keeps the model's dropout active (BC).
    lm = lora.build_model(source, tokenizer, merge=True, dropout=dropout).train()
    return lora.apply_lora(lm, config.lora) if config.lora else lm


def disable_dropout(module: nn.Module) -> None:
    """Dropout 0 in every RL forward pass, targets included (§2.4; the original left it on)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    config = getattr(module, "config", None)
    for name in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "dropout"):
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)


def value_trunk(lm: nn.Module, config: ValueGuidedConfig) -> nn.Module:
    """The trunk the value heads read (§2.3): ``lm`` itself in shared mode; in separate mode a
    trainable copy of it (``value_init="fresh"``: a newly initialised model of its config), and
    ``lm`` becomes the frozen policy (no gradients, eval mode)."""
    if config.value_model == "shared":
        return lm
    if not config.init_from and not (config.decode == "rerank" and config.rerank_score == "turn"):
        warnings.warn("--value-model separate without --init-from: the frozen policy π_β is the "
                      f"untrained --model {config.model!r}, which this run's decoding "
                      f"({config.decode}) reads; pass --init-from a BC run", stacklevel=2)
    if config.value_init == "fresh":  # same architecture, new weights from the seeded RNG
        trunk = type(lm)(copy.deepcopy(lm.config)).to(lm.device)
        disable_dropout(trunk)
        trunk.train(lm.training)
    else:
        trunk = copy.deepcopy(lm)
    lm.requires_grad_(False).eval()
    return trunk


def hidden_states(lm: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Final hidden states ``h`` (B, T, d), after the final norm: the LM head's input (§2.1).
    ``base_model`` is the trunk of every Hugging Face causal LM (GPT-2's ``transformer``)."""
    return lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def batch_states(lm: nn.Module, batch: Batch) -> Tensor:
    """:func:`hidden_states` of a collated batch's rows, (B, T, d). A packed batch
    (``collate(pack=True)``) runs the trunk on its packed rows, with position ids and no 2D
    mask so that attention stays inside each row, and returns the states in the padded layout
    (zeros on padding, which every loss masks out)."""
    p = batch.packing
    if p is None:
        return hidden_states(lm, batch.input_ids, batch.attention_mask)
    h = lm.base_model(input_ids=p.input_ids, position_ids=p.position_ids,
                      use_cache=False).last_hidden_state  # (R, T, d)
    return p.unpack(h)  # (B, T, d)


def action_logp(lm: nn.Module, h_act: Tensor, a: Tensor, n_vocab: int, banned: Tensor) -> Tensor:
    """(n, d), (n,) -> (n,): ``log π(a_i | s_i)`` under ``lm``'s head, float32, over the first
    ``n_vocab`` logits (extra embedding rows sliced off, §1.3) with the ``banned`` ids the
    sampler never emits masked out, so it is the sampling distribution's log-probability."""
    logits = lm.get_output_embeddings()(h_act)[:, :n_vocab].float()  # (n, V)
    if len(banned):
        logits = logits.index_fill(1, banned, float("-inf"))
    return logits.log_softmax(-1).gather(-1, a[:, None]).squeeze(-1)


def banned_ids(special_ids: Sequence[int], n_vocab: int) -> Tensor:
    """The special ids below ``n_vocab`` as a sorted long tensor (for :func:`action_logp`)."""
    return torch.tensor(sorted(i for i in set(special_ids) if i < n_vocab), dtype=torch.long)


def last_token_states(lm: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """``h`` at the last real token of each right-padded row, (B, d)."""
    h = hidden_states(lm, ids, mask)  # (B, T, d)
    last = mask.sum(1) - 1  # (B,)
    return h[torch.arange(h.shape[0]), last.clamp(min=0)]


def lm_policy(lm: nn.Module, tokenizer: PreTrainedTokenizerBase, config: TrainConfig,
              logits_adjust: LogitsAdjust | None = None, value_lm: nn.Module | None = None,
              decoding: Decoding | None = None, batch_size: int = 64,
              name: str | None = None, value_readout: ValueReadout | None = None,
              beta: float = 1.0) -> LMPolicy:
    """The evaluation policy of a run: ancestral sampling (or greedy) from the LM, value-guided
    by ``logits_adjust`` for MC/ILQL (§3.5). With a separate value trunk ``value_lm`` the
    heads read its hidden states (:class:`~lmrlgym.models.dual.DualLM`) while ``lm`` gives the
    logits. ``decoding`` (default: the run's, ``config.decoding``) and ``name`` (default: the
    method's) override the run's settings."""
    model = lm if value_lm is None else DualLM(lm, value_lm)
    return LMPolicy(model, tokenizer, config.decoding if decoding is None else decoding,
                    context_turns=context_fn(config.task),
                    max_context_tokens=config.max_context_tokens, logits_adjust=logits_adjust,
                    batch_size=batch_size, name=name or config_algo(config),
                    value_readout=value_readout, beta=beta)
