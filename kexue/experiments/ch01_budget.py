"""Chapter 01's pretraining-budget curve: the char-BERT at several pretraining budgets.

The shipped encoder is step 3,500 of one pretraining run
(:mod:`kexue.experiments.pretrain`, 3,500 steps, bf16, seed 0). Because every
random draw of step ``k`` is seeded from ``(seed, k)`` and the schedule is fixed by
the total, stopping that same run early gives the encoder as it was after ``b``
steps. :func:`pretrain_budgets` regenerates those intermediate checkpoints,
resumably (each budget continues from the previous one), into
``runs/ch01_budget/step<b>/``; only the final checkpoint ships.

``python -m kexue.experiments.ch01_budget`` regenerates them.

:func:`run` scores one budget's encoder on STS-B test (raw and whitened
pooled vectors, and SimCSE fine-tuning at the article's learning rate and at a
larger one), next to the no-model TF-IDF control; ``steps=0`` is the
random-init control. ``python -m kexue.experiments ch01_budget --profile book
--set steps=500 --seeds 0 1 2`` records one budget (``ch01_budget_book_steps500``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kexue import checks
from kexue.data import load_sts_b
from kexue.experiments.ch01_simcse import tfidf_spearman, unlabelled_sentences
from kexue.experiments.config import Profiles
from kexue.experiments.pretrain import CHECKPOINT_DIR, RUN_FILE, PretrainConfig, pretrain
from kexue.experiments.records import RunResult, fingerprint
from kexue.experiments.simcse_training import train_simcse
from kexue.nn import MaskedLM
from kexue.pretrained import ZH_CHAR_BERT, load_zh_char_bert
from kexue.simcse import POOLINGS, cosine_scores, encode, spearman, sts_spearman
from kexue.utils import get_device, seed_everything

__all__ = [
    "BUDGETS", "TOTAL_STEPS", "BUDGET_DIR", "budget_dir", "pretrain_budgets", "BudgetConfig", "CONFIGS", "run",
    "lr_key",
]

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


@dataclass(frozen=True)
class BudgetConfig:
    """One point of the budget curve: the encoder after ``steps`` pretraining steps."""

    steps: int = TOTAL_STEPS  # 0: random init (the control); TOTAL_STEPS: the shipped encoder
    sentences: int = 2560  # unlabelled STS-B training sentences for SimCSE (one epoch: 40 steps of 64)
    batch_size: int = 64
    lrs: tuple[float, ...] = (1e-5, 1e-4)  # the article's lr, and the larger one the smoke profile uses
    dropout: float = 0.3
    temperature: float = 0.05
    max_len: int = 64
    pooling: str = "last-avg"

    def __post_init__(self) -> None:
        checks.nonnegative_int("steps", self.steps)
        if self.steps > TOTAL_STEPS:
            raise ValueError(f"steps must be at most {TOTAL_STEPS} (the shipped run's length), got {self.steps}")
        checks.positive_int("sentences", self.sentences)
        checks.int_at_least("batch_size", self.batch_size, 2)
        checks.choice("pooling", self.pooling, POOLINGS)
        if not self.lrs:
            raise ValueError("lrs must not be empty")
        for lr in self.lrs:
            checks.positive_float("lrs", lr)


#: ``smoke``: 256 sentences (4 SimCSE steps per lr); ``book``: 2,560 sentences (40 steps); ``full``: every
#: distinct STS-B training sentence (9,424), the article's epoch. Pick the budget with ``--set steps=<b>``.
CONFIGS = Profiles(
    smoke=BudgetConfig(sentences=256),
    book=BudgetConfig(),
    full=BudgetConfig(sentences=9424),
)


def lr_key(lr: float) -> str:
    """The metric name of SimCSE at learning rate ``lr`` (``1e-05`` -> ``simcse_lr1e-05``)."""
    return f"simcse_lr{lr:g}"


def _encoder(cfg: BudgetConfig, seed: int, dropout: float | None, device: torch.device) -> tuple[MaskedLM, object, dict]:
    extra = {} if dropout is None else {"dropout": dropout}
    if cfg.steps == 0:
        shipped, tokenizer = load_zh_char_bert(device=device, **extra)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MaskedLM(shipped.config).to(device).eval()
        return model, tokenizer, {}
    path = ZH_CHAR_BERT if cfg.steps == TOTAL_STEPS else budget_dir(cfg.steps)
    if not (Path(path) / "model.safetensors").is_file():
        pretrain_budgets([cfg.steps])
    model, tokenizer = load_zh_char_bert(path, device=device, **extra)
    record = json.loads((Path(path) / "training_record.json").read_text(encoding="utf-8"))
    return model, tokenizer, record


def run(cfg: BudgetConfig, seed: int = 0) -> RunResult:
    """Raw, whitened and SimCSE (each lr) Spearman of the encoder after ``cfg.steps`` steps; TF-IDF beside them.

    Metrics (Spearman, not x100): ``raw``, ``whitening``, ``simcse_lr<lr>`` for each
    of ``cfg.lrs``, ``tfidf``, and for a pretrained encoder its held-out MLM
    accuracy ``mlm_accuracy``. The raw and whitened scores do not depend on the
    seed except at ``steps=0``, where the seed draws the random encoder.
    """
    device = get_device()
    test = load_sts_b("test")
    all_sents = sorted({s for split in ("train", "valid", "test") for a, b, _ in load_sts_b(split) for s in (a, b)})
    model, tokenizer, record = _encoder(cfg, seed, None, device)
    base = sts_spearman(model, tokenizer, test, (cfg.pooling,), whitening_texts=all_sents, max_len=cfg.max_len)
    metrics = {"raw": base["raw"][cfg.pooling], "whitening": base["whitening"][cfg.pooling],
               "tfidf": tfidf_spearman(test, all_sents)["tfidf"]}
    if record:
        metrics["mlm_accuracy"] = float(record["heldout"]["mlm_accuracy"])
    sentences = unlabelled_sentences(cfg.sentences, seed)
    losses = {}
    for lr in cfg.lrs:
        model, tokenizer, _ = _encoder(cfg, seed, cfg.dropout, device)
        res = train_simcse(model, tokenizer, sentences, pooling=cfg.pooling, batch_size=cfg.batch_size, lr=lr,
                           epochs=1, temperature=cfg.temperature, max_len=cfg.max_len, optimizer="adam", seed=seed)
        a = encode(model, tokenizer, [p[0] for p in test], cfg.pooling, max_len=cfg.max_len)
        b = encode(model, tokenizer, [p[1] for p in test], cfg.pooling, max_len=cfg.max_len)
        metrics[lr_key(lr)] = spearman(cosine_scores(a, b), [p[2] for p in test])
        losses[lr] = res.losses
    return RunResult(
        metrics=metrics,
        artifacts={"losses": losses},
        data={"sts_b_test": fingerprint(test), "unlabelled": fingerprint(sentences),
              "whitening_texts": fingerprint(all_sents)},
    )


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
