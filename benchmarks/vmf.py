"""Benchmark for book chapter 04: vMF sampling and ``log_prob``, kexue vs SciPy (and power_spherical).

Every cell of the grid ``d in {3, 16, 128, 1024}`` x ``kappa in {1, 20, 1000}`` is timed with
:func:`timing.compare` (warm-up, interleaved rounds on the same inputs, median and
interquartile range, intra-op threads fixed and recorded, load average before and after):

* sampling ``n`` draws (``n = 10^5``; ``10^3`` at ``d = 1024``, where SciPy's rotation costs
  ~1.5 ms a draw): ours in float32 and float64, ``scipy.stats.vonmises_fisher(...).rvs``
  and ``power_spherical.PowerSpherical(...).rsample`` (a *different* distribution, density
  ``~ (1 + mu.z)^kappa``: context only), each on the same mean direction (a random unit
  vector, not ``e_1``) and the same ``kappa``, distributions built once outside the timing;
  plus ``torch.randn(n, d)``: the Gaussian coordinates our sampler needs, a floor for it;
* ``log_prob`` of the same 10,000 float64 points, **construction included on every side**
  (ours builds ``VonMisesFisher``, SciPy ``vonmises_fisher``, power_spherical its
  distribution, each call). SciPy's ``logpdf`` also checks that every point has unit norm;
  ours does not (as ``torch.distributions`` with validation off).

Ratios are ``median(other) / median(ours)`` (above 1: ours is faster) with the quartiles of
the per-round ratios as their spread. The whole grid runs at the machine's default thread
count and again at 1 thread. Writes the record ``benchmarks/vmf``
(``kexue/results/benchmarks/vmf.json``, read with ``kexue.experiments.records.load_record``).

Usage::

    .venv/bin/python benchmarks/vmf.py              # ~5 minutes on 2 idle cores
    .venv/bin/python benchmarks/vmf.py --quick      # 3 rounds, small n, no record written
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy import stats

from kexue.experiments.records import write_record
from kexue.vmf import VonMisesFisher

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling timing module
from timing import compare, environment, ratio  # noqa: E402

try:
    from power_spherical import PowerSpherical
except ImportError:  # optional peer
    PowerSpherical = None

RECORD = "benchmarks/vmf"
DIMS = [3, 16, 128, 1024]
KAPPAS = [1.0, 20.0, 1000.0]
N = 100_000
N_LARGE_D = 1_000  # d = 1024
POINTS = 10_000  # log_prob evaluation points


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _summary(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Median and quartiles in milliseconds per callable."""
    return {
        name: {"median_ms": r["median_s"] * 1e3, "q1_ms": r["q1_s"] * 1e3, "q3_ms": r["q3_s"] * 1e3}
        for name, r in report["results"].items()
    }


def _ratio(report: dict[str, Any], other: str, base: str) -> dict[str, float]:
    """``median(other) / median(base)`` and the quartiles of the per-round ratios."""
    res = report["results"]
    per_round = [a / b for a, b in zip(res[other]["samples_s"], res[base]["samples_s"])]
    q1, _, q3 = statistics.quantiles(per_round, n=4, method="inclusive")
    return {"median": ratio(report, other, base), "q1": q1, "q3": q3}


def _unit(d: int) -> np.ndarray:
    mu = np.random.default_rng(d).standard_normal(d)
    return mu / np.linalg.norm(mu)


