"""``python -m kexue.experiments <chapter> --profile book --seeds 0 1 2``.

Runs a chapter's ``run(cfg, seed)``, the same function its notebook calls, once
per seed, and writes the record (see :mod:`kexue.experiments.records`) as
``<chapter module>_<profile>`` under the package's results folder.

Runs are resumable in chunks of one seed: the record is rewritten after every
seed (``--commit`` also commits it), and a later call with the same config
skips the seeds the record already holds. A record of another config is never
extended; ``--fresh`` starts it again. Several processes may run different seeds
of one record at once (``--seeds 1`` beside ``--seeds 2``): each re-reads the
record under a file lock before adding its seed, so none overwrites another's.

``all`` runs every chapter in turn; with ``--profile full --max-steps 20`` it is
the bounded GPU check (every ``fit`` stops after 20 steps, the schedule
unchanged, and the records are named ``<module>_full_steps20``).
``stale`` lists every run record whose config differs from the current one.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import importlib
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import torch

from kexue.experiments import CHAPTERS, EXTRA_EXPERIMENTS
from kexue.experiments.config import apply_overrides, config_hash
from kexue.experiments.loop import step_cap
from kexue.experiments import records
from kexue.experiments.records import (
    add_seed,
    load_record,
    record_path,
    run_record,
    write_record,
)
from kexue.experiments.status import stale_records
from kexue.utils import PROFILES


def _module_name(chapter: str) -> str:
    key = chapter.strip().lower()
    for number, name in CHAPTERS.items():
        if key in (number, f"ch{number}", name, name.split("_", 1)[1]):
            return name
    if key in EXTRA_EXPERIMENTS:
        return key
    raise SystemExit(f"unknown chapter {chapter!r}; choose one of {', '.join(CHAPTERS)} or {', '.join(CHAPTERS.values())}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kexue.experiments",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("chapter", help=f"chapter number ({', '.join(CHAPTERS)}), module name, 'all', or 'stale'")
    p.add_argument("--profile", choices=PROFILES, default="book")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--name", default=None, help="record name (default: <module>_<profile>[_steps<N>])")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override config fields (a Python literal each), e.g. --set kappa=20 dim=4; "
                        "the record name gets _FIELDVALUE suffixes")
    p.add_argument("--max-steps", type=int, default=None, help="stop every training run after N steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--commit", action="store_true", help="git-commit the record after every seed")
    p.add_argument("--fresh", action="store_true", help="discard an existing record of this name")
    p.add_argument("--dry-run", action="store_true", help="print the config and where the record would go")
    return p


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["kappa=20", "dim=4"]`` -> ``{"kappa": 20, "dim": 4}`` (values as Python literals, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"--set takes FIELD=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def _commit(path: Path, message: str, attempts: int = 5) -> None:
    """Commit ``path`` alone; a busy index (another git process) is retried, and a failure only warns."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, cwd=path.parent)
    if top.returncode:
        print(f"--commit: {path} is not in a git work tree; not committed", file=sys.stderr)
        return
    root = top.stdout.strip()
    for attempt in range(attempts):
        add = subprocess.run(["git", "add", "--", str(path)], capture_output=True, text=True, cwd=root)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", str(path)], capture_output=True, text=True, cwd=root
        ).returncode == 0
        if done:
            return
        time.sleep(2.0 * (attempt + 1))
    print(f"--commit: could not commit {path}; the record is written, commit it by hand", file=sys.stderr)


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock beside ``path`` (released when the block ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_chapter(module_name: str, args: argparse.Namespace) -> Path | None:
    """Run (or resume) one chapter's record; returns its path."""
    module = importlib.import_module(f"kexue.experiments.{module_name}")
    overrides = parse_overrides(args.overrides)
    cfg = apply_overrides(module.CONFIGS[args.profile], overrides)
    suffix = "".join(f"_{k}{v}" for k, v in overrides.items()) + (f"_steps{args.max_steps}" if args.max_steps else "")
    name = args.name or f"{module_name}_{args.profile}{suffix}"
    path = record_path(name)
    if args.dry_run:
        print(f"{module_name} {args.profile}: {cfg}")
        print(f"config hash: {config_hash(cfg)}")
        print(f"record: {path}")
        return None
    record = None
    if path.is_file() and not args.fresh:
        record = load_record(name)
        if record.get("config_hash") != config_hash(cfg) or record.get("max_steps") != args.max_steps:
            raise SystemExit(
                f"{path} records another config ({record.get('config_hash')}, max_steps={record.get('max_steps')}) "
                f"than {module_name}'s {args.profile} ({config_hash(cfg)}, max_steps={args.max_steps}); "
                "pass --fresh to replace it, or --name to write another record"
            )
    for seed in args.seeds:
        if record is not None and seed in record["seeds"]:
            print(f"{name}: seed {seed} already recorded, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        with step_cap(args.max_steps):
            result = module.run(cfg, seed=seed)
        seconds = time.perf_counter() - t0
        with _locked(path):
            # Another process may have added seeds since this one started.
            record = load_record(name) if path.is_file() and (record is not None or not args.fresh) else None
            if record is not None and seed in record["seeds"]:
                print(f"{name}: seed {seed} was recorded by another process meanwhile; this run is dropped",
                      flush=True)
                continue
            if record is None:
                record = run_record(module_name, args.profile, cfg, [seed], [result.metrics], seconds=seconds,
                                    data=result.data, max_steps=args.max_steps, overrides=overrides)
            else:
                record = add_seed(record, seed, result.metrics, seconds=seconds, data=result.data)
            write_record(name, record)
        print(f"{name}: seed {seed} in {seconds:.0f} s: "
              + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())), flush=True)
        if args.commit:
            _commit(path, f"Record {name}: seed {seed} ({args.profile} profile, {seconds / 60:.1f} min)")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.chapter == "stale":
        rows = stale_records()
        for row in rows:
            print(f"{row['name']}: recorded config {row['recorded']}, current {row['current']} ({row['profile']})")
        print(f"{len(rows)} stale record(s) under {records.RECORDS_DIR}")
        return 0
    names = list(CHAPTERS.values()) if args.chapter == "all" else [_module_name(args.chapter)]
    if args.name and len(names) > 1:
        raise SystemExit("--name names one record; it cannot be used with 'all'")
    for module_name in names:
        path = run_chapter(module_name, args)
        if path is not None:
            print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
