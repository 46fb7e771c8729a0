"""Collect the book's MyST Markdown notebooks for nbval, without converted copies.

nbval only collects ``.ipynb``. Here each ``book/*.md`` whose front matter
declares a Jupyter kernel is read with jupytext and handed to nbval's own
collector, so a failing cell reads ``book/NN_x.md::Cell 3`` and the kernel's
working directory is the chapter's folder, as in the book build.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import jupytext
import nbformat
import pytest
from nbval.plugin import IPyNbFile

ROOT = Path(__file__).resolve().parent


def _is_notebook(path: Path) -> bool:
    if path.suffix != ".md":
        return False
    head = path.read_text(encoding="utf-8")[:2000]
    return head.startswith("---") and "kernelspec:" in head and "format_name: myst" in head


class MystNotebookFile(IPyNbFile):
    """nbval's notebook collector fed from a jupytext-read MyST file."""

    def collect(self):
        notebook = jupytext.read(self.path, fmt="md:myst")
        with mock.patch.object(nbformat, "read", return_value=notebook):
            yield from super().collect()


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    opt = parent.config.option
    if (opt.nbval or opt.nbval_lax) and _is_notebook(file_path):
        return MystNotebookFile.from_parent(parent, path=file_path)
    return None
