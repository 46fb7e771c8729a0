"""Start JupyterLab on this checkout, configured for reading and running the book.

``make lab`` runs this with the project's ``.venv`` Python; ``tests/test_lab.py`` starts
the very same command. The configuration lives in files in the repository:

* ``tools/jupyter/`` is put first on ``JUPYTER_CONFIG_PATH`` and ``JUPYTER_PATH``. Its
  ``labconfig/default_setting_overrides.json`` makes jupytext's *Jupytext Notebook* the
  default viewer for Markdown, so a click on ``book/*.md`` opens it as a notebook (a
  choice made in JupyterLab's Settings Editor still wins).
* Its ``kernels/python3/kernel.json`` is the default kernel, named and displayed as in
  the chapters' front matter (``python3``, "Python 3"), so running and saving a chapter
  leaves its ``kernelspec`` untouched. Its command is ``python``, which Jupyter replaces
  with the Python running the server: the kernel is the venv's Python, where ``kexue``
  is installed (editable). Being first on ``JUPYTER_PATH``, it also shadows any
  ``python3`` spec in the user's home.
* ``jupytext.toml`` at the root has no ``formats`` pairing, so saving a chapter writes
  only its MyST Markdown file, never an ``.ipynb`` beside it, and no ``jupytext_version``
  stamp is added to the front matter.

The server listens on 127.0.0.1 only, serves the repository root, and adds
``--allow-root`` when run as root. It prints the URL to open, with its token.

Usage: ``python tools/lab.py [--port N] [--token T] [--no-browser] [jupyter lab options]``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "tools" / "jupyter"
IP = "127.0.0.1"
DEFAULT_PORT = 8888
FIRST_PAGE = "book"  # the file browser on the chapters


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind((IP, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((IP, 0))
        return sock.getsockname()[1]


def lab_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the server (and so of its kernels)."""
    env = dict(os.environ if base is None else base)
    for var in ("JUPYTER_CONFIG_PATH", "JUPYTER_PATH"):  # config (labconfig/) and data (kernels/)
        env[var] = os.pathsep.join(p for p in (str(CONFIG_DIR), env.get(var, "")) if p)
    return env


def lab_command(port: int, token: str, *, open_browser: bool = False, extra: list[str] | None = None,
                python: str | None = None) -> list[str]:
    """The ``jupyter lab`` command line, for the Python of the project's venv."""
    cmd = [
        python or sys.executable, "-m", "jupyterlab",
        f"--ServerApp.ip={IP}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={ROOT}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.open_browser={open_browser}",
        "--MappingKernelManager.default_kernel_name=python3",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd + list(extra or [])


def lab_url(port: int, token: str, path: str = FIRST_PAGE) -> str:
    return f"http://{IP}:{port}/lab/tree/{path}?token={token}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)  # other options go to JupyterLab untouched
    ap.add_argument("--port", type=int, default=None,
                    help=f"port on {IP} (default: KEXUE_LAB_PORT, else {DEFAULT_PORT}, else a free one)")
    ap.add_argument("--token", default=None, help="access token (default: a fresh random one)")
    ap.add_argument("--no-browser", action="store_true", help="do not try to open a web browser")
    args, extra = ap.parse_known_args(argv)
    port = args.port or int(os.environ.get("KEXUE_LAB_PORT", DEFAULT_PORT))
    if not port_is_free(port):
        if args.port:
            ap.error(f"port {port} on {IP} is taken")
        print(f"port {port} is taken; using a free one", flush=True)
        port = free_port()
    token = args.token or secrets.token_hex(24)
    cmd = lab_command(port, token, open_browser=not args.no_browser, extra=extra)
    print(f"\n    JupyterLab for kexue: open {lab_url(port, token)}\n"
          f"    (book/*.md open as notebooks; kernel: {sys.executable}; Ctrl-C twice to stop)\n", flush=True)
    os.chdir(ROOT)
    os.execve(cmd[0], cmd, lab_env())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
