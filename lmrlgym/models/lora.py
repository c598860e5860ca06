"""LoRA adapters (Hu et al. 2021) through PEFT, injected in place into the causal LM.

``--lora r=16,alpha=32[,dropout=0.05,targets=c_attn|c_proj]`` freezes the LM's weights and
trains low-rank updates of the target linear layers instead. Value heads (MC, ILQL, PPO) are
separate modules and stay fully trainable.

Why in place (``peft.inject_adapter_in_model``) rather than ``get_peft_model``: the training
loops read the trunk as ``lm.base_model`` (every Hugging Face causal LM's trunk) and sample
through ``LMPolicy``; a ``PeftModel`` wrapper changes what ``base_model`` means. Injected
layers leave the model's class and attributes as they were, so no loop changes.

A run's export stores the adapter the way PEFT does, so it opens without lmrlgym too::

    <run>/model/           the frozen base weights (plain ``save_pretrained``)
    <run>/model/adapter/   adapter_config.json + adapter_model.safetensors (PEFT format)

    base = AutoModelForCausalLM.from_pretrained("<run>/model")
    model = PeftModel.from_pretrained(base, "<run>/model/adapter")
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# PeftModel.save_pretrained names adapter weights from the PeftModel root: base_model.model.<path>
PEFT_PREFIX = "base_model.model."

_INSTALL_HINT = 'LoRA needs PEFT: pip install "lmrlgym[hf]"'


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """A parsed ``--lora`` value."""

    r: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None  # None: PEFT's default for the architecture

    def __str__(self) -> str:
        parts = [f"r={self.r}", f"alpha={self.alpha:g}"]
        if self.dropout:
            parts.append(f"dropout={self.dropout:g}")
        if self.targets:
            parts.append("targets=" + "|".join(self.targets))
        return ",".join(parts)


_KEYS = ("r", "alpha", "dropout", "targets")


def parse_lora(text: str) -> LoraSpec:
    """``"r=16,alpha=32[,dropout=0.05,targets=c_attn|c_proj]"`` -> :class:`LoraSpec`.

    ``r`` and ``alpha`` are required; ``targets`` are module names separated by ``|``
    (default: PEFT's choice for the model type, ``c_attn`` for GPT-2).
    """
    where = f"--lora {text!r}"
    fields: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"{where}: {part!r} is not key=value (keys: {', '.join(_KEYS)})")
        if key not in _KEYS:
            raise ValueError(f"{where}: unknown key {key!r} (keys: {', '.join(_KEYS)})")
        if key in fields:
            raise ValueError(f"{where}: {key!r} given twice")
        fields[key] = value
    missing = [k for k in ("r", "alpha") if k not in fields]
    if missing:
        raise ValueError(f"{where}: missing {' and '.join(missing)} (e.g. --lora r=16,alpha=32)")
    r = _number(fields["r"], "r", int, where)
    alpha = _number(fields["alpha"], "alpha", float, where)
    dropout = _number(fields.get("dropout", "0"), "dropout", float, where)
    if r <= 0:
        raise ValueError(f"{where}: r must be a positive integer, got {r}")
    if alpha <= 0:
        raise ValueError(f"{where}: alpha must be positive, got {alpha:g}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{where}: dropout must be in [0, 1), got {dropout:g}")
    targets = None
    if "targets" in fields:
        targets = tuple(t.strip() for t in fields["targets"].split("|"))
        if not all(targets):
            raise ValueError(f"{where}: empty module name in targets={fields['targets']!r}")
    return LoraSpec(r=r, alpha=alpha, dropout=dropout, targets=targets)


def _number(value: str, key: str, kind: type, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{where}: {key}={value!r} is not {'an integer' if kind is int else 'a number'}") from None


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return peft


def apply_lora(model: nn.Module, spec: LoraSpec | str) -> nn.Module:
    """Inject LoRA layers into ``model`` in place and freeze every other weight of it; returns
    the same object. Unknown ``targets`` raise naming the model's linear layers."""
    peft = _peft()
    spec = parse_lora(spec) if isinstance(spec, str) else spec
    if spec.targets:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        unknown = [t for t in spec.targets if t not in names]
        if unknown:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                             if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})
            raise ValueError(f"--lora targets: no module named {', '.join(map(repr, unknown))} in "
                             f"{type(model).__name__}; its linear layers: {', '.join(linear)}")
    config = peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                             target_modules=list(spec.targets) if spec.targets else None,
                             fan_in_fan_out=_uses_conv1d(model, spec.targets))
    return peft.inject_adapter_in_model(config, model)


def _uses_conv1d(model: nn.Module, targets: tuple[str, ...] | None) -> bool:
    """GPT-2's ``Conv1D`` stores weights transposed: PEFT needs ``fan_in_fan_out`` (it would
    otherwise warn and set it itself)."""
    convs = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    return bool(convs) and (targets is None or any(t in convs for t in targets))


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries injected PEFT adapters."""
    return hasattr(model, "peft_config")


def base_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights under their original names, without the adapters (frozen, so
    equal to the weights the run started from)."""
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights with PEFT's saved names (``base_model.model.<path>.lora_A.weight``)."""
    peft = _peft()
    state = peft.get_peft_model_state_dict(model)
    return {PEFT_PREFIX + k: v.detach().contiguous() for k, v in state.items()}


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write the base model to ``directory`` and the adapter to ``directory/adapter`` (PEFT's
    ``save_pretrained`` layout)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    model.save_pretrained(str(directory), state_dict=base_state_dict(model))
    adapter = directory / ADAPTER_DIR
    adapter.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].save_pretrained(str(adapter))
    save_file(adapter_state_dict(model), str(adapter / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike, merge: bool = False) -> nn.Module:
    """Load a saved adapter into ``model`` (in place). ``merge``: fold ``B A · alpha/r`` into
    the base weights and return a plain model (used to start a new run from a LoRA run)."""
    from safetensors.torch import load_file

    peft = _peft()
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():  # never PEFT's pickled adapter_model.bin
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_WEIGHTS} (adapters are read from "
                                "safetensors only)")
    if merge:
        return peft.PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    config = peft.LoraConfig.from_pretrained(str(adapter_dir))
    peft.inject_adapter_in_model(config, model)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items()}
    result = peft.set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{adapter_dir}: adapter does not fit the model (missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]})")
    return model


def build_model(path: str | os.PathLike, tokenizer: Any, merge: bool = False, **kwargs: Any) -> nn.Module:
    """``factory.build_model`` plus the adapter saved next to it (``<path>/adapter``), if any."""
    from lmrlgym.models.factory import build_model as build

    model = build(str(path), tokenizer, **kwargs)
    adapter = Path(path) / ADAPTER_DIR
    if adapter.is_dir():
        model = load_adapter(model, adapter, merge=merge)
    return model
