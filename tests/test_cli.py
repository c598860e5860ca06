"""The CLI from the outside: exit codes, error messages, and nothing half-written."""

import json
import subprocess
import sys

import pytest


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lmrlgym", *args], capture_output=True,
                          text=True, timeout=300, **kw)


def run_without(module, *args, **kw):
    """The CLI in a fresh interpreter where ``import module`` fails (an extra not installed)."""
    code = (f"import sys; sys.modules[{module!r}] = None; from lmrlgym.cli import main; "
            "main(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.mark.parametrize("module, args, what", [
    ("uvicorn", ["serve", "runs/x"], "lmrlgym serve needs uvicorn"),
    ("fastapi", ["serve", "runs/x"], "lmrlgym serve needs fastapi"),
    ("httpx", ["eval", "--policy", "openai:http://127.0.0.1:9/v1/m", "--task", "Maze-FO-v0",
               "--out", "{out}"], "openai:http://127.0.0.1:9/v1/m needs httpx"),
    ("datasets", ["data", "export", "{out}", "--out", "{out}/hf"], "lmrlgym[hf]"),
])
def test_missing_extra_names_the_extra(tmp_path, module, args, what):
    out = run_without(module, *[a.format(out=tmp_path) for a in args])
    assert out.returncode == 2, out.stderr
    assert what in out.stderr and "lmrlgym[" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("envs list", "envs check", "play", "data generate", "data stats", "bench envs"):
        assert cmd in out.stdout


def test_envs_list_json():
    out = run("envs", "list", "--json")
    assert out.returncode == 0
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["id"] for r in rows][:2] == ["Maze-FO-v0", "Maze-PO-v0"]
    assert all({"id", "status", "missing"} <= set(r) for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown command 'nope'"),
        (["envs", "lst"], "Did you mean 'list'"),
        (["data", "generate", "--task", "Maze-F0-v0", "--out", "{out}"], "Did you mean 'Maze-FO-v0'"),
        (["data", "generate", "--task", "Maze-FO-v0", "--out", "{out}", "--episodes", "-3"],
         "--episodes must be positive"),
        (["data", "generate", "--task", "Maze-FO-v0", "--out", "{out}", "--policy", "bogus"],
         "unknown policy 'bogus'"),
        (["data", "generate", "--task", "Maze-FO-v0", "--out", "/proc/nope/x"], "error"),
        (["data", "stats", "{out}"], "dataset not found"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    out_dir = tmp_path / "ds"
    out = run(*[a.replace("{out}", str(out_dir)) for a in args])
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_generate_then_stats_and_refuse_overwrite(tmp_path):
    out_dir = tmp_path / "ds"
    gen = run("data", "generate", "--task", "Maze-FO-v0", "--policy", "maze-random",
              "--episodes", "20", "--out", str(out_dir))
    assert gen.returncode == 0, gen.stderr
    manifest = json.loads((out_dir / "manifest.json").read_text())
    stats = run("data", "stats", str(out_dir), "--json")
    got = json.loads(stats.stdout)
    assert got["episodes"] == manifest["episodes"] == 20
    assert got["manifest_matches"] is True
    again = run("data", "generate", "--task", "Maze-FO-v0", "--episodes", "5", "--out",
                str(out_dir))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert json.loads((out_dir / "manifest.json").read_text()) == manifest


def test_play_with_scripted_policy():
    out = run("play", "Maze-FO-v0", "--policy", "maze-optimal", "--seed", "0")
    assert out.returncode == 0, out.stderr
    assert "Success" in out.stdout and "return" in out.stdout


def test_play_reads_stdin_until_eof():
    out = run("play", "Maze-FO-v0", "--seed", "3", input="move up\nfly\n")
    assert out.returncode == 0, out.stderr
    assert "reward -4" in out.stdout  # the unrecognised "fly"


@pytest.mark.parametrize("name, content", [
    ("deep.jsonl", b"[" * 100_000 + b"\n"), ("x.jsonl.gz", b"not gzip\n"), ("e.jsonl", b""),
    ("u.jsonl", b'{"task": "\xff"}\n'),
])
def test_unreadable_dataset_files_exit_2_with_file_and_line(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    out = run("data", "stats", str(tmp_path / name))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"lmrlgym: error: {tmp_path / name}")
    assert "--skip-bad" in out.stderr


def test_data_stats_refuses_a_dataset_without_manifest_unless_allow_partial(tmp_path):
    assert run("data", "generate", "--task", "Maze-FO-v0", "--episodes", "3", "--out",
               str(tmp_path / "d")).returncode == 0
    (tmp_path / "d" / "manifest.json").unlink()
    out = run("data", "stats", str(tmp_path / "d"))
    assert out.returncode == 2 and "no manifest.json" in out.stderr and "--allow-partial" in out.stderr
    out = run("data", "stats", str(tmp_path / "d"), "--allow-partial", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["episodes"] == 3


def test_unusable_output_paths_are_plain_messages(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in [("/proc/nope/x", "cannot access /proc/nope: no such file or directory"),
                         (f"{tmp_path}/file/x", f"cannot access {tmp_path}/file/x: not a directory")]:
        res = run("data", "generate", "--task", "Maze-FO-v0", "--episodes", "2", "--out", out)
        assert res.returncode == 2
        assert res.stderr == f"lmrlgym: error: {message}\n"

