"""The ``lmrlgym`` command line.

``lmrlgym <group> <command> [options]``; every command is a typed function whose docstring and
signature ``tyro`` turns into ``--help``. Heavy modules (torch, transformers, engines) are
imported inside the commands, so ``lmrlgym --help`` is instant. Bad input exits with code 2 and
a one-line error naming what was wrong.
"""

from __future__ import annotations

import difflib
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

# --- commands ------------------------------------------------------------------------------


def envs_list(json_output: Annotated[bool, tyro.conf.arg(name="json")] = False) -> None:
    """List the registered env ids, whether they can run here, and what is missing."""
    from lmrlgym.registry import registry

    rows = []
    for s in registry.values():
        missing = s.missing()
        rows.append(
            {
                "id": s.id,
                "status": "ok" if not missing else "missing deps",
                "deterministic": not s.nondeterministic,
                "missing": [f"{r.name} ({r.install})" for r in missing],
                "description": s.description,
            }
        )
    if json_output:
        for row in rows:
            print(json.dumps(row))
        return
    _table(
        ["id", "status", "deterministic", "description / missing"],
        [
            [r["id"], r["status"], "yes" if r["deterministic"] else "no (default opponent)",
             "; ".join(r["missing"]) or r["description"]]
            for r in rows
        ],
    )


def envs_check(
    id: tyro.conf.Positional[str | None] = None,
    all: bool = False,
) -> None:
    """Run the env contract checker (`lmrlgym.check_env`) and Gymnasium's own checker.

    Args:
        id: Env id to check.
        all: Check every registered id (ids with missing optional dependencies are skipped).
    """
    import warnings

    import gymnasium
    from gymnasium.utils.env_checker import check_env as gym_check_env

    from lmrlgym.checker import check_env
    from lmrlgym.registry import make, registry, spec

    if all == (id is not None):
        raise UsageError("give exactly one of ID or --all")
    ids = list(registry) if all else [spec(id).id]
    failed = 0
    for env_id in ids:
        missing = registry[env_id].missing()
        if missing:
            print(f"SKIP {env_id}: needs " + "; ".join(f"{r.name}: {r.install}" for r in missing))
            continue
        try:
            env = make(env_id)
            check_env(env)
            env.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                genv = gymnasium.make(f"lmrlgym/{env_id}")
                gym_check_env(genv.unwrapped, skip_render_check=True)
                genv.close()
            print(f"ok   {env_id}")
        except AssertionError as e:
            failed += 1
            print(f"FAIL {env_id}: {e}")
    if failed:
        raise SystemExit(1)


def play(
    id: tyro.conf.Positional[str],
    policy: str | None = None,
    seed: int | None = None,
    episodes: int = 1,
    show_agent_view: bool = False,
) -> None:
    """Play an env in the terminal, or watch a scripted policy play it.

    Prints the task's rules first; `:help` shows them again and `:quit` ends (neither reaches
    the env). When an episode ends, the hidden state (the Wordle word, the 20Q object, ...), the
    return and the normalised score are shown.

    Args:
        id: Env id, e.g. Maze-FO-v0.
        policy: Watch this scripted behaviour policy (e.g. maze-optimal) instead of typing.
        seed: Episode seed (default: random, printed so the episode can be replayed).
        episodes: Number of episodes to play.
        show_agent_view: Print each observation verbatim, exactly as a policy receives it,
            instead of only the new text.
    """
    from lmrlgym.play import play as play_task

    play_task(id, policy, seed, episodes, show_agent_view)


def data_generate(
    task: str,
    out: Path,
    episodes: int = 1000,
    policy: str | None = None,
    seed: int = 1_000_000,
    workers: int = 1,
    overwrite: bool = False,
) -> None:
    """Generate an offline dataset (JSONL shards + manifest.json) with a behaviour policy.

    Args:
        task: Env id, e.g. Wordle-v0.
        out: Output directory.
        episodes: Number of episodes.
        policy: Behaviour policy spec, e.g. "maze-mixture(p_solver=0.3)" (default: the task's).
        seed: Base seed: episode i uses env seed `seed + i` (data seeds start at 1,000,000).
        workers: Worker processes (one env, and engine, each).
        overwrite: Replace an existing non-empty output directory.
    """
    from tqdm import tqdm

    from lmrlgym.data.generate import generate_dataset

    # delay: bad input fails before a bar is drawn
    with tqdm(total=episodes, desc=f"{task} data", unit="ep", delay=0.5) as bar:
        manifest = generate_dataset(
            task, out, episodes, policy, seed, workers, overwrite=overwrite, progress=bar.update
        )
    _print_stats(manifest)
    print(f"wrote {out}")