def time_cell(d: int, kappa: float, n: int, threads: int, repeats: int) -> dict[str, Any]:
    """Sampling and log_prob comparisons at one (d, kappa) and thread count."""
    mu = _unit(d)
    mu32, mu64 = torch.tensor(mu, dtype=torch.float32), torch.tensor(mu)
    k32, k64 = torch.tensor(kappa, dtype=torch.float32), torch.tensor(kappa, dtype=torch.float64)
    ours32, ours64 = VonMisesFisher(mu32, k32), VonMisesFisher(mu64, k64)
    ref = stats.vonmises_fisher(mu, kappa)
    rng = np.random.default_rng(0)
    sample: dict[str, Callable[[], Any]] = {
        "ours": lambda: ours32.sample((n,)),
        "ours_f64": lambda: ours64.sample((n,)),
        "scipy": lambda: ref.rvs(n, random_state=rng),
        "randn_floor": lambda: torch.randn(n, d),
    }
    if PowerSpherical is not None:
        ps = PowerSpherical(mu32, k32)
        sample["power_spherical"] = lambda: ps.rsample((n,))
    rep_s = compare(sample, repeats=repeats, warmup=1, threads=threads)

    x = ref.rvs(POINTS, random_state=np.random.default_rng(1))
    xt = torch.tensor(x)
    log_prob: dict[str, Callable[[], Any]] = {
        "ours": lambda: VonMisesFisher(mu64, k64).log_prob(xt),
        "scipy": lambda: stats.vonmises_fisher(mu, kappa).logpdf(x),
    }
    if PowerSpherical is not None:
        log_prob["power_spherical"] = lambda: PowerSpherical(mu64, k64).log_prob(xt)
    rep_l = compare(log_prob, repeats=repeats, threads=threads)

    row: dict[str, Any] = {
        "threads": threads, "d": d, "kappa": kappa, "n": n, "points": POINTS,
        "sample": _summary(rep_s), "log_prob": _summary(rep_l),
        "sample_speedup_vs_scipy": _ratio(rep_s, "scipy", "ours"),
        "sample_f64_speedup_vs_scipy": _ratio(rep_s, "scipy", "ours_f64"),
        "sample_over_floor": _ratio(rep_s, "ours", "randn_floor"),
        "log_prob_speedup_vs_scipy": _ratio(rep_l, "scipy", "ours"),
        "load_avg": [rep_s["env_before"]["load_avg"], rep_l["env_after"]["load_avg"]],
    }
    if PowerSpherical is not None:
        row["power_spherical_sample_over_ours"] = _ratio(rep_s, "power_spherical", "ours")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds (at least 3)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, n / 10, no record written")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    scale = 10 if args.quick else 1
    default_threads = torch.get_num_threads()
    thread_settings = [default_threads] + ([1] if default_threads != 1 else [])
    torch.manual_seed(0)
    started = environment()
    rows = []
    for threads in thread_settings:
        for d in DIMS:
            n = (N if d < 1024 else N_LARGE_D) // scale
            for kappa in KAPPAS:
                row = time_cell(d, kappa, n, threads, repeats)
                rows.append(row)
                s, lp = row["sample_speedup_vs_scipy"], row["log_prob_speedup_vs_scipy"]
                print(f"threads={threads} d={d:4d} kappa={kappa:6g}  sample x scipy {s['median']:5.2f} "
                      f"[{s['q1']:.2f}, {s['q3']:.2f}]  log_prob x scipy {lp['median']:5.2f} "
                      f"[{lp['q1']:.2f}, {lp['q3']:.2f}]  load {row['load_avg']}", flush=True)
    out = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "scipy": _version("scipy"),
        "power_spherical": _version("power-spherical"),
        "env_start": started,
        "env_end": environment(),
        "default_threads": default_threads,
        "thread_settings": thread_settings,
        "repeats": repeats,
        "n": N, "n_d1024": N_LARGE_D, "points": POINTS,
        "note": "Times per call (ms): median and quartiles over interleaved rounds; ratios are "
        "median(other)/median(ours) with the quartiles of the per-round ratios. Sampling: float32 "
        "('ours', 'randn_floor', 'power_spherical') and float64 ('ours_f64'); distributions built "
        "once. log_prob: float64, construction included on every side; SciPy's logpdf also "
        "checks that every point has unit norm, ours does not (like torch.distributions with "
        "validation off). threads: torch's intra-op threads (SciPy's code here is single-threaded "
        "NumPy: einsum and its generator). power_spherical is a "
        "different distribution (same kappa value, not matched): context only. load_avg: "
        "1/5/15-minute load before the sampling and after the log_prob comparison.",
        "rows": rows,
    }
    if args.quick:
        print("quick run: no record written")
        return
    print("wrote", write_record(RECORD, out))


if __name__ == "__main__":
    main()
