"""``lmrlgym train ALGO``: the command line of the training methods.

The options and their ``--help`` come from each method's frozen config (tyro reads the field
docstrings), with the defaults of the ``--task`` preset (the paper's values for that task).
The progress bar lives here, not in the training loops.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lmrlgym.algos import ALGORITHMS, algorithm, load_config
from lmrlgym.algos.rundir import is_restartable

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


def _pop(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """``argv`` without ``--flag V`` / ``--flag=V``, and V (the last one wins)."""
    rest, value, skip = [], None, False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == flag and i + 1 < len(argv):
            value, skip = argv[i + 1], True
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, value


def _fit_preset(default: TrainConfig, argv: list[str]) -> TrainConfig:
    """The preset ``default`` without the settings that only make sense beside flags the user
    did not give: ``--value-model shared`` drops the separate trunk's fields, and ``--lora``
    (adapters on the pretrained trunk) a fresh value trunk, unless ``--value-init`` is given."""
    layout = _peek(argv, "--value-model")
    if layout and getattr(default, "value_model", layout) != layout:
        default = default.with_value_model(layout)
    if (_peek(argv, "--lora") and getattr(default, "value_init", None) == "fresh"
            and _peek(argv, "--value-init") is None):
        default = dataclasses.replace(default, value_init="policy")
    return default


PRESET_HELP = ("--preset {auto,cpu,paper}: the sizes the defaults below come from (default: auto). "
               "cpu: the benchmark's `cpu` profile (tiny GPT-2, few steps and rollouts, larger "
               "learning rates: minutes on a laptop); paper: the paper's settings (its models and "
               "Table 3 values); auto: cpu where no GPU is found (no --device and no CUDA, or "
               "--device cpu), else paper. Flags given explicitly always win; --resume uses the "
               "run's saved config.")


def parse_train(algo: str, argv: list[str],
                prog: str | None = None) -> tuple[TrainConfig, str | None]:
    """The config of ``lmrlgym train <algo> ARGV`` and the line announcing the CPU preset (or
    None): the ``--preset`` sizes for ``--task`` (or the run's saved config with ``--resume``)
    overridden by the flags."""
    import tyro

    from lmrlgym.bench.presets import choose_preset, sized_config

    module = algorithm(algo)
    argv, preset = _pop(argv, "--preset")
    resume = _peek(argv, "--resume")
    choice = None
    if resume:
        default = load_config(resume)
        if default.ALGO != algo:
            raise ValueError(f"--resume {resume}: the run is {default.ALGO!r}, not {algo!r}")
    else:
        choice = choose_preset(preset or "auto", _peek(argv, "--device"))
        task = _peek(argv, "--task") or module.CONFIG.task
        default = _fit_preset(sized_config(choice.profile, algo, task, device=choice.device), argv)
    description = f"{(module.CONFIG.__doc__ or '').strip()}\n\n{PRESET_HELP}"
    config = tyro.cli(module.CONFIG, args=argv, default=default, description=description,
                      prog=prog or f"lmrlgym train {algo}")
    return config, choice and choice.announcement(_sizes(config))


def parse_config(algo: str, argv: list[str], prog: str | None = None) -> TrainConfig:
    """The config of ``lmrlgym train <algo> ARGV`` (see :func:`parse_train`)."""
    return parse_train(algo, argv, prog)[0]


def _sizes(config: TrainConfig) -> str:
    """The sizes the CPU preset announcement names: model, steps (rounds) and batch."""
    if hasattr(config, "n_rounds"):  # online: the model comes from --init
        return (f"{config.n_rounds} rounds of {config.rollouts_per_round} rollouts, "
                f"batch {config.batch_size}")
    steps = f"{config.max_steps} steps" if config.max_steps else f"{config.epochs} epochs"
    return f"model {config.model}, {steps}, batch {config.batch_size}"


class PhaseBars:
    """The training progress display: one labelled tqdm bar per phase on stderr (read data,
    tokenizer, render, train, validate, evaluate, export), a status line with its elapsed
    time where a phase has no count. Library code reports; only this prints."""

    UNITS = {"render": "ep", "train": "step", "validate": "row", "evaluate": "ep"}

    def __init__(self, enabled: bool = True, online: bool = False):
        self.enabled, self.online = enabled, online
        self.phase: str | None = None
        self.bar = None

    def __call__(self, done: int, total: int | None, metrics: dict[str, float],
                 phase: str = "train") -> None:
        from tqdm import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            unit = "round" if self.online and phase == "train" else self.UNITS.get(phase, "it")
            # smoothing 0: the ETA is the mean rate so far, not the last burst's.
            # A log file (not a terminal) gets a line every 30 s, not every step.
            self.bar = tqdm(total=total, desc=phase, unit=unit, file=sys.stderr, smoothing=0,
                            dynamic_ncols=True, disable=not self.enabled,
                            mininterval=0.1 if sys.stderr.isatty() else 30.0,
                            bar_format=None if total else "{desc}: {elapsed}")
        self.bar.total, self.bar.n = total, done
        shown = {k.split("/", 1)[1]: f"{v:.4g}" for k, v in metrics.items()
                 if k in ("train/loss", "time/tokens_per_s")}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(0)  # redraws once mininterval has passed; close() draws the last state

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def train_summary(run_dir: Path, seconds: float) -> str:
    """What ``lmrlgym train`` prints at the end: the final loss, the last evaluation (if the
    run had one), the wall time, the run directory and the command to evaluate it."""
    import json
    import shlex

    from lmrlgym.algos.rundir import METRICS_FILE

    last: dict[str, float] = {}  # each key's last logged value
    path = run_dir / METRICS_FILE
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            last.update(json.loads(line))
    loss = last.get("train/loss")
    lines = [f"trained in {_duration(seconds)}; final training loss "
             + ("n/a" if loss is None else f"{loss:.4g}")]
    if last.get("data/skipped_lines"):
        lines.append(f"skipped {last['data/skipped_lines']:.0f} malformed dataset lines (--skip-bad)")
    if "eval/return" in last:
        score = last.get("eval/normalized_score")
        lines.append(f"evaluation ({last['eval/n_episodes']:.0f} episodes): mean return "
                     f"{last['eval/return']:.4g}, success {last['eval/success_rate']:.0%}"
                     + ("" if score is None else f", normalized score {score:.1f}"))
    lines.append(f"run: {run_dir}")
    lines.append(f"next: lmrlgym eval --run {shlex.quote(str(run_dir))}")
    return "\n".join(lines)


def train_main(argv: list[str], prog: str = "lmrlgym train") -> Path | None:
    """``lmrlgym train ALGO [options]``: parse the options of ALGO, train with a progress bar
    per phase, print a summary and return the run directory."""
    import time

    from lmrlgym.algos.distributed import world_from_env

    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{{','.join(ALGORITHMS)}}} [options]   (add --help for options)")
        return None
    algo, argv = argv[0], argv[1:]
    module = algorithm(algo)
    t0 = time.perf_counter()
    config, announcement = parse_train(algo, argv, f"{prog} {algo}")
    main = world_from_env().is_main  # under torchrun/accelerate only rank 0 reports
    if announcement and main:
        print(announcement, file=sys.stderr)
    again = config.resume or config.out
    if main and again and is_restartable(again):
        print(f"{again} never reached a checkpoint (its start failed or was stopped): "
              "starting it again", file=sys.stderr)
    bars = PhaseBars(enabled=main, online=hasattr(config, "n_rounds"))
    try:
        run_dir = module.train(config, progress=bars)
    finally:
        bars.close()
    if main:
        print(train_summary(run_dir, time.perf_counter() - t0))
    return run_dir


train_main.takes_argv = True  # type: ignore[attr-defined]  (the dispatcher passes raw argv)
