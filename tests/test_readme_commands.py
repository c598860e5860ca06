"""The docs agree with the code.

Every `lmrlgym` command in README.md and docs/*.md (shell blocks, launcher lines such as
`torchrun ... -m lmrlgym.cli train ...`, and inline code in the prose) parses against the CLI's
own parser; the README's blocks marked `<!-- runnable -->` run top to bottom with tiny sizes
(`make docs-check`, slow); and every repository file a `--help` text cites exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import typing
from pathlib import Path
from unittest import mock

import pytest
import torch
import tyro

from lmrlgym import cli
from lmrlgym.algos.cli import ALGORITHMS, parse_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
# Words in the docs that stand for a value the reader chooses.
PLACEHOLDERS = {"ALGO": ALGORITHMS, "<algo>": ALGORITHMS, "N": ("100",), "FILE": ("file.jsonl",)}
# Extra flags that shrink each runnable command to a few seconds (the last value of a flag wins).
_OFFLINE = ("--model", "gpt2-tiny", "--vocab-size", "512", "--batch-size", "8", "--max-steps", "2",
            "--eval-episodes", "0", "--no-tensorboard")
TINY = {
    "data generate": ("--episodes", "40"),
    "train bc": _OFFLINE,
    "train ilql": _OFFLINE,
    "train ppo": ("--n-rounds", "1", "--rollouts-per-round", "2", "--rollout-batch-size", "2",
                  "--batch-size", "8", "--eval-episodes", "0", "--no-tensorboard"),
    "eval": ("--episodes", "2"),
    "bench run": ("--dry-run",),
    "bench envs": ("--tasks", "Maze-FO-v0", "--min-steps", "20", "--min-seconds", "0"),
}
DOC_PORT = "8000"  # the port the docs serve on; the runnable check uses a free one instead


@dataclasses.dataclass(frozen=True)
class DocCommand:
    where: str  # "README.md:42"
    argv: tuple[str, ...]  # what follows `lmrlgym`
    inline: bool  # from the prose (a mention, maybe elided) rather than a shell block
    runnable: bool
    background: bool = False  # a server started with `&`

    @property
    def name(self) -> str:
        """`train bc`, `data generate`, `eval`, ...: the command without its options."""
        group = self.argv[0]
        has_sub = group == "train" or "" not in cli.COMMANDS.get(group, {"": None})
        return f"{group} {self.argv[1]}" if has_sub and len(self.argv) > 1 else group


def _lmrlgym_argv(tokens: list[str]) -> list[str] | None:
    """The `lmrlgym` arguments of a shell command, also under python -m / torchrun / accelerate."""
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if tokens[-1:] == ["&"]:
        tokens = tokens[:-1]
    if tokens[:1] == ["lmrlgym"]:
        return tokens[1:]
    for i in range(len(tokens) - 1):
        if tokens[i] == "-m" and tokens[i + 1] in ("lmrlgym", "lmrlgym.cli"):
            return tokens[i + 2 :]
    return None


def doc_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        text = path.read_text()
        blocks = re.compile(r"(<!-- runnable -->\n)?```(?:bash|sh|shell)\n(.*?)```", re.S)
        for block in blocks.finditer(text):
            first = text[: block.start(2)].count("\n") + 1
            lines = block.group(2).split("\n")
            i = 0
            while i < len(lines):
                start, line = i, lines[i]
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i]
                i += 1
                tokens = shlex.split(line, comments=True)
                argv = _lmrlgym_argv(tokens) if tokens else None
                where = f"{path.name}:{first + start}"
                if argv is None:
                    assert not (block.group(1) and tokens), f"{where}: a runnable block runs " \
                        f"only lmrlgym commands, not {line!r}"
                    continue
                found.append(DocCommand(where, tuple(argv), False, bool(block.group(1)),
                                        tokens[-1] == "&"))
        # Inline code may wrap across lines; fenced blocks are blanked (line numbers kept).
        prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        for span in re.finditer(r"(?<!`)`lmrlgym ([^`]+)`", prose):
            where = f"{path.name}:{prose[: span.start()].count(chr(10)) + 1}"
            found.append(DocCommand(where, tuple(span.group(1).split()), True, False))
    return found


def _signature_dataclass(fn: typing.Callable) -> type:
    """A dataclass with `fn`'s parameters: tyro parses it exactly as `fn`, without calling it."""
    hints = typing.get_type_hints(fn, include_extras=True)
    fields = [
        (name, hints[name],
         dataclasses.field() if p.default is p.empty else dataclasses.field(default=p.default))
        for name, p in inspect.signature(fn).parameters.items()
    ]
    return dataclasses.make_dataclass(fn.__name__, fields, kw_only=True, frozen=True)


_real_tyro_cli = tyro.cli


def _parse_without_running(f, *, args, **kw):
    target = f if isinstance(f, type) else _signature_dataclass(f)
    return _real_tyro_cli(target, args=args, **kw)


def parse_only(argv: list[str]) -> None:
    """Parse a command line exactly as `lmrlgym` does, running nothing (SystemExit on errors)."""
    if argv[0] == "train":  # the train dispatcher parses first, then trains
        parse_config(argv[1], argv[2:])
        return
    with mock.patch.object(tyro, "cli", _parse_without_running):
        cli.main(argv)


