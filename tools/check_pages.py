"""Check the rendered book in headless Chromium, offline.

For every built page (the chapters and the front matter) it checks that:

* MathJax typeset the math (``mjx-container`` elements exist wherever the page
  has math) and produced no ``mjx-merror``;
* every ``<img>`` loaded (``complete`` and ``naturalWidth > 0``);
* no cell output shows a Python traceback, and none is plain text (a print,
  a warning or a bare expression's repr): results are tables, Markdown or figures;
* every internal link resolves to an existing page and, when it has a
  ``#fragment``, to an element with that id;
* the page requested nothing outside the local server (MathJax included).

Usage: ``python tools/check_pages.py _build/html [--screenshots DIR]``.
Exits non-zero and lists every problem when any check fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SKIP = {"genindex.html", "search.html", "py-modindex.html"}

PAGE_PROBE = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  for (const img of Array.from(document.images)) {
    if (!img.complete) { await new Promise(r => { img.onload = img.onerror = r; setTimeout(r, 5000); }); }
  }
  const outputs = Array.from(document.querySelectorAll('.cell_output, .output'));
  return {
    mathSources: document.querySelectorAll('.math, mjx-container').length,
    typeset: document.querySelectorAll('mjx-container').length,
    mathErrors: document.querySelectorAll('mjx-merror').length,
    rawTex: Array.from(document.querySelectorAll('.math')).filter(e => !e.querySelector('mjx-container') && !e.closest('mjx-container')).length,
    brokenImages: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    images: document.images.length,
    tracebacks: outputs.filter(o => o.classList.contains('traceback') || /Traceback \\(most recent call last\\)/.test(o.textContent)).length,
    textOutputs: Array.from(document.querySelectorAll('.cell_output .output.text_plain, .cell_output .output.stream, .cell_output .output.stderr')).map(o => o.textContent.trim().slice(0, 80)),
  };
}
"""


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(values[key] or "")
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def check_links(root: Path, page: Path) -> list[str]:
    problems = []
    base = "http://book/" + page.relative_to(root).as_posix()
    for href in parse(page).links:
        url = urljoin(base, href)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or parsed.netloc != "book":
            continue  # external, mailto:, javascript: ...
        target_url, fragment = urldefrag(url)
        rel = unquote(urlparse(target_url).path).lstrip("/")
        target = root / rel
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            problems.append(f"broken link {href!r} (no file {rel})")
            continue
        if fragment and target.suffix == ".html" and unquote(fragment) not in parse(target).ids:
            problems.append(f"broken link {href!r} (no id #{fragment} in {rel})")
    return problems


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietServer(http.server.ThreadingHTTPServer):
    """Says nothing when the browser drops a connection it no longer needs (a favicon request, say)."""

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="the built HTML folder, e.g. _build/html")
    ap.add_argument("--screenshots", type=Path, default=None, help="write a PNG of each page here")
    args = ap.parse_args()
    root: Path = args.root.resolve()
    pages = sorted(p for p in root.rglob("*.html") if p.name not in SKIP and not any(
        part.startswith("_") for part in p.relative_to(root).parts))
    if not pages:
        print(f"no pages found under {root}")
        return 1
    server, origin = serve(root)
    failures: dict[str, list[str]] = {}
    total_math = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for page_path in pages:
            rel = page_path.relative_to(root).as_posix()
            problems = check_links(root, page_path)
            html = page_path.read_text(encoding="utf-8", errors="replace")
            redirect = re.search(r'http-equiv="refresh"[^>]*url=([^"]+)"', html, re.I)
            if redirect:  # the root index.html only forwards to the first page
                target = (page_path.parent / redirect.group(1)).resolve()
                status = "ok" if target.exists() else "FAIL"
                print(f"{status:4} {rel}: redirects to {redirect.group(1)}")
                if not target.exists():
                    failures[rel] = [f"redirect target {redirect.group(1)} does not exist"]
                continue
            outside: list[str] = []
            page = browser.new_page(viewport={"width": 1200, "height": 1600})
            page.on("request", lambda req: outside.append(req.url)
                    if not re.match(r"^(http://127\.0\.0\.1:\d+/|data:|blob:|about:)", req.url) else None)
            page.on("pageerror", lambda err: problems.append(f"JavaScript error: {err}"))
            page.goto(origin + rel, wait_until="load", timeout=60_000)
            result = page.evaluate(PAGE_PROBE)
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.screenshots / (rel.replace("/", "_") + ".png")), full_page=False)
            page.close()
            total_math += result["typeset"]
            if result["mathSources"] and not result["typeset"]:
                problems.append("math present but MathJax typeset nothing")
            if result["rawTex"]:
                problems.append(f"{result['rawTex']} math elements left untypeset")
            if result["mathErrors"]:
                problems.append(f"{result['mathErrors']} MathJax errors (mjx-merror)")
            for src in result["brokenImages"]:
                problems.append(f"image did not load: {src}")
            if result["tracebacks"]:
                problems.append(f"{result['tracebacks']} cell outputs show a Python traceback")
            for text in result["textOutputs"]:
                problems.append(f"stray text output (print, a warning or a bare expression): {text!r}")
            for url in outside:
                problems.append(f"requested a resource outside the book: {url}")
            status = "ok" if not problems else "FAIL"
            print(f"{status:4} {rel}: {result['typeset']} formulas, {result['images']} images")
            if problems:
                failures[rel] = problems
        browser.close()
    server.shutdown()
    if total_math == 0:
        failures["(book)"] = ["no typeset math anywhere: MathJax is not working"]
    for rel, problems in failures.items():
        for problem in problems:
            print(f"  {rel}: {problem}")
    failed_pages = len([rel for rel in failures if rel != "(book)"])
    print(f"checked {len(pages)} pages: {len(pages) - failed_pages} ok, {failed_pages} with problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
