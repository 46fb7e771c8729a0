"""Benchmark for chapter 04: vMF sampling and log_prob, kexue vs SciPy vs power_spherical.

Run: ``.venv/bin/python benchmarks/vmf.py`` (about 1-2 minutes on 2 CPU cores).
Writes the record ``benchmarks/vmf`` (``kexue/results/benchmarks/vmf.json``). power_spherical is a *different*
distribution (density ~ (1 + mu.z)^kappa); its times are context only.
"""

from __future__ import annotations

import datetime as dt
import platform
import time

import numpy as np
import torch
from scipy import stats

from kexue.experiments.records import write_record
from kexue.vmf import VonMisesFisher

try:
    from power_spherical import PowerSpherical
except ImportError:  # optional peer
    PowerSpherical = None

DIMS = [3, 16, 128, 1024]
KAPPAS = [1.0, 20.0, 1000.0]
N = 100_000
N_LARGE_D = 5_000  # d = 1024: scipy needs ~1.5 ms per draw here (QR rotation); keeps the run short


def best_of(fn, repeat: int = 2) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for d in DIMS:
        n = N if d < 1024 else N_LARGE_D
        mu = np.zeros(d)
        mu[0] = 1.0
        for kappa in KAPPAS:
            mu32 = torch.tensor(mu, dtype=torch.float32)
            ours = VonMisesFisher(mu32, torch.tensor(kappa))
            ours64 = VonMisesFisher(torch.tensor(mu), torch.tensor(kappa, dtype=torch.float64))
            ref = stats.vonmises_fisher(mu, kappa)
            row = {"d": d, "kappa": kappa, "n": n}
            row["ours_sample_ms"] = best_of(lambda: ours.sample((n,)))
            row["ours_sample_f64_ms"] = best_of(lambda: ours64.sample((n,)))
            row["scipy_sample_ms"] = best_of(lambda: ref.rvs(n, random_state=0), repeat=1)
            x = ref.rvs(10_000, random_state=1)
            xt = torch.tensor(x)
            mu64, k64 = torch.tensor(mu), torch.tensor(kappa, dtype=torch.float64)
            # a fresh distribution each call, so the cached normaliser is not reused
            row["ours_log_prob_ms"] = best_of(lambda: VonMisesFisher(mu64, k64).log_prob(xt), repeat=3)
            row["scipy_log_prob_ms"] = best_of(lambda: ref.logpdf(x), repeat=3)
            if PowerSpherical is not None:
                ps = PowerSpherical(mu32, torch.tensor(kappa))
                row["power_spherical_sample_ms"] = best_of(lambda: ps.rsample((n,)))
                row["power_spherical_log_prob_ms"] = best_of(lambda: ps.log_prob(xt.float()), repeat=3)
            row["sample_speedup_vs_scipy"] = row["scipy_sample_ms"] / row["ours_sample_ms"]
            row["sample_f64_speedup_vs_scipy"] = row["scipy_sample_ms"] / row["ours_sample_f64_ms"]
            row["log_prob_speedup_vs_scipy"] = row["scipy_log_prob_ms"] / row["ours_log_prob_ms"]
            if PowerSpherical is not None:
                row["sample_ratio_power_spherical_over_ours"] = row["power_spherical_sample_ms"] / row["ours_sample_ms"]
            rows.append(row)
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "n": N,
        "note": "ours_sample_ms: float32 loc; ours_sample_f64_ms: float64. log_prob over 10,000 points in float64, "
        "including building the distribution (normaliser not cached). n is 5,000 at d = 1024. "
        "power_spherical is a different distribution (same kappa value, not matched). Machine shared with other jobs.",
        "power_spherical": None if PowerSpherical is None else "power-spherical==0.8.1",
        "rows": rows,
    }
    print("wrote", write_record("benchmarks/vmf", out))


if __name__ == "__main__":
    main()
