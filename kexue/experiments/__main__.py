"""``python -m kexue.experiments <chapter> --profile book --seeds 0 1 2``.

Runs a chapter's ``run(cfg, seed)``, the same function its notebook calls, once
per seed, and writes the record (see :mod:`kexue.experiments.records`) as
``<chapter module>_<profile>`` under the package's results folder.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from kexue.experiments import CHAPTERS
from kexue.experiments.records import record_path, run_record, write_record
from kexue.utils import PROFILES


def _module_name(chapter: str) -> str:
    key = chapter.strip().lower()
    for number, name in CHAPTERS.items():
        if key in (number, f"ch{number}", name, name.split("_", 1)[1]):
            return name
    raise SystemExit(f"unknown chapter {chapter!r}; choose one of {', '.join(CHAPTERS)} or {', '.join(CHAPTERS.values())}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kexue.experiments", description=__doc__.split("\n\n")[1])
    p.add_argument("chapter", help=f"chapter number ({', '.join(CHAPTERS)}) or module name")
    p.add_argument("--profile", choices=PROFILES, default="book")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--name", default=None, help="record name (default: <module>_<profile>)")
    p.add_argument("--dry-run", action="store_true", help="print the config and where the record would go")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    module_name = _module_name(args.chapter)
    module = importlib.import_module(f"kexue.experiments.{module_name}")
    cfg = module.CONFIGS[args.profile]
    name = args.name or f"{module_name}_{args.profile}"
    if args.dry_run:
        print(f"{module_name} {args.profile}: {cfg}")
        print(f"record: {record_path(name)}")
        return 0
    per_seed, data = [], {}
    t0 = time.perf_counter()
    for seed in args.seeds:
        result = module.run(cfg, seed=seed)
        per_seed.append(dict(result.metrics))
        data.update(result.data)
        print(f"seed {seed}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())), flush=True)
    record = run_record(module_name, args.profile, cfg, args.seeds, per_seed, seconds=time.perf_counter() - t0, data=data)
    print(f"wrote {write_record(name, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
