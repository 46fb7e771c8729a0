"""Chapter 01's pretraining-budget curve: the char-BERT at several pretraining budgets.

The shipped encoder is step 3,500 of one pretraining run
(:mod:`kexue.experiments.pretrain`, 3,500 steps, bf16, seed 0). Because every
random draw of step ``k`` is seeded from ``(seed, k)`` and the schedule is fixed by
the total, stopping that same run early gives the encoder as it was after ``b``
steps. :func:`pretrain_budgets` regenerates those intermediate checkpoints,
resumably (each budget continues from the previous one), into
``runs/ch01_budget/step<b>/``; only the final checkpoint ships.

``python -m kexue.experiments.ch01_budget`` regenerates them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from kexue.experiments.pretrain import CHECKPOINT_DIR, RUN_FILE, PretrainConfig, pretrain

__all__ = ["BUDGETS", "TOTAL_STEPS", "BUDGET_DIR", "budget_dir", "pretrain_budgets"]

#: pretraining steps at which the curve samples the encoder (3,500 is the shipped one)
BUDGETS: tuple[int, ...] = (250, 500, 1000, 2000)
#: the schedule's length: that of the shipped run
TOTAL_STEPS = 3500
#: where the regenerated checkpoints go (git ignores ``runs/``)
BUDGET_DIR = Path("runs/ch01_budget")
_FILES = ("model.safetensors", "config.json", "vocab.txt", "training_record.json")


def budget_dir(steps: int, root: str | Path = BUDGET_DIR) -> Path:
    """The folder of the checkpoint after ``steps`` pretraining steps."""
    return Path(root) / f"step{int(steps)}"


def pretrain_budgets(
    budgets: Sequence[int] = BUDGETS, root: str | Path = BUDGET_DIR, *, progress: bool | None = None
) -> list[Path]:
    """Run the shipped recipe for ``TOTAL_STEPS`` steps, stopping at each budget to copy the encoder.

    Budgets whose folder already holds weights are skipped; the run resumes from
    its own checkpoint (``<root>/run/checkpoint``), so an interrupted call loses
    at most one save interval. Returns the budget folders in order.
    """
    root = Path(root)
    run_out = root / "run"
    done = []
    for steps in sorted(int(b) for b in budgets):
        if not 0 < steps <= TOTAL_STEPS:
            raise ValueError(f"budgets must lie in 1..{TOTAL_STEPS}, got {steps}")
        dest = budget_dir(steps, root)
        if not (dest / "model.safetensors").is_file():
            resume = "auto" if (run_out / CHECKPOINT_DIR / RUN_FILE).is_file() else None
            cfg = PretrainConfig(out=str(run_out), steps=TOTAL_STEPS, bf16=True, stop_at=steps, eval_every=0)
            record = pretrain(cfg, resume=resume, progress=progress)
            if record["steps"] != steps:
                raise RuntimeError(f"the run stopped at step {record['steps']}, not {steps}")
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name in _FILES:
                shutil.copy2(run_out / name, tmp / name)
            tmp.rename(dest)
        done.append(dest)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kexue.experiments.ch01_budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--root", default=str(BUDGET_DIR))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in pretrain_budgets(args.budgets, args.root, progress=False):
        print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
