"""``lmrlgym train ALGO``: the command line of the training methods.

The options and their ``--help`` come from each method's frozen config (tyro reads the field
docstrings), with the defaults of the ``--task`` preset (the paper's values for that task).
The progress bar lives here, not in the training loops.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lmrlgym.algos import ALGORITHMS, algorithm, load_config

if TYPE_CHECKING:
    from lmrlgym.algos.config import TrainConfig


def _peek(argv: list[str], flag: str) -> str | None:
    """The value of ``--flag V`` or ``--flag=V`` in ``argv`` (last one wins), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def parse_config(algo: str, argv: list[str], prog: str | None = None) -> TrainConfig:
    """The config of ``lmrlgym train <algo> ARGV``: the ``--task`` preset (or the run's saved
    config with ``--resume``) overridden by the flags."""
    import tyro

    module = algorithm(algo)
    resume = _peek(argv, "--resume")
    if resume:
        default = load_config(resume)
        if default.ALGO != algo:
            raise ValueError(f"--resume {resume}: the run is {default.ALGO!r}, not {algo!r}")
    else:
        default = module.preset(_peek(argv, "--task") or module.CONFIG.task)
    return tyro.cli(module.CONFIG, args=argv, default=default, prog=prog or f"lmrlgym train {algo}")


def train_main(argv: list[str], prog: str = "lmrlgym train") -> Path | None:
    """``lmrlgym train ALGO [options]``: parse the options of ALGO, train with a progress bar,
    print and return the run directory."""
    from tqdm import tqdm

    from lmrlgym.algos.distributed import world_from_env

    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{{','.join(ALGORITHMS)}}} [options]   (add --help for options)")
        return None
    algo, argv = argv[0], argv[1:]
    module = algorithm(algo)
    config = parse_config(algo, argv, f"{prog} {algo}")
    main = world_from_env().is_main  # under torchrun/accelerate only rank 0 reports
    bar = tqdm(total=None, unit="step", dynamic_ncols=True, file=sys.stderr, disable=not main)

    def progress(step: int, n_steps: int, metrics: dict[str, float]) -> None:
        bar.total = n_steps
        bar.n = step
        bar.set_postfix({k.split("/", 1)[1]: f"{v:.4g}" for k, v in metrics.items()
                         if k in ("train/loss", "time/tokens_per_s")}, refresh=False)
        bar.refresh()

    try:
        run_dir = module.train(config, progress=progress)
    finally:
        bar.close()
    if main:
        print(run_dir)
    return run_dir


train_main.takes_argv = True  # type: ignore[attr-defined]  (the dispatcher passes raw argv)