def data_stats(
    path: tyro.conf.Positional[Path],
    json_output: Annotated[bool, tyro.conf.arg(name="json")] = False,
    skip_bad: bool = False,
    allow_partial: bool = False,
) -> None:
    """Recompute a dataset's statistics from its files (and compare with its manifest).

    Args:
        path: Dataset directory (or a single .jsonl file).
        skip_bad: Skip unreadable lines (reporting how many) instead of failing on the first.
        allow_partial: Read a directory without its manifest.json (an interrupted generation).
    """
    from lmrlgym.data.io import DatasetError, read_episodes, read_manifest
    from lmrlgym.data.stats import episode_stats

    episodes, skipped = read_episodes(path, skip_bad=skip_bad, allow_partial=allow_partial)
    stats = episode_stats(episodes)
    stats["tasks"] = sorted({ep.task for ep in episodes})
    stats["skipped_lines"] = skipped
    manifest = None
    if path.is_dir():
        try:
            manifest = read_manifest(path)
        except DatasetError as e:
            print(f"warning: {e}", file=sys.stderr)
    if manifest:
        stats["generator"] = manifest.get("generator")
        stats["manifest_matches"] = all(
            abs(manifest.get(k, float("nan")) - stats[k]) < 1e-9
            for k in ("episodes", "success_rate", "return_mean", "length_mean")
        )
    if json_output:
        print(json.dumps(stats))
    else:
        _print_stats(stats)


def data_export(
    path: tyro.conf.Positional[Path],
    out: Path,
    format: Literal["hf"] = "hf",
    skip_bad: bool = False,
    allow_partial: bool = False,
) -> None:
    """Export a dataset to Hugging Face `datasets` (save_to_disk folder + parquet file).

    Args:
        path: Dataset directory (JSONL shards).
        out: Output directory (written completely or not at all).
        format: Export format.
        skip_bad: Skip unreadable lines (reporting how many) instead of failing on the first.
        allow_partial: Read a directory without its manifest.json (an interrupted generation).
    """
    from lmrlgym.data.hf import DATASETS, export_hf
    from lmrlgym.data.io import read_episodes
    from lmrlgym.registry import require

    require("lmrlgym data export", DATASETS)  # before minutes of reading
    episodes, skipped = read_episodes(path, skip_bad=skip_bad, allow_partial=allow_partial)
    if skipped:
        print(f"{path}: skipped {skipped} unreadable lines (--skip-bad)", file=sys.stderr)
    export_hf(episodes, out)
    print(f"wrote {len(episodes)} episodes to {out}/hf and {out}/episodes.parquet")


def data_import(
    source: tyro.conf.Positional[Path],
    out: Path,
    format: Literal["hf", "original"] = "hf",
    task: str | None = None,
    overwrite: bool = False,
) -> None:
    """Import episodes into a dataset directory (JSONL shards + manifest).

    Args:
        source: A Hugging Face export (folder or .parquet), or an original LMRL-Gym release file.
        out: Output dataset directory.
        format: hf (our export) or original (the LMRL-Gym release formats; needs --task).
        task: Task id of an original file, e.g. Wordle-v0.
        overwrite: Replace an existing non-empty output directory.
    """
    from lmrlgym.data.generate import write_dataset

    if format == "original":
        if task is None:
            raise UsageError("--format original needs --task")
        from lmrlgym.data.importers import import_original
        from lmrlgym.registry import spec

        spec(task)
        episodes = import_original(task, source)
        generator = f"original:{source.name}"
    else:
        from lmrlgym.data.hf import import_hf

        episodes = import_hf(source)
        generator = f"hf:{source}"
    manifest = write_dataset(episodes, out, generator=generator, overwrite=overwrite)
    _print_stats(manifest)
    print(f"wrote {out}")


