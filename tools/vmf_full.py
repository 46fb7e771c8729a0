"""Run chapter 04's ``full`` experiment (Gaussian VAE vs vMF-VAE on Fashion-MNIST) and record it.

The chapter's ``smoke`` profile trains on the 8x8 digits, where the Gaussian VAE's KL does
not collapse. This script runs the ``full`` configuration (``kexue.vmf.configs()["full"]``:
784 binarised pixels, a MADE decoder with two hidden layers of 1,024) on whatever device
``kexue.utils.get_device()`` picks, and writes the per-epoch test NLL, KL and active units
of both models to ``book/results/vmf_full.json``. The chapter displays that file; it never
trains at this scale itself.

    apt-get install dataset-fashion-mnist      # the data (root)
    .venv/bin/python tools/vmf_full.py          # about 25 minutes on 2 CPU cores
    .venv/bin/python tools/vmf_full.py --epochs 5 --out /tmp/vmf_full.json   # a quicker look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kexue import vmf  # noqa: E402
from kexue.data import load_fashion_mnist  # noqa: E402
from kexue.utils import get_device, git_commit, seed_everything  # noqa: E402

OUT = ROOT / "book" / "results" / "vmf_full.json"


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the full config's epochs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    cfg = vmf.configs()["full"]
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    device = get_device()
    xtr, _ = load_fashion_mnist("train")
    xte, _ = load_fashion_mnist("test")
    x_tr = (xtr.reshape(len(xtr), -1) > cfg.threshold).float().to(device)
    x_te = (xte.reshape(len(xte), -1) > cfg.threshold).float().to(device)

    runs = {}
    for latent in ("gauss", "vmf"):
        seed_everything(cfg.seed)
        model = vmf.VAE(x_tr.shape[1], dataclasses.replace(cfg, latent=latent)).to(device)
        t0 = time.perf_counter()
        hist = vmf.train_vae(model, x_tr, x_te)
        runs[latent] = {"seconds": time.perf_counter() - t0, **hist}
        print(f"{latent}: NLL {hist['nll'][-1]:.2f}, KL {hist['kl'][-1]:.3f}, active units {hist['au'][-1]}, "
              f"{runs[latent]['seconds']:.0f} s", file=sys.stderr)

    record = {
        "config": dataclasses.asdict(cfg),
        "data": {"train_images": len(x_tr), "test_images": len(x_te), "pixels": x_tr.shape[1]},
        "kl_constant_vmf": vmf.vmf_kl_uniform(torch.tensor(cfg.kappa, dtype=torch.float64), cfg.dim).item(),
        "runs": runs,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