def _expand(argv: tuple[str, ...]) -> list[list[str]]:
    """Each concrete command a documented one stands for: placeholders and `bc|mc` alternatives
    filled in, `...` dropped (or, after a flag, standing for its value)."""
    variants: list[list[str]] = [[]]
    for i, token in enumerate(argv):
        if token == "...":
            choices: tuple[str, ...] = ("x",) if argv[i - 1].startswith("--") else ()
        elif set(token.split("|")) <= set(ALGORITHMS):
            choices = tuple(token.split("|"))
        else:
            choices = tuple(PLACEHOLDERS.get(token, (token,)))
        variants = [v + [c] for v in variants for c in choices] if choices else variants
    return variants


@functools.cache
def help_text(name: str) -> str:
    """What `lmrlgym NAME --help` prints (train: one algorithm's options)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        if name.startswith("train "):
            parse_config(name.split()[1], ["--help"])
        else:
            cli.main([*name.split(), "--help"])
    return out.getvalue()


COMMANDS = doc_commands()


def test_the_docs_have_commands_and_a_runnable_walkthrough():
    assert len(COMMANDS) > 30
    assert sum(c.runnable for c in COMMANDS) >= 8


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses(command, capsys):
    """Block commands parse in full; an inline mention ending in a bare flag names a flag."""
    for argv in _expand(command.argv):
        if command.inline and (len(argv) <= 2 or argv[-1].startswith("--")):
            name = DocCommand("", tuple(argv), True, False).name
            flags = [a.split("=")[0] for a in argv if a.startswith("--")]
            assert all(f in help_text(name) for f in flags), f"{command.where}: {argv}"
            continue
        try:
            parse_only(argv)
        except SystemExit as e:
            err = capsys.readouterr().err
            pytest.fail(f"{command.where}: `lmrlgym {shlex.join(argv)}` does not parse "
                        f"(exit {e.code}):\n{err[-2000:]}")


def test_a_missing_flag_would_be_caught(capsys):
    with pytest.raises(SystemExit):
        parse_only(["eval", "--run", "runs/x", "--episodez", "3"])
    with pytest.raises(SystemExit):
        parse_only(["train", "bc", "--max-stepz", "3"])
    parse_only(["eval", "--run", "runs/x", "--episodes", "3"])  # and nothing ran


def _cited_paths(text: str) -> set[str]:
    """Repository files a help text cites: paths under a top-level folder, or SPEC.md names."""
    tops = "|".join(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))
    under = re.findall(rf"(?<![\w/<.-])((?:{tops})/[\w./-]*\w)", text)
    specs = re.findall(r"\b([A-Z][A-Z_]+\.md)\b", text)
    return set(under) | set(specs)


def _help_names() -> list[str]:
    names = [f"{g} {c}".strip() for g, cmds in cli.COMMANDS.items() for c in cmds
             if g != "train"]
    return names + [f"train {a}" for a in ALGORITHMS]


def test_help_texts_cite_files_that_exist():
    cited: dict[str, str] = {}
    for name in _help_names():
        for path in _cited_paths(help_text(name)):
            cited.setdefault(path, name)
    assert cited, "no citations found: the pattern is broken"
    missing = {p: n for p, n in cited.items() if not (ROOT / p).exists()}
    assert not missing, f"--help cites files missing from the repository: {missing}"


def test_citation_pattern():
    text = "see lmrlgym/envs/maze.py and docs/algorithms.md §3; writes <run>/eval/ and results.md"
    assert _cited_paths(text) == {"lmrlgym/envs/maze.py", "docs/algorithms.md"}


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _wait_for_port(port: str, server: subprocess.Popen, where: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"{where}: the server exited with {server.returncode}:\n"
                        f"{server.stderr.read()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", int(port)), 1):
            return
        time.sleep(0.5)
    pytest.fail(f"{where}: the server did not open port {port}")


def _run_in_process(argv: list[str], where: str) -> None:
    """`lmrlgym ARGV` through the CLI's own `main` in this process, stdin empty: the same code
    path as the script (whose entry point tests/test_cli.py runs as a subprocess), without
    paying the interpreter start and the torch import once per documented command."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with (mock.patch.object(sys, "stdin", io.StringIO("")), contextlib.redirect_stdout(out),
              contextlib.redirect_stderr(err)):
            cli.main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            pytest.fail(f"{where}: `lmrlgym {shlex.join(argv)}` exited with {e.code}:\n"
                        f"{err.getvalue()[-3000:]}")


@pytest.mark.slow(seconds=23)
def test_runnable_blocks_run_top_to_bottom(tmp_path, monkeypatch):
    """`make docs-check`: each runnable command in order, with TINY's flags, in a fresh folder;
    servers (`&`) run in the background on a free port until the end, the other commands in
    this process (one torch import, not one per command)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    port, servers, used = _free_port(), [], set()
    try:
        for command in (c for c in COMMANDS if c.runnable):
            used.add(command.name)
            argv = [a.replace(f":{DOC_PORT}/", f":{port}/") for a in command.argv]
            argv = [port if a == DOC_PORT and argv[i - 1] == "--port" else a
                    for i, a in enumerate(argv)]
            argv = [*argv, *TINY.get(command.name, ())]
            if command.background:
                servers.append(subprocess.Popen([sys.executable, "-m", "lmrlgym", *argv],
                                                cwd=tmp_path, env=env,
                                                stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE, text=True))
                _wait_for_port(port, servers[-1], command.where)
                continue
            _run_in_process(argv, command.where)
    finally:
        torch.set_num_threads(threads)  # eval and bench set their own
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    assert set(TINY) <= used, f"TINY entries no runnable command uses: {set(TINY) - used}"
