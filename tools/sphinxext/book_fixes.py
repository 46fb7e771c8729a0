"""Small Sphinx fixes for the kexue book.

Notebook pages get a "download .ipynb" entry (see ``_offer_notebook_download``),
and every page the book's CSS (``static/kexue.css``: a CJK font fallback list).

``sphinx_thebe`` registers its inline ``const THEBE_JS_URL = ...`` script each
time Sphinx reads documents, so a build that re-reads (as Jupyter Book 1's
does) puts the declaration on every page twice, and the browser raises
"Identifier 'THEBE_JS_URL' has already been declared". This extension drops
repeated script entries before a page is written.
"""

from __future__ import annotations

from pathlib import Path
from shutil import copy2
from typing import Any


def _offer_notebook_download(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Give every executed MyST notebook page a ".ipynb" entry in the download menu.

    sphinx-book-theme only does this when a launch service (Binder, Colab, ...)
    is configured, and none can be reached from an offline book. The executed
    notebook, outputs included, is copied next to the page's source.
    """
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.exists():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def _dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    unique = []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        key = (str(getattr(script, "filename", "") or ""), str(sorted(attributes.items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"] = unique


def _add_static(app: Any) -> None:
    """Serve this extension's ``static/`` folder (the book's CSS) with the HTML."""
    app.config.html_static_path.append(str(Path(__file__).resolve().parent / "static"))


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _add_static)
    app.add_css_file("kexue.css")
    app.connect("html-page-context", _offer_notebook_download, priority=100)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
