"""A failing ``assert`` in a notebook must fail both the test command and the book build.

The test copies the repository's real ``_config.yml``, ``conftest.py``,
``pyproject.toml`` and local Sphinx extension next to a one-page scratch book, then runs the same
``pytest`` and ``jupyter-book build`` invocations as the Makefile, once with a
passing notebook (control) and once with a failing one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

NOTEBOOK = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Scratch

```{{code-cell}} ipython3
x = 1 + 1
assert x == {expected}, "planted check"
```
"""


def make_book(tmp_path: Path, expected: int) -> Path:
    for name in ("_config.yml", "conftest.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    # _config.yml loads a local Sphinx extension from tools/sphinxext.
    shutil.copytree(ROOT / "tools" / "sphinxext", tmp_path / "tools" / "sphinxext",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "book" / "references.bib", tmp_path / "book" / "references.bib")
    (tmp_path / "book" / "page.md").write_text(NOTEBOOK.format(expected=expected))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/page\n")
    return tmp_path


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("expected, should_pass", [(2, True), (3, False)])
def test_notebook_assert_fails_pytest(tmp_path, expected, should_pass):
    book = make_book(tmp_path, expected)
    result = run([sys.executable, "-m", "pytest", "book/page.md", "-q"], cwd=book)
    assert (result.returncode == 0) is should_pass, result.stdout[-2000:]
    if not should_pass:
        assert "planted check" in result.stdout


@pytest.mark.parametrize("expected, should_pass", [(2, True), (3, False)])
def test_notebook_assert_fails_book_build(tmp_path, expected, should_pass):
    book = make_book(tmp_path, expected)
    cmd = [str(BIN / "jupyter-book"), "build", ".", "--path-output", ".", "--builder", "html", "-W", "--keep-going"]
    result = run(cmd, cwd=book)
    assert (result.returncode == 0) is should_pass, (result.stdout + result.stderr)[-3000:]
    if should_pass:
        assert (book / "_build" / "html" / "book" / "page.html").exists()
