"""``lmrlgym bench train``: training tokens/s and model FLOP utilisation (MFU) per algorithm.

Each algorithm's real ``train()`` runs on the same generated Maze-PO dataset (append-only
windows, so rows are long, up to ``max_context_tokens``) with the same model preset, batch and
seed. The rate is read from the run's own ``time/tokens_per_s`` over the second half of the
steps (the first half warms up allocator and caches), so it includes everything a training
step does: collation, forward, backward, clipping, AdamW and, for ILQL, the target pass,
the bootstrap pass over ``next_ids`` and the Polyak update.

MFU = model FLOPs per second / the machine's matmul throughput, measured in the same process
with the same thread count (a square float32 matmul, best of several runs). Model FLOPs count
what the algorithm needs per row of ``L`` tokens with ``n`` action tokens (PaLM's appendix B
convention: 6 FLOPs per parameter per trained token, 2 per forward-only token, causal
attention ``6 · layers · d · L²`` for forward + backward):

- trunk: ``6 N L + 6 layers d L²`` (N = non-embedding trunk parameters);
- LM head (BC term, only at action steps): ``6 d V n``;
- MC: + Q head ``6 (d² + d V) n``;
- ILQL: + two Q heads ``2 · 6 (d² + d V) n``, V head on every token ``6 (d² + d) L``, the target
  trunk forward ``2 N L + 2 layers d L²`` and target heads ``2 · 2 (d² + d V) n``, and the
  forward over ``next_ids`` when a row has one.

Padding tokens are not counted (``time/tokens_per_s`` counts real tokens), so padding waste
lowers MFU, as it should. Each algorithm runs padded and packed (``--packing``), with the share of
the trunk's input positions that are padding (``time/pad_fraction``).

In the same run, TRL's ``SFTTrainer`` (the tool a user would pick for supervised fine-tuning)
trains the same model preset on the same rows at the same batch size and step count: the rendered
rows are given to it pre-tokenized, with the action mask as its ``completion_mask`` and
``completion_only_loss=True``, so it minimises BC's loss on the same tokens from the same
contexts (text would be re-tokenized across turn boundaries, and prompt/completion pairs cannot
express an append-only row's several actions). TRL's defaults stay except where they would
measure something else: our precision (fp32, or bf16 autocast with ``--mixed-precision bf16``;
its default is bf16 autocast), no gradient
checkpointing (its default recomputes activations, a memory saving a 4M-parameter model does not
need), AdamW(0.9, 0.95) at BC's constant learning rate and clip 1.0, offline (``report_to="none"``,
no checkpoints). Its FLOPs are counted as BC's (the same work; TRL's head also scores the
non-action tokens, which is not counted), and its rate over the same second half of the steps.
A second TRL row, ``trl_sft_shipped``, keeps TRL's precision and checkpointing defaults (bf16
autocast, activation checkpointing): the trainer as a user gets it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

ALGOS = ("bc", "filtered_bc", "mc", "ilql")


def matmul_flops_per_s(n: int = 1024, repeats: int = 5) -> float:
    """The machine's float32 matmul throughput (best of ``repeats``), with the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the FLOP count needs to know about a model."""

    n_layer: int
    d: int
    vocab: int  # len(tokenizer): heads and logits are sliced to it
    n_trunk: int  # non-embedding trunk parameters


def model_shape(model: str, tokenizer: Any) -> Shape:
    from lmrlgym.models.factory import build_model

    lm = build_model(model, tokenizer)
    cfg = lm.config
    n_layer = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    d = getattr(cfg, "n_embd", None) or cfg.hidden_size
    embeddings = {id(p) for m in (lm.get_input_embeddings(), lm.get_output_embeddings())
                  for p in m.parameters()}
    wpe = getattr(getattr(lm, "transformer", None), "wpe", None)
    if wpe is not None:
        embeddings |= {id(p) for p in wpe.parameters()}
    n_trunk = sum(p.numel() for p in lm.parameters() if id(p) not in embeddings)
    return Shape(n_layer, d, len(tokenizer), n_trunk)


