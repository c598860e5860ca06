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
lowers MFU, as it should.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import tyro

if TYPE_CHECKING:
    from lmrlgym.algos import TrainConfig

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
) -> list[dict[str, Any]]:
    """Train each algorithm for ``2 · steps`` steps and measure the last ``steps``.

    Returns one dict per algorithm: ``algo``, ``tokens_per_s``, ``mfu``, ``model_flops_per_s``,
    ``matmul_flops_per_s``, ``flops_per_token``, ``rel_cost_per_token`` (vs the first algorithm)
    and the workload (``rows_mean_tokens``, ``action_fraction``, ``batch_size``, ``threads``).
    """
    from lmrlgym.algos import algorithm
    from lmrlgym.data.generate import generate_dataset

    for algo in algos:
        if algo not in ALGOS:
            raise ValueError(f"unknown algorithm {algo!r}; valid: {', '.join(ALGOS)}")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="lmrlgym-bench-train-") as tmp:
        root = Path(tmp)
        data = root / "data"
        generate_dataset("Maze-PO-v0", data, episodes, "maze-mixture(p_solver=0.15)", seed=seed)
        peak = matmul_flops_per_s()
        rows: list[dict[str, Any]] = []
        for algo in algos:
            module = algorithm(algo)
            extra = {"keep": "top_fraction", "top_fraction": 1.0} if algo == "filtered_bc" else {}
            config = module.preset(
                "Maze-PO-v0", data=str(data), out=str(root / algo), model=model, seed=seed,
                batch_size=batch_size, max_steps=2 * steps, log_every=steps,
                save_every=10 * steps, max_context_tokens=max_context_tokens, val_fraction=0.0,
                tensorboard=False, **extra)
            run_dir = module.train(config)
            lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").split("\n") if x]
            tokens_per_s = [x["time/tokens_per_s"] for x in lines if "time/tokens_per_s" in x][-1]
            flops_per_token, stats = _workload_flops(algo, config, run_dir, model)
            model_flops = tokens_per_s * flops_per_token
            rows.append({"algo": algo, "tokens_per_s": tokens_per_s, "mfu": model_flops / peak,
                         "model_flops_per_s": model_flops, "matmul_flops_per_s": peak,
                         "flops_per_token": flops_per_token, "model": model,
                         "batch_size": batch_size, "threads": torch.get_num_threads(), **stats})
        for r in rows:  # wall-clock seconds per token relative to the first algorithm
            r["rel_cost_per_token"] = rows[0]["tokens_per_s"] / r["tokens_per_s"]
        return rows


def _workload_flops(algo: str, config: TrainConfig, run_dir: Path, model: str) -> tuple[float, dict]:
    """Average model FLOPs per real token over the training rows, and the row statistics."""
    from lmrlgym.algos import TOKENIZER_DIR, training_rows
    from lmrlgym.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(run_dir / TOKENIZER_DIR)
    shape = model_shape(model, tokenizer)
    rows = training_rows(config, run_dir)
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
    threads: int | None = None,
    seed: int = 0,
    json_output: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Measure training tokens/s and MFU per algorithm on a Maze-PO workload.

    Args:
        model: Model preset or local model directory.
        algos: Algorithms to measure (the first is the reference of rel_cost_per_token).
        batch_size: Rows per optimizer step.
        steps: Timed optimizer steps per algorithm (after as many warm-up steps).
        max_context_tokens: Prompt budget P, which bounds the row length.
        threads: torch intra-op threads (default: torch's choice; 1 is faster on a busy machine).
        seed: Seed of the dataset, model init and batch order.
        json_output: One JSON object per algorithm (algo, tokens_per_s, mfu, ...).
    """
    if threads is not None:
        if threads <= 0:
            raise ValueError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    rows = bench_train(model, tuple(algos), batch_size, steps, max_context_tokens, seed=seed)
    if json_output:
        for r in rows:
            print(json.dumps(r))
        return
    from lmrlgym.bench.report import print_table

    print_table(["algo", "tokens/s", "MFU", "GFLOP/s", "cost/token vs " + rows[0]["algo"]],
                [[r["algo"], f"{r['tokens_per_s']:.0f}", f"{100 * r['mfu']:.1f}%",
                  f"{r['model_flops_per_s'] / 1e9:.2f}", f"{r['rel_cost_per_token']:.2f}x"]
                 for r in rows])
    print(f"matmul peak {rows[0]['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s, "
          f"{rows[0]['threads']} threads, mean row {rows[0]['rows_mean_tokens']:.0f} tokens")