def bench_envs(
    tasks: tuple[str, ...] = (),
    min_steps: int = 2000,
    min_seconds: float = 1.0,
    seed: int = 0,
    env_kwargs: str = "{}",
    json_output: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Measure env steps/s with a seeded random (or default behaviour) policy.

    Args:
        tasks: Env ids (default: every registered id whose dependencies are installed).
        min_steps: Run at least this many steps per env.
        min_seconds: Run at least this long per env (env time only).
        seed: Seed of the first episode.
        env_kwargs: JSON object of env keyword arguments for every env measured, e.g.
            '{"opponent": "stockfish-nodes:100"}' for Chess-v0.
    """
    from lmrlgym.bench.env_speed import bench_env
    from lmrlgym.registry import parse_env_kwargs, registry, spec

    kwargs = parse_env_kwargs(env_kwargs)
    ids = [spec(t).id for t in tasks] or [s.id for s in registry.values() if not s.missing()]
    rows = []
    for env_id in ids:
        row = bench_env(env_id, min_steps=min_steps, min_seconds=min_seconds, seed=seed,
                        **kwargs)
        rows.append(row)
        if json_output:
            print(json.dumps(row), flush=True)
    if not json_output:
        _table(
            ["env", "steps/s", "reset ms", "steps", "policy"],
            [[r["env"], f"{r['steps_per_s']:,.0f}", f"{r['reset_ms']:.2f}", r["steps"],
              r["policy"]] for r in rows],
        )


def bench_run(
    profile: str = "smoke",
    out: Path | None = None,
    tasks: tuple[str, ...] = (),
    methods: tuple[str, ...] = (),
    seeds: tuple[int, ...] = (),
    threads: int | None = None,
    dry_run: bool = False,
) -> None:
    """Run (or resume) the benchmark grid and print the results table.

    Writes results.json, results.md, scores.png and learning_curves.png to the output
    directory. Finished cells are skipped; corrupted ones are rerun with a warning.

    Args:
        profile: smoke (make bench, minutes), cpu (README table), or full (paper scale, GPUs).
        out: Output directory (default: bench_out/<profile>).
        tasks: Only these tasks (default: the profile's).
        methods: Only these methods (BC runs too when an RL method needs its init).
        seeds: Training seeds instead of the profile's (e.g. --seeds 0 1 2 3 4 5 6 7 8 9 for
            tighter intervals).
        threads: torch intra-op threads for every cell (default: torch's choice). 1 when other
            jobs share the cores: threads waiting on a busy core slowed a smoke grid ~10x. The
            committed `cpu` tables ran with 1 (results.json records it), and a cell's digits
            depend on the thread count.
        dry_run: Print every cell with its resolved config instead of running.
    """
    import time as _time

    from tqdm import tqdm

    from lmrlgym.bench.run import CellFailures, describe_grid, run_grid

    if threads is not None:
        if threads <= 0:
            raise ValueError(f"--threads must be positive, got {threads}")
        import torch

        torch.set_num_threads(threads)
    out = out or Path("bench_out") / profile
    if dry_run:
        print(describe_grid(profile, out, list(tasks) or None, list(methods) or None,
                            list(seeds) or None))
        return
    t0 = _time.time()
    bar = data_bar = None

    def progress(cell, i, n):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=n, desc="bench", unit="cell")
        bar.set_postfix_str(cell.key)
        bar.n = i
        bar.refresh()

    def data_progress(task, done, n):  # a dataset being generated, under the cells' bar
        nonlocal data_bar
        if data_bar is None:
            data_bar = tqdm(total=n, desc=f"{task} data", unit="ep", leave=False, position=1)
        data_bar.update(done - data_bar.n)
        if done == n:
            data_bar.close()
            data_bar = None

    failures = None
    try:
        run_grid(profile, out, list(tasks) or None, list(methods) or None, progress,
                 list(seeds) or None, data_progress)
    except CellFailures as e:
        failures = e
    if bar is not None:
        bar.n = bar.total
        bar.close()
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.json, results.md, scores.png, learning_curves.png "
          f"in {_time.time() - t0:.0f} s")
    if failures:
        print(f"lmrlgym: {failures}", file=sys.stderr)
        raise SystemExit(2 if failures.bad_input else 1)


def bench_compare(results: tyro.conf.Positional[Path]) -> None:
    """Print our scores next to the paper's Table 2, each method's difference from BC paired
    by seed, and flag method orderings that differ from the paper's.

    Args:
        results: A results.json written by `lmrlgym bench run`.
    """
    from lmrlgym.bench.report import (
        comparison_table,
        load_results,
        ordering_flags,
        paired_table,
        paired_vs_bc,
    )

    data = load_results(results)
    agg = data["summary"]
    print(comparison_table(agg))
    paired = paired_vs_bc(agg)
    if paired:
        print("Difference from BC, paired by seed (mean ± 95% CI, seeds above BC / seeds):")
        print(paired_table(paired))
    flags = ordering_flags(agg)
    print("Orderings that differ from the paper:" if flags else "All method orderings match "
          "the paper where both cells exist.")
    for f in flags:
        print(f"  - {f}")


# --- dispatch ----------------------------------------------------------------------------------

def serve(argv: list[str], prog: str) -> None:
    """Serve a trained run over the OpenAI-compatible API (/v1/completions, /v1/chat/completions)."""
    from lmrlgym.registry import SERVE_EXTRA, Requirement, require

    require("lmrlgym serve", Requirement("fastapi", SERVE_EXTRA), Requirement("uvicorn", SERVE_EXTRA))
    from lmrlgym.serve import serve_main

    tyro.cli(serve_main, args=argv, prog=prog)


serve.takes_argv = True  # type: ignore[attr-defined]


def bench_rollout(argv: list[str], prog: str) -> None:
    """Generated actions/s: in-process modes (batching x KV cache), or --policy openai:... ."""
    if any(a == "--policy" or a.startswith("--policy=") for a in argv):
        from lmrlgym.bench.served_speed import served_main

        tyro.cli(served_main, args=argv, prog=prog)
    else:
        from lmrlgym.bench.rollout_speed import rollout_main

        tyro.cli(rollout_main, args=argv, prog=prog)


bench_rollout.takes_argv = True  # type: ignore[attr-defined]


# group -> command -> function or "module:function" (imported only when that command runs).
COMMANDS: dict[str, dict[str, Callable[..., Any] | str]] = {
    "envs": {"list": envs_list, "check": envs_check},
    "play": {"": play},
    "train": {"": "lmrlgym.algos.cli:train_main"},
    "eval": {"": "lmrlgym.eval.cli:eval_main"},
    "serve": {"": serve},
    "env-server": {"": "lmrlgym.envserver:server_main"},
    "data": {"generate": data_generate, "stats": data_stats, "export": data_export,
             "import": data_import},
    "diagnose": {"values": "lmrlgym.eval.value_map:diagnose_values_main"},
    "bench": {"run": bench_run, "compare": bench_compare, "envs": bench_envs,
              "train": "lmrlgym.bench.train_speed:train_speed_main", "rollout": bench_rollout,
              "report": "lmrlgym.bench.site:report_main"},
}


# One-line help for lazily imported commands (their modules are not imported for --help).
DESCRIPTIONS = {
    "train": "Train a policy: train bc|filtered_bc|mc|ilql|ppo|online_filtered_bc --task --data.",
    "eval": "Evaluate a trained run (--run) or a scripted/served policy (--policy) on a task.",
    "env-server": "Serve tasks over HTTP sessions (client: lmrlgym.remote.make(url, task_id)).",
    "diagnose values": "Value map of an MC/ILQL Maze run: learned V and greedy moves vs optimal (PNG).",
    "bench report": "Write a results directory as a self-contained web page: --html OUT_DIR.",
    "bench train": "Training tokens/s and MFU per algorithm, padded and packed, and TRL's SFTTrainer.",
    "bench rollout": "Generated actions/s with/without batching and KV cache, or --policy openai:...",
}


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _usage() -> str:
    lines = ["usage: lmrlgym <command> [options]   (add --help to any command)", "", "commands:"]
    for group, cmds in COMMANDS.items():
        for cmd, fn in cmds.items():
            doc = DESCRIPTIONS.get(f"{group} {cmd}".strip()) or (
                "" if isinstance(fn, str) else (fn.__doc__ or "").strip().splitlines()[0])
            lines.append(f"  {(group + ' ' + cmd).strip():<22} {doc}")
    return "\n".join(lines)


def _pick(name: str, options: list[str], what: str) -> str:
    if name in options:
        return name
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"unknown {what} {name!r}.{hint} Valid: {', '.join(options)}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    try:
        group = _pick(argv[0], list(COMMANDS), "command")
        cmds = COMMANDS[group]
        if "" in cmds:
            cmd, rest = "", argv[1:]
        elif len(argv) < 2 or argv[1] in ("-h", "--help"):
            print(f"usage: lmrlgym {group} {{{','.join(cmds)}}} [options]")
            return
        else:
            cmd, rest = _pick(argv[1], list(cmds), f"'{group}' command"), argv[2:]
        fn = _resolve(cmds[cmd])
        prog = f"lmrlgym {group} {cmd}".strip()
        if getattr(fn, "takes_argv", False):  # commands that parse their own argv (train)
            fn(rest, prog=prog)
        else:
            tyro.cli(fn, args=rest, prog=prog)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (UsageError, ValueError, KeyError, OSError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else _describe(e)
        print(f"lmrlgym: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
    except RuntimeError as e:
        from lmrlgym.openai_api import EndpointError

        if not isinstance(e, EndpointError):  # only an unreachable served model is expected
            raise
        print(f"lmrlgym: error: {e}\n(finished episodes so far are kept in "
              "<out>/episodes.partial.jsonl)", file=sys.stderr)
        raise SystemExit(1) from None


# --- output helpers ----------------------------------------------------------------------------


def _describe(e: Exception) -> str:
    """An OS error as "cannot access PATH: reason" instead of "[Errno 2] ...: 'PATH'"."""
    if not isinstance(e, OSError) or e.strerror is None or e.filename is None:
        return str(e)
    path = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
    return f"cannot access {path}: {e.strerror[:1].lower()}{e.strerror[1:]}"


def _table(header: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned table (readable in CI logs and pipes, unlike box drawing)."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _print_stats(stats: dict[str, Any]) -> None:
    keys = ["episodes", "success_rate", "return_mean", "return_std", "length_mean",
            "length_std", "generator", "skipped_lines"]
    _table(["statistic", "value"], [[k, _fmt(stats[k])] for k in keys if k in stats])


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
