"""``lmrlgym bench report RESULTS_DIR --html OUT_DIR``: the results as one self-contained page.

``OUT_DIR/index.html`` opens from disk with no server and no network: styles, the script and
the plots (PNG data URIs) are inlined. It shows the paper-style table (sortable by any column),
the differences from BC paired by seed, the comparison with the paper's Table 2, a viewer of
sampled evaluation episodes turn by turn (pick a cell and seed), the score and learning-curve
plots, and per cell: raw returns and scores per seed, wall time and the run's config.

Inputs, from a ``bench run`` output directory: ``results.json`` (required), ``scores.png`` and
``learning_curves.png``, ``runs/<cell>/config.json`` and ``evals/<cell>/episodes.jsonl``. What
is missing is said on the page instead. Every piece of text from those files (episode text is
whatever a policy generated) is HTML-escaped, and lone surrogates become U+FFFD, so no input
can inject markup or script; the page's one script only reorders table rows by their ``data-v``
attributes and shows or hides pre-rendered transcript panes.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import tyro

from lmrlgym.bench.report import (
    METHODS,
    PAPER_TABLE2,
    REFERENCES,
    aggregate,
    load_results,
    ordering_flags,
    paired_text,
    paired_vs_bc,
)

#: Evaluation episodes shown per cell and seed (evenly spaced through the protocol order).
EPISODES_SHOWN = 6


def esc(value: Any) -> str:
    """Text as HTML: escaped (quotes too), lone surrogates replaced by U+FFFD."""
    text = str(value).encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return html.escape(text, quote=True)


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _score_cell(summary: dict[str, Any] | None, anchor: str) -> str:
    if summary is None:
        return '<td data-v="">—</td>'
    s, h = summary["normalized_score"], summary["normalized_score_ci95"]
    text = _num(s) + ("" if math.isnan(h) else f" ± {h:.1f}")
    return f'<td data-v="{s:.6g}"><a href="#{anchor}">{esc(text)}</a></td>'


def _anchor(task: str, method: str) -> str:
    return f"cell-{task}-{method}".replace(".", "-")


def _sortable(header: list[str], rows: list[str], table_id: str) -> str:
    ths = "".join(f'<th onclick="sortBy(\'{table_id}\', {i})" title="sort">{esc(h)} ⇅</th>'
                  for i, h in enumerate(header))
    return (f'<table id="{table_id}"><thead><tr>{ths}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def main_table(agg: dict[str, dict[str, Any]]) -> str:
    cols = [*METHODS, *REFERENCES]
    names = {**METHODS, **REFERENCES}
    rows = [f'<tr><td data-v="{esc(task)}">{esc(task)}</td>'
            + "".join(_score_cell(row.get(c), _anchor(task, c)) for c in cols) + "</tr>"
            for task, row in agg.items()]
    return _sortable(["task"] + [names[c] for c in cols], rows, "scores")


def paired_html(paired: dict[str, dict[str, Any]]) -> str:
    cols = [m for m in METHODS if m != "bc"]
    rows = []
    for task, row in paired.items():
        cells = []
        for m in cols:
            d = row.get(m)
            cells.append('<td data-v="">—</td>' if d is None else
                         f'<td data-v="{d["mean"]:.6g}">{esc(paired_text(d))}</td>')
        rows.append(f'<tr><td data-v="{esc(task)}">{esc(task)}</td>{"".join(cells)}</tr>')
    return _sortable(["task"] + [METHODS[m] for m in cols], rows, "paired")


def paper_html(agg: dict[str, dict[str, Any]]) -> str:
    rows = []
    for task, row in agg.items():
        for m in METHODS:
            if m not in row:
                continue
            ours = row[m]["normalized_score"]
            paper = PAPER_TABLE2.get(task, {}).get(m)
            diff = None if paper is None else ours - paper
            rows.append(f'<tr><td data-v="{esc(task)}">{esc(task)}</td>'
                        f'<td data-v="{esc(METHODS[m])}">{esc(METHODS[m])}</td>'
                        f'<td data-v="{ours:.6g}">{_num(ours)}</td>'
                        f'<td data-v="{"" if paper is None else paper}">{_num(paper)}</td>'
                        f'<td data-v="{"" if diff is None else f"{diff:.6g}"}">'
                        f'{_num(diff, "{:+.1f}")}</td></tr>')
    return _sortable(["task", "method", "ours", "paper (Table 2)", "difference"], rows, "paper")


def _image(path: Path, alt: str) -> str:
    if not path.exists():
        return f'<p class="missing">{esc(path.name)} is not in the results directory.</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def read_episodes(path: Path, keep: int = EPISODES_SHOWN) -> tuple[list[dict[str, Any]], int]:
    """``keep`` episodes evenly spaced through an ``episodes.jsonl`` (malformed lines skipped),
    and how many the file holds."""
    episodes = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ep = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ep, dict) and isinstance(ep.get("turns"), list):
            episodes.append(ep)
    n = len(episodes)
    if n <= keep:
        return episodes, n
    return [episodes[round(i * (n - 1) / (keep - 1))] for i in range(keep)], n


def transcript(ep: dict[str, Any], opened: bool = False) -> str:
    """One episode turn by turn: env text on the left, agent actions on the right with rewards."""
    lines = []
    for turn in ep["turns"]:
        if not isinstance(turn, dict):
            continue
        text = esc(turn.get("text", ""))
        if turn.get("is_action"):
            lines.append(f'<div class="agent"><span class="who">agent</span><pre>{text}</pre>'
                         f'<span class="reward">reward {_num(turn.get("reward"), "{:+g}")}'
                         "</span></div>")
        else:
            lines.append(f'<div class="envtext"><span class="who">env</span><pre>{text}</pre>'
                         "</div>")
    ret = ep.get("return")
    head = (f"seed {esc(ep.get('seed'))} · return {_num(ret, '{:+g}')} · "
            f"{'success' if ep.get('success') else 'no success'} · "
            f"{'truncated' if ep.get('truncated') else 'terminated'}")
    return (f'<details class="episode"{" open" if opened else ""}><summary>{head}</summary>'
            f'{"".join(lines)}</details>')


def _config(results_dir: Path, cell: dict[str, Any], key: str) -> str:
    # Only inside the results directory, never the cell's absolute run_dir: the page must be a
    # function of the directory alone, so a committed page regenerates the same on any clone.
    path = results_dir / "runs" / key / "config.json"
    if path.exists():
        return f"<pre class=\"config\">{esc(path.read_text(encoding='utf-8'))}</pre>"
    if cell.get("policy"):
        return f"<p>scripted policy <code>{esc(cell['policy'])}</code></p>"
    return (f'<p class="missing">config: runs/{esc(key)}/config.json is not in the results '
            f"directory; config hash <code>{esc(cell.get('config_hash', '?'))}</code>.</p>")


def cell_details(results_dir: Path, task: str, method: str, cells: list[dict[str, Any]],
                 summary: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """A cell's section (seeds, configs) and its transcripts for the viewer, by cell key."""
    name = {**METHODS, **REFERENCES}.get(method, method)
    rows = "".join(
        f"<tr><td>{esc(c['seed'])}</td><td>{_num(c.get('mean_return'), '{:.4g}')}</td>"
        f"<td>{_num(c.get('normalized_score'))}</td><td>{_num(c.get('success_rate'), '{:.3f}')}"
        f"</td><td>{esc(c.get('episodes', '?'))}</td><td>{_num(c.get('seconds'), '{:.1f}')}</td>"
        "</tr>" for c in cells)
    half = summary["normalized_score_ci95"]
    parts = [f'<section class="cell" id="{_anchor(task, method)}"><h3>{esc(task)} · {esc(name)}'
             f"</h3><p>score {_num(summary['normalized_score'])}"
             f"{'' if math.isnan(half) else ' ± ' + _num(half)} over seeds "
             f"{esc(summary['seeds'])}</p>"
             "<table><thead><tr><th>seed</th><th>mean return</th><th>score</th>"
             "<th>success rate</th><th>eval episodes</th><th>wall time (s)</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>"]
    viewer: dict[str, str] = {}
    for c in cells:
        key = f"{task}__{method}__{c['seed']}"
        parts.append(f"<h4>seed {esc(c['seed'])}</h4>")
        parts.append(_config(results_dir, c, key))
        path = results_dir / "evals" / key / "episodes.jsonl"
        if path.exists():
            episodes, n = read_episodes(path)
            viewer[key] = (f"<p>{len(episodes)} of {n} evaluation episodes of "
                           f"<a href=\"#{_anchor(task, method)}\">{esc(key)}</a>:</p>"
                           + "".join(transcript(ep, opened=i == 0)
                                     for i, ep in enumerate(episodes)))
            parts.append('<p>Transcripts: in the <a href="#viewer">viewer</a>.</p>')
        else:
            parts.append(f'<p class="missing">No transcripts: evals/{esc(key)}/episodes.jsonl '
                         "is not in the results directory (bench run writes it; these "
                         "committed results keep only results.json and the plots).</p>")
    parts.append("</section>")
    return "".join(parts), viewer