def flops_per_row(algo: str, s: Shape, length: int, n_act: int, next_len: int) -> float:
    """Model FLOPs of one training row (see the module docstring)."""
    trunk_fb = 6 * s.n_trunk * length + 6 * s.n_layer * s.d * length**2
    trunk_f = 2 * s.n_trunk * length + 2 * s.n_layer * s.d * length**2
    lm_head = 6 * s.d * s.vocab * n_act
    q_head = 6 * (s.d * s.d + s.d * s.vocab) * n_act
    if algo in ("bc", "filtered_bc"):
        return trunk_fb + lm_head
    if algo == "mc":
        return trunk_fb + lm_head + q_head
    if algo == "ilql":
        v_head = 6 * (s.d * s.d + s.d) * length
        targets = trunk_f + 2 * 2 * (s.d * s.d + s.d * s.vocab) * n_act
        boot = 2 * s.n_trunk * next_len + 2 * s.n_layer * s.d * next_len**2
        return trunk_fb + lm_head + 2 * q_head + v_head + targets + boot
    raise ValueError(f"unknown algorithm {algo!r}; valid: {', '.join(ALGOS)}")


def bench_train(
    model: str = "gpt2-mini",
    algos: tuple[str, ...] = ALGOS,
    batch_size: int = 16,
    steps: int = 6,
    max_context_tokens: int = 512,
    episodes: int = 64,
    seed: int = 0,
    workdir: str | None = None,
    packing: tuple[bool, ...] = (False, True),
    trl: bool = False,
    mixed_precision: str = "no",
) -> list[dict[str, Any]]:
    """Train each algorithm for ``2 · steps`` steps and measure the last ``steps``, once per
    ``packing`` setting, then (``trl``) TRL's ``SFTTrainer`` on the first run's rows.

    Returns one dict per run: ``algo`` (``trl_sft`` for TRL), ``packing``, ``pad_fraction``,
    ``tokens_per_s``, ``mfu``, ``model_flops_per_s``, ``matmul_flops_per_s``,
    ``flops_per_token``, ``rel_cost_per_token`` (vs the first run) and the workload
    (``rows_mean_tokens``, ``action_fraction``, ``batch_size``, ``threads``).
    """
    from lmrlgym.algos import TOKENIZER_DIR, algorithm, training_rows
    from lmrlgym.data.generate import generate_dataset
    from lmrlgym.models.tokenizer import load_tokenizer

    for algo in algos:
        if algo not in ALGOS:
            raise ValueError(f"unknown algorithm {algo!r}; valid: {', '.join(ALGOS)}")
    if not algos or not packing:
        raise ValueError("bench train needs at least one algorithm and one packing setting")
    if mixed_precision not in ("no", "bf16"):
        raise ValueError(f"--mixed-precision must be no or bf16, got {mixed_precision!r}")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="lmrlgym-bench-train-") as tmp:
        root = Path(tmp)
        data = root / "data"
        generate_dataset("Maze-PO-v0", data, episodes, "maze-mixture(p_solver=0.15)", seed=seed)
        peak = matmul_flops_per_s()
        rows: list[dict[str, Any]] = []
        first: tuple[Any, list] | None = None  # the first run's tokenizer and rows, for TRL
        for algo in algos:
            module = algorithm(algo)
            extra = {"keep": "top_fraction", "top_fraction": 1.0} if algo == "filtered_bc" else {}
            workload = None  # the algorithm's tokenizer and rows: packing does not change them
            for pack in packing:
                config = module.preset(
                    "Maze-PO-v0", data=str(data), out=str(root / f"{algo}-{int(pack)}"), model=model,
                    seed=seed, batch_size=batch_size, max_steps=2 * steps, log_every=steps,
                    save_every=10 * steps, max_context_tokens=max_context_tokens,
                    val_fraction=0.0, tensorboard=False, packing=pack,
                    mixed_precision=mixed_precision, **extra)
                run_dir = module.train(config)
                last = _last_logged(run_dir, ("time/tokens_per_s", "time/pad_fraction"))
                workload = workload or (load_tokenizer(run_dir / TOKENIZER_DIR),
                                        training_rows(config, run_dir))
                first = first or workload
                tokenizer, segments = workload
                rows.append(_result(algo, pack, last["time/pad_fraction"],
                                    last["time/tokens_per_s"], model, tokenizer, segments, peak,
                                    batch_size))
        if trl:
            tokenizer, segments = first
            for name, shipped in (("trl_sft", False), ("trl_sft_shipped", True)):
                tokens_per_s, pad = trl_sft_rate(segments, tokenizer, model, batch_size, steps,
                                                 seed, root / name, shipped,
                                                 bf16=mixed_precision == "bf16")
                rows.append(_result(name, False, pad, tokens_per_s, model, tokenizer, segments,
                                    peak, batch_size))
        for r in rows:  # wall-clock seconds per token relative to the first run
            r["rel_cost_per_token"] = rows[0]["tokens_per_s"] / r["tokens_per_s"]
            r["mixed_precision"] = "bf16" if r["algo"] == "trl_sft_shipped" else mixed_precision
        return rows


