"""The interactive path, for real: ``make lab``'s JupyterLab, its kernel, and a downloaded notebook.

One module-scoped fixture starts the server exactly as ``make lab`` does (``tools/lab.py``,
with the venv's Python) on a free loopback port with a token, and stops it at the end.
Against it the tests check that

* the default kernel is the repository's ``python3`` spec, and it runs the venv's Python
  with ``kexue`` importable from this checkout;
* JupyterLab's default viewer for Markdown is jupytext's notebook (the repository's
  settings override);
* every chapter ``book/0*.md`` comes back from the contents API as a notebook with cells
  (jupytext's contents manager);
* saving any page of ``book/`` through the contents API rewrites the same text (a notebook
  may gain jupytext's ``jupytext_version`` line), and writes no ``.ipynb``;
* ``book/checks.md`` runs cell by cell on a kernel the server started (over its websocket);
* headless Chromium shows ``/lab/tree/book/checks.md`` as a notebook, with no error dialog,
  and *Run All Cells* runs it without a traceback (screenshots: ``_build/lab/checks.png``
  as opened, ``_build/lab/checks-run.png`` after running).

A last test converts ``book/checks.md`` to ``.ipynb`` outside the repository and runs it
there with nbclient, as a reader who downloaded it would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat
import pytest
import websocket  # websocket-client, pinned with jupyter_server
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(p.name for p in BOOK.glob("0*.md"))
SCREENSHOTS = ROOT / "_build" / "lab"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT = 60  # seconds for the server to answer
CELL_TIMEOUT = 120  # seconds for one cell of book/checks.md


def _load_lab_tool():
    spec = importlib.util.spec_from_file_location("kexue_tools_lab", ROOT / "tools" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lab = _load_lab_tool()


@dataclass
class Server:
    base: str
    token: str
    port: int
    log: Path

    def url(self, path: str, **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in {**query, "token": self.token}.items())
        return f"{self.base}/{path.lstrip('/')}?{q}"

    def api(self, method: str, path: str, body: object | None = None, timeout: float = 30, **query: str):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path, **query), data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:2000]
            raise AssertionError(f"{method} /{path.lstrip('/')} -> {err.code}: {detail}") from None
        return json.loads(raw) if raw else None

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-n:]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """``tools/lab.py`` (what ``make lab`` runs) on a free loopback port, stopped at the end.

    User settings, workspaces, checkpoints and runtime files go to a temporary folder, so
    the test neither reads nor changes the user's; autosave is off there, so opening a
    chapter in the browser never writes to ``book/``.
    """
    tmp = tmp_path_factory.mktemp("lab")
    settings = tmp / "user-settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    port, token = lab.free_port(), secrets.token_hex(16)
    log = tmp / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "KEXUE_PROGRESS": "0"}
    cmd = [sys.executable, str(ROOT / "tools" / "lab.py"), "--port", str(port), "--token", token,
           "--no-browser", f"--LabApp.user_settings_dir={tmp / 'user-settings'}",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}", f"--FileCheckpoints.checkpoint_dir={tmp / 'checkpoints'}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    srv = Server(f"http://{lab.IP}:{port}", token, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{srv.log_tail()}")
            try:
                srv.api("GET", "api/status", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the server did not answer within {START_TIMEOUT} s:\n{srv.log_tail()}")
                time.sleep(0.5)
        yield srv
    finally:
        _stop(proc, srv)


def _stop(proc: subprocess.Popen, srv: Server) -> None:
    """Ask the server to shut down (it stops its kernels), then make sure its process group is gone.

    Kernels run in sessions of their own; one left behind by a killed server exits by itself
    when it sees its parent gone (ipykernel's parent poller).
    """
    if proc.poll() is None:
        try:
            srv.api("POST", "api/shutdown", timeout=10)
        except Exception:  # noqa: BLE001 - stopping regardless
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the group this fixture started (start_new_session)
        except ProcessLookupError:
            break
        time.sleep(2)
    if proc.poll() is None:
        proc.wait(timeout=10)


def _front_matter_kernel(path: Path) -> str:
    return jupytext.read(path, fmt="md:myst").metadata["kernelspec"]["display_name"]


def test_default_kernel_is_the_repository_python3_spec(server):
    specs = server.api("GET", "api/kernelspecs")
    assert specs["default"] == "python3"
    spec = specs["kernelspecs"]["python3"]["spec"]
    # "python" is replaced by the server's own interpreter: the venv's Python
    assert spec["argv"][:3] == ["python", "-m", "ipykernel_launcher"], spec["argv"]
    assert spec["display_name"] == _front_matter_kernel(BOOK / "checks.md") == "Python 3"


def test_markdown_opens_as_a_jupytext_notebook_by_default(server):
    plugin = server.api("GET", "lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    viewers = plugin["schema"]["properties"]["defaultViewers"]["default"]
    assert viewers.get("markdown") == "Jupytext Notebook", viewers


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_comes_back_as_a_notebook(server, chapter):
    model = server.api("GET", f"api/contents/book/{chapter}", type="notebook")
    assert model["type"] == "notebook" and model["format"] == "json"
    cells = model["content"]["cells"]
    assert any(c["cell_type"] == "code" for c in cells), f"{chapter}: no code cells"
    assert any(c["cell_type"] == "markdown" for c in cells), f"{chapter}: no markdown cells"
    assert model["content"]["metadata"]["kernelspec"]["name"] == "python3"


def test_chapters_found():
    assert len(CHAPTERS) >= 7, CHAPTERS


PAGES = sorted(p.relative_to(BOOK).as_posix() for p in BOOK.rglob("*.md")
               if not any(part.startswith(".") for part in p.relative_to(BOOK).parts))
STAMP = re.compile(r"^ +jupytext_version: .*\n", re.MULTILINE)


def test_saving_rewrites_the_same_text_and_no_ipynb(server):
    """Save every page of book/, as JupyterLab would after running it, into a scratch folder.

    Saving writes only the Markdown file, and the same text: the pages without front matter
    (intro, the API pages) stay without one even after a kernel was chosen. The one change
    jupytext may make to a notebook is the ``jupytext_version`` line in its front matter.
    """
    scratch = ROOT / "_build" / "lab" / f"save-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    rel = scratch.relative_to(ROOT).as_posix()
    changed = []
    try:
        for n, page in enumerate(PAGES):
            nb = server.api("GET", f"api/contents/book/{page}", type="notebook")["content"]
            nb["metadata"]["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
            nb["metadata"]["language_info"] = {"name": "python", "version": sys.version.split()[0]}
            for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
                cell["execution_count"] = i + 1
                cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "ran\n"}]
                cell["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
            saved = server.api("PUT", f"api/contents/{rel}/{n:02d}.md",
                               {"type": "notebook", "format": "json", "content": nb})
            assert saved["type"] == "notebook"
            before = (BOOK / page).read_text(encoding="utf-8")
            after = (scratch / f"{n:02d}.md").read_text(encoding="utf-8")
            if STAMP.sub("", after) != STAMP.sub("", before):
                changed.append(page)
        assert sorted(p.suffix for p in scratch.iterdir()) == [".md"] * len(PAGES), "saving wrote other files"
        assert not changed, f"saving from JupyterLab would change {changed}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _execute(ws, code: str, timeout: float = CELL_TIMEOUT) -> list[dict]:
    """Run ``code`` over a kernel websocket; return its iopub outputs, failing on an error."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": "test-lab",
                   "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    outputs: list[dict] = []
    reply, idle = None, False
    deadline = time.monotonic() + timeout
    while reply is None or not idle:
        ws.settimeout(max(1.0, deadline - time.monotonic()))
        if time.monotonic() > deadline:
            raise AssertionError(f"no reply within {timeout} s for:\n{code}")
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if msg["channel"] == "shell" and kind == "execute_reply":
            reply = msg["content"]
        elif msg["channel"] == "iopub":
            if kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            elif kind in ("stream", "execute_result", "display_data", "error"):
                outputs.append({"type": kind, **msg["content"]})
    errors = [o for o in outputs if o["type"] == "error"]
    assert reply["status"] == "ok" and not errors, (
        f"cell failed ({reply.get('ename')}: {reply.get('evalue')}):\n{code}\n"
        + "\n".join("\n".join(o.get("traceback", [])) for o in errors))
    return outputs


def test_checks_runs_on_the_server_kernel(server):
    nb = server.api("GET", "api/contents/book/checks.md", type="notebook")["content"]
    session = server.api("POST", "api/sessions", {"path": "book/checks.md", "name": "checks.md",
                                                  "type": "notebook", "kernel": {"name": "python3"}}, timeout=60)
    kernel = session["kernel"]["id"]
    ws_url = server.url(f"api/kernels/{kernel}/channels").replace("http://", "ws://")
    ws = websocket.create_connection(ws_url, timeout=START_TIMEOUT)
    try:
        probe = _execute(ws, "import os, sys, kexue\nprint(sys.prefix); print(kexue.__file__); print(os.getcwd())")
        prefix, kexue_file, cwd = "".join(o.get("text", "") for o in probe).split("\n")[:3]
        assert Path(prefix).resolve() == Path(sys.prefix).resolve(), "the kernel is not the venv's Python"
        assert Path(kexue_file).resolve().is_relative_to(ROOT / "kexue"), kexue_file
        assert Path(cwd).resolve() == BOOK, cwd
        code_cells = [c["source"] for c in nb["cells"] if c["cell_type"] == "code"]
        assert code_cells
        figures = 0
        for source in code_cells:
            outputs = _execute(ws, source)
            figures += sum("image/png" in o.get("data", {}) for o in outputs)
        assert figures >= 1, "checks.md draws a figure; none came back"
    finally:
        ws.close()
        server.api("DELETE", f"api/sessions/{session['id']}")


PROBE = """() => ({
    dialogs: Array.from(document.querySelectorAll('.jp-Dialog')).map(d => d.innerText.slice(0, 300)),
    codeCells: document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell').length,
    markdownCells: document.querySelectorAll('.jp-NotebookPanel .jp-MarkdownCell').length,
    editors: document.querySelectorAll('.jp-FileEditor').length,
    title: (document.querySelector('.lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel') || {}).innerText,
    prompts: Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt'))
        .map(p => p.innerText.trim()),
    tracebacks: Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output'))
        .map(o => o.innerText).filter(t => /Traceback \\(most recent call last\\)/.test(t)).map(t => t.slice(0, 500)),
})"""


def test_lab_shows_checks_as_a_notebook(server):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    before = (BOOK / "checks.md").read_bytes()
    title = re.search(r"^# (.+)$", before.decode("utf-8"), re.MULTILINE).group(1).strip()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "checks.png"
    errors: list[str] = []
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(
                (server.base + "/", server.base.replace("http", "ws") + "/", "data:", "blob:", "about:")) else None)
            page.goto(server.url("lab/tree/book/checks.md"), wait_until="domcontentloaded", timeout=60_000)
            panel = page.locator(".jp-NotebookPanel").filter(has=page.locator(".jp-Notebook"))
            panel.first.wait_for(state="visible", timeout=60_000)
            page.locator(".jp-NotebookPanel .jp-MarkdownCell h1").filter(
                has_text=title).first.wait_for(timeout=30_000)
            # the kernel the notebook asked for is up: the toolbar names it and it goes idle
            page.locator(".jp-NotebookPanel .jp-KernelName, .jp-NotebookPanel .jp-Toolbar-kernelName").filter(
                has_text="Python 3").first.wait_for(timeout=60_000)
            page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                state="attached", timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shot))
            state = page.evaluate(PROBE)
            # as a reader would: Run > Run All Cells, then wait for the figure and the kernel to be idle
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()
            figure = page.locator(".jp-NotebookPanel .jp-OutputArea-output img").first
            figure.wait_for(state="visible", timeout=CELL_TIMEOUT * 1000)
            page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                state="attached", timeout=CELL_TIMEOUT * 1000)
            figure.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            page.screenshot(path=str(SCREENSHOTS / "checks-run.png"))
            ran = page.evaluate(PROBE)
        except PlaywrightTimeout as err:
            failed = SCREENSHOTS / "checks-failed.png"
            page.screenshot(path=str(failed))
            pytest.fail(f"{err.message.splitlines()[0]}\nwhat the page shows: {page.evaluate(PROBE)}\n"
                        f"screenshot: {failed}\nserver log:\n{server.log_tail(2000)}")
        finally:
            browser.close()
    assert not state["dialogs"], f"JupyterLab showed a dialog: {state['dialogs']}"
    assert state["codeCells"] >= 3 and state["markdownCells"] >= 3, state
    assert state["editors"] == 0, "checks.md opened in the text editor, not as a notebook"
    assert state["title"] == "checks.md", state
    assert not ran["dialogs"], f"JupyterLab showed a dialog after Run All: {ran['dialogs']}"
    assert ran["prompts"] == [f"[{n}]:" for n in range(1, ran["codeCells"] + 1)], ran["prompts"]
    assert not ran["tracebacks"], f"a cell failed in JupyterLab: {ran['tracebacks']}"
    assert not errors, f"JavaScript errors: {errors}"
    assert not outside, f"JupyterLab fetched from outside the server: {outside}"
    assert shot.stat().st_size > 10_000
    assert (BOOK / "checks.md").read_bytes() == before, "opening checks.md changed it"
    assert not list(BOOK.glob("*.ipynb")), "an .ipynb appeared in book/"


def test_downloaded_notebook_runs_outside_the_repository(tmp_path):
    """book/checks.md as a reader's .ipynb, run by nbclient in a folder outside the checkout."""
    from nbclient import NotebookClient

    assert not tmp_path.resolve().is_relative_to(ROOT)
    nb = jupytext.read(BOOK / "checks.md", fmt="md:myst")
    path = tmp_path / "checks.ipynb"
    nbformat.write(nb, path)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import os, kexue\nprint(os.getcwd())"))
    client = NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1", "KEXUE_PROGRESS": "0"})
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    cwd = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert Path(cwd).resolve() == tmp_path.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checks.ipynb"], "the notebook wrote files"
