"""Every "§" reference in the code and docs names a numbered heading of a document in ``docs/``.

The rule a reference follows:

- ``docs/tasks.md §2`` (in the docs themselves ``tasks.md §2``) points to that document;
- a bare ``§2`` points to the file's default document: for ``docs/<name>.md`` the file itself,
  for code the first document the file names (``docs/algorithms.md`` in ``lmrlgym/algos/``);
- ``§1.3-1.5`` and ``§5-6`` name both ends; paper sections are written "Section 5", never "§".

A section exists when the document has a markdown heading that starts with its number
(``### 3.4 Implicit Language Q-Learning`` or ``## 2. Maze``). Names of the out-of-repo spec
files are refused, so a reference can always be followed in a clone of the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NUMBER = r"\d+(?:\.\d+)*"
# An optional document prefix, the section number, and an optional range end.
REFERENCE = re.compile(rf"(?:(?:docs/)?(\w+)\.md\s*)?§\s*({NUMBER})?(?:\s*[-–]\s*({NUMBER}))?")
DOC_NAME = re.compile(r"(?:docs/)?\b(\w+)\.md\b")
HEADING = re.compile(rf"^#{{1,6}}\s+({NUMBER})\.?\s", re.MULTILINE)
OUT_OF_REPO = re.compile(r"\b(?:ALGORITHMS|TASKS|DESIGN|STYLE)\.md\b")


def sources() -> list[Path]:
    """The files whose references are checked: the package, tests, scripts and docs."""
    code = [p for d in ("lmrlgym", "tests", "scripts") for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in code if p != Path(__file__).resolve()] + sorted(DOCS.glob("*.md"))


def sections(doc: Path) -> set[str]:
    return set(HEADING.findall(doc.read_text(encoding="utf-8")))


def default_doc(path: Path, text: str) -> str | None:
    if path.parent == DOCS:
        return path.stem
    first = DOC_NAME.search(text)
    return first.group(1) if first else None


def broken_references(path: Path, text: str, known: dict[str, set[str]]) -> list[str]:
    """``file:line: problem`` for every reference in ``text`` that does not resolve."""
    default = default_doc(path, text)
    problems = []
    for m in REFERENCE.finditer(text):
        where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
        doc, first, last = m.group(1) or default, m.group(2), m.group(3)
        if first is None:
            problems.append(f"{where}: '§' without a section number: {m.group(0)!r}")
        elif doc is None:
            problems.append(f"{where}: §{first} names no document and the file names none")
        elif doc not in known:
            problems.append(f"{where}: §{first} points to docs/{doc}.md, which does not exist")
        else:
            problems += [f"{where}: docs/{doc}.md has no section {n}"
                         for n in (first, last) if n is not None and n not in known[doc]]
    return problems


@pytest.fixture(scope="module")
def known() -> dict[str, set[str]]:
    return {doc.stem: sections(doc) for doc in DOCS.glob("*.md")}


def test_every_section_reference_resolves(known):
    refs = 0
    problems: list[str] = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        refs += len(REFERENCE.findall(text))
        problems += broken_references(path, text, known)
    assert refs > 200  # the scan found the references (about 250 today)
    assert not problems, "\n".join(problems)


def test_the_specs_keep_their_section_numbers(known):
    assert {"1.9", "2.4", "3.4", "3.7", "4.5", "5.2", "6"} <= known["algorithms"]
    assert {"1", "9", "10", "11.1", "11.2"} <= known["tasks"]


def test_no_reference_to_spec_files_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sources()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if OUT_OF_REPO.search(line)]
    assert not hits, "point these at docs/algorithms.md or docs/tasks.md:\n" + "\n".join(hits)


@pytest.mark.parametrize(("text", "problem"), [
    ('"""docs/tasks.md §2."""', None),
    ('"""docs/tasks.md §2; see also §99."""', "docs/tasks.md has no section 99"),
    ('"""docs/algorithms.md §3.4-3.12."""', "docs/algorithms.md has no section 3.12"),
    ('"""docs/nowhere.md §1."""', "docs/nowhere.md, which does not exist"),
    ('"""A bare §2."""', "§2 names no document"),
    ('"""docs/tasks.md, § conventions."""', "'§' without a section number"),
])
def test_a_reference_to_a_missing_section_is_reported(text, problem, known):
    problems = broken_references(ROOT / "lmrlgym" / "example.py", text, known)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems
        assert problems[0].startswith("lmrlgym/example.py:1: ")
