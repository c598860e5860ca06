"""``TrainConfig``: the settings every training method shares (each algorithm's frozen config
subclasses it and adds its own), and how a config is written to a run directory."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

from lmrlgym.models.decoding import Decoding, RerankScore


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every method (``OnlineConfig`` hides the offline-only ones)."""

    task: str = "Maze-FO-v0"
    """Task id: selects the env's context window for rendering, and the env for evaluation."""
    data: str = ""
    """Dataset directory (JSONL shards + manifest.json) or a single JSONL file."""
    out: str | None = None
    """Run directory. Default: runs/<task>__<algo>__<seed>__<time>/."""
    resume: str | None = None
    """Continue the run in this directory from its last checkpoint, with its saved config."""
    seed: int = 1
    """Seed of initialisation, episode split, batch order and dropout."""
    model: str = "gpt2-mini"
    """Model preset name (lmrlgym.models.factory.PRESETS) or a local/hub path for
    AutoModelForCausalLM."""
    init_from: str | None = None
    """A finished run directory to start from (model and tokenizer); RL methods start from the
    task's BC run (docs/algorithms.md §2.1)."""
    vocab_size: int = 1024
    """Size of the byte-level BPE tokenizer trained on the dataset text (new runs only)."""
    max_context_tokens: int = 256
    """Prompt budget P (render and inference); Maze-FO original: 256 (docs/algorithms.md §3.1)."""
    max_new_tokens: int = 8
    """Per-turn generation cap M at evaluation; Maze original BC eval: 8 (§4.1)."""
    batch_size: int = 128
    """Rows per optimizer step (before grad_accum splits it); paper Table 3: 128."""
    grad_accum: int = 1
    """Microbatches per optimizer step; each holds batch_size / grad_accum rows."""
    epochs: int = 1
    """Passes over the training rows (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Optimizer steps to run; default: epochs × steps per epoch."""
    lr: float = 1e-4
    """AdamW learning rate, constant after warmup; paper Table 3: 1e-4."""
    warmup_steps: int = 0
    """Linear warmup steps (§2.4: optional, off by default)."""
    weight_decay: float = 0.0
    """AdamW weight decay (§2.4: 0)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm at this value (§2.4, ours; the original RL did not clip)."""
    val_fraction: float = 0.05
    """Fraction of episodes held out (seeded split by episode) for eval/loss."""
    skip_bad: bool = False
    """Skip malformed dataset lines (reporting how many) instead of failing."""
    allow_partial: bool = False
    """Read a dataset directory without its manifest.json (an interrupted ``data generate``)."""
    log_every: int = 10
    """Optimizer steps between metric lines."""
    eval_every: int = 0
    """Optimizer steps between validation (and env evaluation); 0: only at the end."""
    eval_episodes: int = 0
    """Env episodes per evaluation (task protocol seeds); 0: no env evaluation."""
    temperature: float = 1.0
    """Sampling temperature at evaluation (§4.1: ancestral sampling at 1.0)."""
    greedy: bool = False
    """Greedy decoding at evaluation (results are labelled; §4.1)."""
    decode: Literal["sample", "rerank", "constrained"] = "sample"
    """How evaluation picks actions: free sampling, or over the env's legal actions (Maze,
    Wordle, Text-Nav, Chess): rerank scores each one, constrained spells only legal ones (§4.1)."""
    rerank_score: RerankScore = "logprob"
    """With rerank: the action's log-probability, or (MC/ILQL) its summed β·(Q − V), the
    original's Maze reranker (§3.5), or β·Q at its last token (``turn``, for turn-level
    backups, §3.4)."""
    save_every: int = 200
    """Optimizer steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    tensorboard: bool = True
    """Also write TensorBoard events (when tensorboard is installed)."""
    device: str = "cpu"
    """Torch device (under torchrun/accelerate, ``cuda`` means each rank's own GPU)."""
    lora: str | None = None
    """Train LoRA adapters instead of all LM weights (PEFT), e.g. ``r=16,alpha=32`` or
    ``r=8,alpha=16,dropout=0.05,targets=c_attn|c_proj``; value heads stay fully trainable."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Run training forwards under torch.autocast in this dtype (weights and optimizer stay fp32)."""
    packing: bool = False
    """Pack each microbatch's rows end to end into fewer rows for the trunk's forward pass
    (position ids restart per row, so attention stays inside it: the model's attention must
    honour packed position ids, as Transformers' GPT-2 does through its mask utilities). Equal to
    the padded batch up to float rounding; faster when row lengths vary. Dropout masks differ,
    so a run with dropout is not bit-for-bit the padded run."""
    data_parallel: Literal["ddp", "fsdp"] = "ddp"
    """How the ranks of a torchrun/accelerate job hold the model: ``ddp`` replicates it;
    ``fsdp`` shards each transformer block's weights, gradients and optimizer state over the
    ranks (FSDP2), for models whose training state does not fit one device. No effect in one
    process."""
    dist_timeout: float = 1800.0
    """Seconds a collective waits for the other ranks under torchrun/accelerate before failing."""

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "epochs", "max_context_tokens", "max_new_tokens",
                    "log_every", "save_every", "keep_checkpoints", "vocab_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"--batch-size {self.batch_size} is not a multiple of "
                             f"--grad-accum {self.grad_accum}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"--max-steps must be positive, got {self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        # What the run's evaluation policy (LMPolicy) needs, checked before any training.
        if self.max_context_tokens < 2:
            raise ValueError(f"--max-context-tokens must be at least 2 (BOS and one token), "
                             f"got {self.max_context_tokens}")
        if not self.greedy and not 0 < self.temperature < math.inf:
            raise ValueError(f"--temperature must be positive and finite (or use --greedy), "
                             f"got {self.temperature}")
        if self.lora is not None:
            from lmrlgym.models.lora import parse_lora

            parse_lora(self.lora)  # a bad spec fails before any work
        if self.dist_timeout <= 0:
            raise ValueError(f"--dist-timeout must be positive, got {self.dist_timeout}")
        if self.data_parallel == "fsdp" and self.mixed_precision == "fp16":
            raise ValueError("--data-parallel fsdp with --mixed-precision fp16: the fp16 gradient "
                             "scaler would check only this rank's gradient shards; use bf16")
        if self.data_parallel == "fsdp" and self.lora is not None:
            raise ValueError("--data-parallel fsdp with --lora: not supported (LoRA's frozen base "
                             "has no gradients or optimizer state to shard); use ddp")

    @property
    def decoding(self) -> Decoding:
        """How the run's evaluation policy decodes (``lmrlgym eval --run`` starts from it)."""
        return Decoding(temperature=self.temperature, greedy=self.greedy,
                        max_new_tokens=self.max_new_tokens, decode=self.decode,
                        rerank_score=self.rerank_score)


@dataclasses.dataclass(frozen=True)
class ValueGuidedConfig(TrainConfig):
    """Settings of the value-guided methods (MC Returns, ILQL): where the value heads read
    their hidden states, and the BC term that the shared layout needs (docs/algorithms.md §2.3)."""

    value_model: Literal["shared", "separate"] = "shared"
    """``shared``: one trunk carries the LM head and the value heads (default; half the memory,
    one forward pass per decoded token). ``separate``: the original's layout: the value heads
    read their own trunk, a copy of the initial (``init_from``) model that only the value
    losses train, and the policy's logits come from a frozen copy of that model."""
    value_init: Literal["policy", "fresh"] = "policy"
    """How the separate value trunk starts: ``policy``, a copy of the initial model (the
    original's layout); ``fresh``, the same architecture with new random weights, so the value
    losses do not start from features shaped by next-token prediction (ours; measured on
    Maze-FO in docs/cpu-scale.md). Separate mode only."""
    bc_weight: float | None = None
    """Weight of the BC term that keeps the shared LM head ≈ π_β (ours, §2.3). Default (None):
    1.0 in shared mode, 0 in separate mode, where π_β is frozen (a positive weight is an error)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bc_weight is not None and self.bc_weight < 0:
            raise ValueError(f"--bc-weight must be non-negative, got {self.bc_weight}")
        if self.value_model == "separate" and self.bc_weight:
            raise ValueError(f"--bc-weight {self.bc_weight} with --value-model separate: the "
                             "policy is a frozen copy of the initial model, so there is no LM "
                             "head to train; leave --bc-weight unset (0 there) or pass 0")
        if self.value_init == "fresh" and self.value_model != "separate":
            raise ValueError("--value-init fresh needs --value-model separate: in the shared "
                             "layout the value heads read the policy's own trunk")
        if self.value_init == "fresh" and self.lora:
            raise ValueError("--value-init fresh with --lora: LoRA trains adapters on a "
                             "pretrained trunk, and a fresh trunk has nothing pretrained")

    SEPARATE_ONLY: ClassVar[tuple[str, ...]] = ("value_init",)
    """Fields that apply to the separate layout only (reset by :meth:`with_value_model`)."""

    def with_value_model(self, value_model: str) -> ValueGuidedConfig:
        """This config in ``value_model``'s layout; leaving the separate layout resets the
        :attr:`SEPARATE_ONLY` fields to their defaults. ``lmrlgym train --value-model shared``
        uses it, so a preset's separate-trunk settings do not turn the flag into an error."""
        reset = {} if value_model == "separate" else {
            f.name: f.default for f in dataclasses.fields(self) if f.name in self.SEPARATE_ONLY}
        return dataclasses.replace(self, value_model=value_model, **reset)

    @property
    def bc_term(self) -> float:
        """The BC term's weight in effect: ``bc_weight``, or its layout's default."""
        if self.bc_weight is not None:
            return self.bc_weight
        return 1.0 if self.value_model == "shared" else 0.0


def config_algo(config: TrainConfig) -> str:
    """The method name of a config (its class's ``ALGO``), e.g. ``"ilql"``."""
    return type(config).ALGO


def config_to_json(config: TrainConfig) -> dict[str, Any]:
    """What ``config.json`` holds: the algorithm's name and every field."""
    return {"algo": config_algo(config), **dataclasses.asdict(config)}

