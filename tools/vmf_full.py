"""Run chapter 04's ``full`` experiment (Gaussian VAE vs vMF-VAE on Fashion-MNIST) and record it.

The chapter's ``smoke`` profile trains on the 8x8 digits, where the Gaussian VAE's KL does
not collapse. This script runs the ``full`` configuration
(``kexue.experiments.ch04_vmf.CONFIGS["full"]``: 784 binarised pixels, a MADE decoder with
two hidden layers of 1,024) through the chapter's own ``run``, on whatever device
``kexue.utils.get_device()`` picks. It writes, as the record ``vmf_full``
(``kexue/results/vmf_full.json``), the per-epoch one-draw reconstruction term on the test set
(the curve key stays ``nll`` for compatibility), KL and active units of both models, plus
``run``'s scalar metrics (Monte Carlo KL, importance-weighted NLL bound, mutual information,
shuffled codes). The chapter
displays that record; it never trains at this scale itself.

    apt-get install dataset-fashion-mnist      # the data (root)
    .venv/bin/python tools/vmf_full.py          # about 25 minutes on 2 CPU cores
    .venv/bin/python tools/vmf_full.py --epochs 5 --name vmf_full_try   # a quicker look
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kexue.experiments.ch04_vmf import CONFIGS, LATENTS, load_data, run  # noqa: E402
from kexue.experiments.records import write_record  # noqa: E402
from kexue.utils import get_device, git_commit  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the full config's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="vmf_full", help="record name (default: vmf_full)")
    args = parser.parse_args()

    cfg = CONFIGS["full"]
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    device = get_device()
    data = load_data(cfg)
    result = run(cfg, seed=args.seed, data=data, device=device)
    runs = result.artifacts["runs"]
    for latent in LATENTS:
        r = runs[latent]
        print(f"{latent}: reconstruction {r['nll'][-1]:.2f}, KL {r['kl'][-1]:.3f}, active units {r['au'][-1]}, "
              f"{r['seconds']:.0f} s", file=sys.stderr)

    record = {
        "config": {**dataclasses.asdict(cfg), "seed": args.seed},
        "data": {"train_images": len(data.x_train), "test_images": len(data.x_test),
                 "pixels": data.x_train.shape[1]},
        "kl_constant_vmf": result.metrics["vmf_kl_constant"],
        "metrics": dict(result.metrics),
        "runs": runs,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"wrote {write_record(args.name, record)}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
