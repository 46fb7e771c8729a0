"""Static checks of the book's pages: what the reader sees in code cells.

* Results are shown as tables (``display(table(...))``) or Markdown, never as
  printed text: no code cell of a page calls ``print``, and none lays out a
  Markdown table by hand (a ``|---|`` rule in a string) instead of calling
  :func:`kexue.experiments.display.table`.
* Code the reader sees fits the page: every line of a code cell that is not
  removed from the page (``remove-input`` / ``remove-cell``) is at most 88
  characters long.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
PAGES = sorted(BOOK.rglob("*.md"))
LIMIT = 88


def code_cells(text: str) -> list[tuple[int, list[str], str]]:
    """``(first line number, tags, source)`` of every ``{code-cell}`` in a MyST page."""
    cells, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("```{code-cell}"):
            start, tags, body = i + 2, [], []
            i += 1
            while i < len(lines) and lines[i].startswith(":"):  # cell options
                if lines[i].startswith(":tags:"):
                    tags = [t.strip(" []'\"") for t in lines[i].split(":", 2)[2].split(",")]
                i += 1
                start = i + 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            cells.append((start, tags, "\n".join(body)))
        i += 1
    return cells


def print_calls(text: str) -> list[int]:
    """Line numbers of ``print(...)`` calls in the page's code cells."""
    out = []
    for start, _, source in code_cells(text):
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics: fall back to the text
            out += [start + n for n, line in enumerate(source.splitlines()) if "print(" in line]
            continue
        out += [start + node.lineno - 1 for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    return sorted(out)


def hand_built_tables(text: str) -> list[int]:
    """Line numbers of code lines that write a Markdown table's rule row themselves."""
    return [start + n for start, _, source in code_cells(text)
            for n, line in enumerate(source.splitlines()) if re.search(r"[\"']\|-{3}", line)]


def long_visible_lines(text: str, limit: int = LIMIT) -> list[int]:
    """Line numbers of code lines longer than ``limit`` in cells the page shows."""
    out = []
    for start, tags, source in code_cells(text):
        if {"remove-input", "remove-cell"} & set(tags):
            continue
        out += [start + n for n, line in enumerate(source.splitlines()) if len(line) > limit]
    return out


BROKEN = """# A page

```{code-cell} ipython3
:tags: [remove-input]

x = 1  # a hidden cell may be long .......................................................
```

```{code-cell} ipython3
import math

print({"pi": math.pi})
y = "%s" % ("a very long line that a reader would have to scroll sideways to read in full",)
rule = "|---|---|"
```
"""


def test_the_checks_catch_a_broken_page():
    assert print_calls(BROKEN) == [12]
    assert long_visible_lines(BROKEN) == [13]
    assert hand_built_tables(BROKEN) == [14]
    assert [tags for _, tags, _ in code_cells(BROKEN)] == [["remove-input"], []]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(BOOK).as_posix())
def test_pages_show_results_as_tables_not_printed_text(page):
    lines = print_calls(page.read_text(encoding="utf-8"))
    assert not lines, f"{page.name}: print() at line(s) {lines}; display a table or Markdown instead"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(BOOK).as_posix())
def test_pages_build_tables_with_the_table_helper(page):
    lines = hand_built_tables(page.read_text(encoding="utf-8"))
    assert not lines, f"{page.name}: a Markdown table written by hand at line(s) {lines}; use display.table"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(BOOK).as_posix())
def test_visible_code_fits_the_page(page):
    lines = long_visible_lines(page.read_text(encoding="utf-8"))
    assert not lines, f"{page.name}: code lines over {LIMIT} characters at {lines}"
