"""Run chapter 02's ``full`` experiment (MSRA NER, fine-tuned encoder, four heads) and record it.

The chapter's ``smoke`` profile trains heads on frozen features of a 1,200-sentence subset.
This script runs the ``full`` configuration
(``kexue.experiments.ch02_globalpointer.CONFIGS["full"]``: all 50,711 MSRA training
sentences, the whole encoder fine-tuned, batch 16) for each head on whatever device
``kexue.utils.get_device()`` picks, through the experiment's own :func:`fit_head`, and
writes per-epoch test F1, per-step losses, final precision, recall and F1 (overall and per
type) and the training time of each head to the record ``ner_full``
(``kexue/results/ner_full.json``, see :mod:`kexue.experiments.records`). The record is
rewritten after every head, so an interrupted run still leaves the finished heads. Before
the heads, a short probe fine-tunes GlobalPointer for 400 steps at the article's learning
rate (2e-5) and at the config's, and records both test F1s: the evidence for the config's
rate. The chapter displays the record; it never fine-tunes at this scale itself.

    .venv/bin/python tools/ner_full.py               # 10 epochs: hours on 2 CPU cores
    .venv/bin/python tools/ner_full.py --epochs 3    # what the shipped record used on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kexue.data import ENTITY_TYPES, load_msra  # noqa: E402
from kexue.experiments import ch02_globalpointer as ch02  # noqa: E402
from kexue.experiments.records import write_record  # noqa: E402
from kexue.metrics import entity_prf  # noqa: E402
from kexue.pretrained import load_zh_char_bert  # noqa: E402
from kexue.utils import get_device, git_commit, seed_everything  # noqa: E402

RECORD = "ner_full"
ARTICLE_LR = 2e-5
LOSS_EVERY = 50  # the record keeps the mean training loss of each run of this many steps


def _prf(p) -> dict:
    return {"precision": p.precision, "recall": p.recall, "f1": p.f1}


def lr_probe(encoder, train: ch02.NerData, test: ch02.NerData, cfg: ch02.NerConfig, seed: int = 0,
             steps: int = 400, n_test: int = 600) -> list[dict]:
    """GlobalPointer fine-tuned for ``steps`` batches at the article's rate and at ``cfg``'s."""
    rng = random.Random(seed)
    i_tr = torch.tensor(sorted(rng.sample(range(len(train.spans)), steps * cfg.batch_size)))
    i_te = torch.tensor(sorted(rng.sample(range(len(test.spans)), n_test)))
    gold = [set(test.spans[i]) for i in i_te.tolist()]
    dev = get_device()
    rows = []
    for lr in (ARTICLE_LR, cfg.lr_encoder):
        c = dataclasses.replace(cfg, epochs=1, lr_head=lr, lr_encoder=lr)
        seed_everything(seed)
        model = ch02.NerModel(encoder, "gp", len(train.types), c.head_size, train_encoder=True).to(dev)
        log = ch02.train_ner(model, train.input_ids[i_tr].to(dev), train.mask[i_tr].to(dev),
                             [train.spans[i] for i in i_tr.tolist()], c, seed=seed, desc=f"probe lr {lr:g}")
        f1 = entity_prf(ch02.evaluate_ner(model, test.input_ids[i_te].to(dev), test.mask[i_te].to(dev)), gold).f1
        rows.append({"lr": lr, "steps": steps, "test_sentences": n_test, "f1": f1,
                     "loss_first_20": sum(log.losses[:20]) / 20, "loss_last_20": sum(log.losses[-20:]) / 20})
        print(f"probe lr {lr:g}: F1 {f1:.3f}", file=sys.stderr, flush=True)
    return rows

def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the full config's epochs")
    parser.add_argument("--heads", nargs="+", default=None, choices=ch02.HEADS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=RECORD, help=f"record name (default {RECORD!r})")
    parser.add_argument("--limit", type=int, default=None, help="first N sentences of each split (a dry run)")
    parser.add_argument("--probe-steps", type=int, default=400)
    args = parser.parse_args()

    cfg = ch02.CONFIGS["full"]
    config_epochs = cfg.epochs
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    heads = tuple(args.heads or cfg.heads)
    device = get_device()
    bert, tok = load_zh_char_bert(device=device)
    train = ch02.prepare_ner(load_msra("train")[:args.limit], tok, cfg.max_len, ENTITY_TYPES)
    test = ch02.prepare_ner(load_msra("test")[:args.limit], tok, cfg.max_len, ENTITY_TYPES)
    gold = [set(s) for s in test.spans]
    record = {
        "config": {**dataclasses.asdict(cfg), "seed": args.seed},
        "config_epochs": config_epochs,
        "data": {"train_sentences": len(train.spans), "train_entities": sum(map(len, train.spans)),
                 "test_sentences": len(test.spans), "test_entities": sum(map(len, gold)),
                 "types": list(ENTITY_TYPES)},
        "selection": "last epoch (no model selection on the test set)",
        "lr_probe": lr_probe(bert.encoder, train, test, cfg, args.seed, args.probe_steps,
                             min(600, len(test.spans))),
        "limit": args.limit,
        "runs": {},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
    }
    f_tr, f_te = train.input_ids.to(device), test.input_ids.to(device)  # fine-tuning: the features are the ids
    for head in heads:
        r = ch02.fit_head(bert.encoder, head, train, test, f_tr, f_te, cfg, seed=args.seed)
        record["runs"][head] = {
            "f1_by_epoch": r.f1_by_epoch, "loss_every": LOSS_EVERY,
            "loss": [round(float(x.mean()), 5) for x in torch.tensor(r.losses).split(LOSS_EVERY)],
            "seconds": r.seconds, "params_head": r.params,
            "prf": _prf(r.prf),
            "per_type": {ENTITY_TYPES[t]: _prf(p) for t, p in sorted(r.per_type.items())},
        }
        record["complete"] = set(record["runs"]) == set(heads)
        record["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        path = write_record(args.name, record)
        print(f"{head}: F1 {r.prf.f1:.4f} by epoch {[round(f, 4) for f in r.f1_by_epoch]}, "
              f"{r.seconds:.0f} s; wrote {path}", file=sys.stderr, flush=True)
    return record


if __name__ == "__main__":
    main()
