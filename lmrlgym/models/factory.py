"""Model factory: small GPT-2 presets built from a config, or any local/hub causal LM.

The presets are the CPU-scale defaults (docs/algorithms.md §2.1): a GPT-2 with the project's own
tokenizer's vocabulary, trained from scratch. Any other name is handed to
``AutoModelForCausalLM.from_pretrained`` (a saved run's model directory, or a hub id when
the machine has the weights), so the same training code runs at paper scale.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging


@dataclasses.dataclass(frozen=True)
class Preset:
    """A GPT-2 shape. ``n_positions`` must cover ``max_context_tokens + max_new_tokens`` (a
    prompt and its generation; a training row is at most a prompt and its action,
    docs/algorithms.md §1.4); every task's lengths fit in 2048 (Wordle and Text-Nav:
    1920 + 128)."""

    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int = 2048
    description: str = ""


PRESETS: dict[str, Preset] = {
    # ~1M parameters with a 512-token vocabulary (most of it in the position table).
    "gpt2-tiny": Preset(n_layer=2, n_head=4, n_embd=160, n_positions=2048,
                        description="2 layers x 160 wide, ~1M params"),
    # ~4M parameters with a 512-token vocabulary.
    "gpt2-mini": Preset(n_layer=4, n_head=4, n_embd=256, n_positions=2048,
                        description="4 layers x 256 wide, ~4M params"),
}


def build_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    dropout: float | None = None,
    n_positions: int | None = None,
    **config_overrides: Any,
) -> PreTrainedModel:
    """A causal LM for ``tokenizer``.

    ``name_or_path`` is a preset name (:data:`PRESETS`: a fresh ``GPT2LMHeadModel`` with
    ``len(tokenizer)`` embeddings and the tokenizer's special ids) or a path/hub id loaded with
    ``AutoModelForCausalLM.from_pretrained``. ``dropout`` sets GPT-2's three dropout rates
    (``None``: GPT-2's 0.1 for presets, the saved value for loaded models). A loaded model whose
    embedding table is smaller than the tokenizer raises ``ValueError``.
    """
    if name_or_path in PRESETS:
        p = PRESETS[name_or_path]
        drop = 0.1 if dropout is None else float(dropout)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=n_positions or p.n_positions,
            n_embd=p.n_embd,
            n_layer=p.n_layer,
            n_head=p.n_head,
            resid_pdrop=drop,
            embd_pdrop=drop,
            attn_pdrop=drop,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            # GPT-2's tanh-approximated GELU as one fused kernel ("gelu_new" is the same
            # function built from five elementwise ops: a third of CPU inference time).
            activation_function="gelu_pytorch_tanh",
            **config_overrides,
        )
        return GPT2LMHeadModel(config)
    check_model_source(name_or_path)
    kwargs: dict[str, Any] = dict(config_overrides)
    if n_positions is not None:
        kwargs["n_positions"] = n_positions
    if dropout is not None:
        kwargs.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    hf_logging.disable_progress_bar()  # progress display belongs to the CLI layer
    try:
        # Weights from safetensors only: a pytorch_model.bin is a pickle, and a model directory
        # may come from elsewhere (an --init-from run, docs/security.md).
        model = AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True, **kwargs)
    except OSError as e:
        if os.path.isdir(name_or_path):
            raise FileNotFoundError(f"cannot load model {name_or_path!r}: {e} (lmrlgym reads "
                                    "model weights from safetensors only)") from None
        raise FileNotFoundError(
            f"cannot load model {name_or_path!r}: not a preset ({', '.join(PRESETS)}), not a "
            f"local model directory, and not loadable from the hub ({e})"
        ) from None
    check_vocab(model, tokenizer, name_or_path)
    return model


def check_model_source(name_or_path: str) -> None:
    """Fail early (before a run starts) on a model that cannot load: not a preset, not a saved
    model directory, and not shaped like a hub id. A hub id itself is checked when loaded."""
    if name_or_path in PRESETS:
        return
    if os.path.isdir(name_or_path):
        if not os.path.exists(os.path.join(name_or_path, "config.json")):
            raise FileNotFoundError(f"model {name_or_path!r}: the directory has no config.json "
                                    "(not a saved model)")
        return
    if os.sep in name_or_path and not _looks_like_hub_id(name_or_path):
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor an existing "
            "directory"
        )


def positions(model_config: Any) -> int | None:
    """The position-table size of a model config (GPT-2's ``n_positions``, most others'
    ``max_position_embeddings``), or None when it has neither."""
    return getattr(model_config, "n_positions", None) or getattr(
        model_config, "max_position_embeddings", None)


def model_positions(name_or_path: str) -> int | None:
    """The positions of the model ``build_model(name_or_path, ...)`` builds, read from the
    preset or the model's ``config.json`` (no weights are loaded)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path].n_positions
    try:
        return positions(AutoConfig.from_pretrained(name_or_path))
    except OSError as e:
        raise FileNotFoundError(f"cannot read the config of model {name_or_path!r}: not a preset "
                                f"({', '.join(PRESETS)}) and {e}") from None


def check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, where: str = "") -> None:
    """Every tokenizer id must have an embedding row (extra rows are fine: they are sliced off
    in losses and sampling, docs/algorithms.md §1.3)."""
    n_emb = model.get_input_embeddings().weight.shape[0]
    if n_emb < len(tokenizer):
        src = f" {where}" if where else ""
        raise ValueError(
            f"tokenizer/model mismatch: the tokenizer has {len(tokenizer)} tokens but the "
            f"model{src} has only {n_emb} embedding rows; use the tokenizer saved with this "
            "model, or resize the model's embeddings"
        )


def count_parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def _looks_like_hub_id(name: str) -> bool:
    # "org/name" with one slash and no leading "." or "/" (a hub id), as opposed to a path.
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))