def viewer_html(viewer: dict[str, str]) -> str:
    """A picker of cells with transcripts; each cell's episodes are pre-rendered, one shown."""
    if not viewer:
        return ('<p class="missing">No evaluation episodes in this results directory '
                "(evals/&lt;cell&gt;/episodes.jsonl, written by bench run).</p>")
    options = "".join(f'<option value="{esc(k)}">{esc(k)}</option>' for k in viewer)
    panes = "".join(f'<div class="viewer" data-key="{esc(k)}"{"" if i == 0 else " hidden"}>'
                    f"{body}</div>" for i, (k, body) in enumerate(viewer.items()))
    return (f'<p>Cell: <select onchange="showCell(this.value)">{options}</select></p>{panes}')


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3;cursor:pointer}
img{max-width:100%}.missing{color:#a40}pre{white-space:pre-wrap;margin:0;font:13px monospace}
.agent,.envtext{display:flex;gap:.6em;margin:2px 0;padding:2px 6px;border-radius:4px}
.agent{background:#e8f0fe;margin-left:4em}.envtext{background:#f4f4f4;margin-right:4em}
.who{font-weight:bold;min-width:3.5em}.reward{margin-left:auto;color:#555;white-space:nowrap}
.episode{margin:.3em 0}.config{background:#fafafa;border:1px solid #eee;padding:.5em;max-height:20em;
overflow:auto}section.cell{border-top:1px solid #ddd;margin-top:1.5em}
"""

# Sorts a table's rows by the data-v of one column: numbers numerically, text alphabetically,
# empty cells last; a second click reverses the order.
SCRIPT = """
function sortBy(id, col) {
  const table = document.getElementById(id), body = table.tBodies[0];
  const dir = table.dataset.col == col && table.dataset.dir == "1" ? -1 : 1;
  table.dataset.col = col; table.dataset.dir = dir;
  const key = r => r.cells[col].dataset.v;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const nx = Number(x), ny = Number(y);
    return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
  });
  rows.forEach(r => body.appendChild(r));
}
function showCell(key) {
  document.querySelectorAll(".viewer").forEach(d => { d.hidden = d.dataset.key !== key; });
}
"""


def _one_line(code: str) -> str:
    """STYLE or SCRIPT as one line, as the rest of the page is written (every SCRIPT statement
    ends in ``;`` or a brace, so joining its lines keeps its meaning)."""
    return " ".join(line.strip() for line in code.strip().splitlines())


def render_site(results_dir: Path) -> str:
    """The page's HTML for a results directory."""
    data = load_results(results_dir / "results.json")
    # Recomputed from the cells: results.json stores its summary with sorted keys, and the
    # table follows the paper's task and method order.
    agg = aggregate(data["cells"])
    paired = paired_vs_bc(agg)
    flags = ordering_flags(agg)
    machine = data.get("machine", {})
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in data["cells"]:
        by_cell.setdefault((c["task"], c["method"]), []).append(c)
    sections, viewer = [], {}
    for task, row in agg.items():
        for method, summary in row.items():
            cells = sorted(by_cell.get((task, method), []), key=lambda c: c["seed"])
            section, panes = cell_details(results_dir, task, method, cells, summary)
            sections.append(section)
            viewer.update(panes)
    failed = data.get("failed_cells") or []
    title = f"lmrlgym results: {data.get('profile', '?')} profile"
    return "".join([
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_one_line(STYLE)}</style><script>{_one_line(SCRIPT)}</script></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>lmrlgym {esc(data.get('lmrlgym_version', '?'))} · machine: "
        + esc(", ".join(f"{k} {v}" for k, v in machine.items())) + "</p>",
        "<h2>Normalised scores</h2><p>Mean over seeds ± 95 % t-interval (0 = minimum return, "
        "50 = dataset average, 100 = maximum). Click a header to sort, a cell for its details."
        "</p>", main_table(agg),
        "<h2>Difference from BC, paired by seed</h2><p>Mean of (method − BC at the same seed) "
        "± 95 % t-interval (seeds above BC / seeds).</p>",
        paired_html(paired) if paired else "<p>No cells to pair with BC.</p>",
        "<h2>Compared with the paper (Table 2)</h2>", paper_html(agg),
        "<p>Orderings that differ from the paper:</p><ul>"
        + "".join(f"<li>{esc(f)}</li>" for f in flags) + "</ul>" if flags else
        "<p>All method orderings match the paper where both cells exist.</p>",
        "".join(f'<p class="missing">failed cell: {esc(f)}</p>' for f in failed),
        '<h2 id="viewer">Evaluation episodes</h2>', viewer_html(viewer),
        "<h2>Plots</h2>", _image(results_dir / "scores.png", "normalised scores"),
        _image(results_dir / "learning_curves.png", "learning curves"),
        "<h2>Cells</h2>", "".join(sections), "</body></html>\n"])


def write_site(results_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` atomically; returns its path."""
    page = render_site(Path(results_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the page from a web server's user
        os.replace(tmp, out_dir / "index.html")
    except BaseException:
        os.unlink(tmp)
        raise
    return out_dir / "index.html"


def report_main(results: tyro.conf.Positional[Path], html: Path) -> None:
    """Write the results as a self-contained web page (OUT_DIR/index.html, opens from disk).

    Args:
        results: A `bench run` output directory (with results.json).
        html: Output directory of the page.
    """
    results = Path(results)
    if results.is_file():
        results = results.parent
    path = write_site(results, html)
    print(f"wrote {path}")