def _last_logged(run_dir: Path, keys: tuple[str, ...]) -> dict[str, float]:
    """The last logged value of each of ``keys`` in a run's ``metrics.jsonl``."""
    out: dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        out.update({k: record[k] for k in keys if k in record})
    return out


def _result(algo: str, packing: bool, pad_fraction: float, tokens_per_s: float, model: str,
            tokenizer: Any, segments: list, peak: float, batch_size: int) -> dict[str, Any]:
    """One table row: the measured rate, and the MFU from the workload's FLOPs per token
    (TRL's are BC's)."""
    flops_per_token, stats = _workload_flops("bc" if algo.startswith("trl_sft") else algo,
                                             model_shape(model, tokenizer), segments)
    model_flops = tokens_per_s * flops_per_token
    return {"algo": algo, "packing": packing, "pad_fraction": pad_fraction,
            "tokens_per_s": tokens_per_s, "mfu": model_flops / peak,
            "model_flops_per_s": model_flops, "matmul_flops_per_s": peak,
            "flops_per_token": flops_per_token, "model": model, "batch_size": batch_size,
            "threads": torch.get_num_threads(), **stats}


def trl_sft_rate(segments: list, tokenizer: Any, model: str, batch_size: int, steps: int,
                 seed: int, out: Path, shipped: bool = False, bf16: bool = False,
                 ) -> tuple[float, float]:
    """TRL ``SFTTrainer`` on ``segments`` (see the module docstring) for ``2 · steps`` steps:
    real tokens/s over the last ``steps``, and the share of padding in those batches.
    ``shipped`` keeps TRL's own precision and checkpointing defaults (bf16 autocast, activation
    checkpointing) instead of ours (no checkpointing, and ``bf16`` autocast or fp32)."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lmrlgym.models.factory import build_model

    torch.manual_seed(seed)
    lm = build_model(model, tokenizer)
    dataset = Dataset.from_dict({"input_ids": [s.input_ids.tolist() for s in segments],
                                 "completion_mask": [s.action_mask.long().tolist() for s in segments]})
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=2 * steps,
        learning_rate=1e-4, lr_scheduler_type="constant", adam_beta1=0.9, adam_beta2=0.95,
        weight_decay=0.0, max_grad_norm=1.0,
        **({} if shipped else {"bf16": bf16, "activation_checkpointing": False}),
        completion_only_loss=True, max_length=None, seed=seed, use_cpu=True, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    ends: list[float] = []  # perf_counter at the end of each optimizer step

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())

    trainer = SFTTrainer(model=lm, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # its log lines would mix into the table
    collate = trainer.data_collator
    real: list[int] = []  # real tokens of each batch, in the order the steps consume them
    slots: list[int] = []

    def counting(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(examples)
        real.append(int(batch["attention_mask"].sum()))
        slots.append(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    trainer.train()
    timed = slice(steps, 2 * steps)
    tokens_per_s = sum(real[timed]) / (ends[2 * steps - 1] - ends[steps - 1])
    return tokens_per_s, 1.0 - sum(real[timed]) / sum(slots[timed])


def _workload_flops(algo: str, shape: Shape, rows: list) -> tuple[float, dict]:
    """Average model FLOPs per real token over the training rows, and the row statistics."""
    flops = tokens = acts = 0.0
    for seg in rows:
        n_act = int(seg.action_mask[1:].sum())
        flops += flops_per_row(algo, shape, len(seg), n_act, len(seg.next_ids))
        tokens += len(seg)
        acts += n_act
    return flops / tokens, {"rows_mean_tokens": tokens / len(rows),
                            "action_fraction": acts / tokens, "n_trunk_params": shape.n_trunk}


def train_speed_main(
    model: str = "gpt2-mini",
    algos: tuple[str, ...] = ALGOS,
    batch_size: int = 16,
    steps: int = 6,
    max_context_tokens: int = 512,
    packing: tuple[bool, ...] = (False, True),
    trl: bool | None = None,
    mixed_precision: Literal["no", "bf16"] = "no",
    threads: int | None = None,
    seed: int = 0,
    json_output: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Measure training tokens/s and MFU per algorithm on a Maze-PO workload, padded and
    packed, and TRL's SFTTrainer on the same model and rows.

    Args:
        model: Model preset or local model directory.
        algos: Algorithms to measure (the first is the reference of rel_cost_per_token).
        batch_size: Rows per optimizer step.
        steps: Timed optimizer steps per algorithm (after as many warm-up steps).
        max_context_tokens: Prompt budget P, which bounds the row length.
        packing: Packing settings to run each algorithm with (--packing of training).
        trl: Also time TRL's SFTTrainer (default: when trl is installed, the dev extra).
        mixed_precision: Train our algorithms (and TRL's matched row) under bf16 autocast, the
            precision TRL ships with; MFU stays against the float32 matmul peak.
        threads: torch intra-op threads (default: torch's choice; 1 is faster on a busy machine).
        seed: Seed of the dataset, model init and batch order.
        json_output: One JSON object per run (algo, packing, tokens_per_s, mfu, ...).
    """
    import importlib.util

    if threads is not None:
        if threads <= 0:
            raise ValueError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    has_trl = importlib.util.find_spec("trl") is not None
    if trl and not has_trl:
        raise ValueError('--trl needs trl (pip install "lmrlgym[dev]"), or pass --no-trl')
    rows = bench_train(model, tuple(algos), batch_size, steps, max_context_tokens, seed=seed,
                       packing=tuple(packing), trl=has_trl if trl is None else trl,
                       mixed_precision=mixed_precision)
    if json_output:
        for r in rows:
            print(json.dumps(r))
        return
    from lmrlgym.bench.report import print_table

    first = rows[0]["algo"] + (" packed" if rows[0]["packing"] else "")
    print_table(["algo", "packing", "padding", "tokens/s", "MFU", "GFLOP/s", "cost/token vs " + first],
                [[r["algo"], "yes" if r["packing"] else "no", f"{100 * r['pad_fraction']:.1f}%",
                  f"{r['tokens_per_s']:.0f}", f"{100 * r['mfu']:.1f}%",
                  f"{r['model_flops_per_s'] / 1e9:.2f}", f"{r['rel_cost_per_token']:.2f}x"]
                 for r in rows])
    print(f"matmul peak {rows[0]['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s, "
          f"{rows[0]['threads']} threads, mean row {rows[0]['rows_mean_tokens']:.0f} tokens")
    trl_rows = {r["algo"]: r for r in rows if r["algo"].startswith("trl_sft")}
    for r in rows:
        for name, label in (("trl_sft", "our settings"), ("trl_sft_shipped", "as shipped")):
            if name in trl_rows and r["algo"] == "bc":
                print(f"bc {'packed' if r['packing'] else 'padded'} / TRL SFTTrainer ({label}) "
                      f"tokens/s: {r['tokens_per_s'] / trl_rows[name]['tokens_per_s']:.2f}x")
    if "trl_sft_shipped" in trl_rows:
        print("TRL as shipped: bf16 autocast and activation checkpointing; its MFU is against "
              "the float32 peak")
