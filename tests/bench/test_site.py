"""The results web page: content, escaping of untrusted episode text, rendering in Chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lmrlgym.bench.site import esc, render_site, write_site
from lmrlgym.cli import main

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
HOSTILE = ["</script><script>alert(1)</script>", "<img src=x onerror=alert(2)>",
           "\" onmouseover=\"alert(3)", "' autofocus onfocus='alert(4)", "lone \ud800 surrogate"]


def committed_summary() -> dict:
    return json.loads((COMMITTED / "results.json").read_text())["summary"]


def results_with_episodes(tmp_path: Path) -> Path:
    """The committed cpu results plus evaluation episodes of one cell, with hostile text."""
    out = tmp_path / "results"
    shutil.copytree(COMMITTED, out, ignore=shutil.ignore_patterns("site", "maze_fo_10_seeds"))
    key = "Maze-FO-v0__bc__0"
    (out / "evals" / key).mkdir(parents=True)
    episodes = [{"seed": s, "return": -3.0, "success": s % 2 == 0, "truncated": False,
                 "turns": [{"text": "goal (8, 6), position (3, 3)\n", "is_action": False,
                            "reward": 0.0},
                           {"text": " | ".join(HOSTILE) + "\n", "is_action": True,
                            "reward": -1.0},
                           {"text": f"illegal move {s}\n", "is_action": False, "reward": 0.0}]}
                for s in range(10)]
    lines = [json.dumps(ep) for ep in episodes] + ["{not json"]
    (out / "evals" / key / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    (out / "runs" / key).mkdir(parents=True)
    (out / "runs" / key / "config.json").write_text('{"lr": 0.0003, "note": "<b>x</b>"}')
    return out


def test_escaping_of_hostile_text():
    assert esc("</script>") == "&lt;/script&gt;"
    assert esc("\" onload='x'") == "&quot; onload=&#x27;x&#x27;"
    assert esc("a\ud800b") == "a\ufffdb"
    assert esc("\U0001F600") == "\U0001F600"  # a real pair is kept


def test_page_shows_everything_and_no_input_becomes_markup(tmp_path):
    page = render_site(results_with_episodes(tmp_path))
    page.encode("utf-8")  # lone surrogates are gone: the page is valid UTF-8
    assert page.count("<script") == 1 and "<img src=x" not in page and "<b>x</b>" not in page
    for text in HOSTILE:
        assert text not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&quot; onmouseover=&quot;alert(3)" in page and "lone \ufffd surrogate" in page
    # Table, paired differences, paper comparison, plots, per-cell details.
    assert '<table id="scores">' in page and '<table id="paired">' in page
    assert '<table id="paper">' in page and page.count("data:image/png;base64,") == 2
    bc = committed_summary()["Maze-FO-v0"]["bc"]
    assert f"{bc['normalized_score']:.1f} ± {bc['normalized_score_ci95']:.1f}" in page
    assert "99.9" in page  # the paper's Maze-FO ILQL
    assert 'id="cell-Maze-FO-v0-bc"' in page and "&quot;lr&quot;: 0.0003" in page
    # Six of the ten (valid) episodes, evenly spaced, the first one opened.
    assert "6 of 10 evaluation episodes" in page
    assert [int(s) for s in re.findall(r"<summary>seed (\d+) ", page)] == [0, 2, 4, 5, 7, 9]
    assert page.count('<details class="episode" open>') == 1
    # Cells without transcripts say so.
    assert "No transcripts: evals/Maze-FO-v0__bc__1/episodes.jsonl" in page
    assert page.count('<div class="viewer"') == 1 and "torch_threads 1" in page


def test_cli_writes_the_page_and_rejects_a_missing_results_file(tmp_path, capsys):
    main(["bench", "report", str(results_with_episodes(tmp_path)), "--html",
          str(tmp_path / "site")])
    assert (tmp_path / "site" / "index.html").read_text(encoding="utf-8").startswith(
        "<!DOCTYPE html>")
    with pytest.raises(SystemExit) as e:
        main(["bench", "report", str(tmp_path / "nothing"), "--html", str(tmp_path / "x")])
    assert e.value.code == 2 and "results file not found" in capsys.readouterr().err


def test_committed_site_is_current(tmp_path):
    """benchmarks/results/site/index.html is what the generator makes of the committed results."""
    assert (COMMITTED / "site" / "index.html").read_text(encoding="utf-8") == render_site(
        COMMITTED)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium: apt-get install chromium")
def test_renders_in_headless_chromium(tmp_path):
    page = write_site(results_with_episodes(tmp_path), tmp_path / "site")
    shot = tmp_path / "site.png"
    run = chromium("--window-size=1280,1600", f"--screenshot={shot}", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank image
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == []  # no script errors, no failed loads
    # The DOM as Chromium built it: the table and an opened transcript are there.
    dom = chromium("--dump-dom", page.as_uri()).stdout
    assert '<table id="scores">' in dom and '<details class="episode" open="">' in dom
    assert '<div class="viewer" data-key="Maze-FO-v0__bc__0">' in dom  # shown: no hidden
    # The sorting script works: sort the table by its BC column, numbers ascending, "—" last.
    sorted_page = tmp_path / "site" / "sorted.html"
    sorted_page.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", "<script>sortBy('scores', 1)</script></body>"), encoding="utf-8")
    dom = chromium("--dump-dom", sorted_page.as_uri()).stdout
    table = dom[dom.index('<table id="scores"'):]  # now with data-col/data-dir attributes
    tasks = re.findall(r'<tr><td data-v="([^"]+)">', table[:table.index("</table>")])
    summary = committed_summary()
    with_bc = sorted((t for t in summary if "bc" in summary[t]),
                     key=lambda t: summary[t]["bc"]["normalized_score"])
    assert len(with_bc) >= 2 and tasks[: len(with_bc)] == with_bc and len(tasks) == 10
