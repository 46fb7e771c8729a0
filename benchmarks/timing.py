"""The one timing helper every benchmark uses.

:func:`compare` times several callables on the same inputs, the same way:

* each is warmed up first (``warmup`` calls, then an untimed calibration that
  picks how many calls make one sample last at least ``min_sample_s``, the
  same count for every callable in the comparison);
* the samples are interleaved: each of the ``repeats`` rounds times every
  callable once, in an order rotated from round to round, so drift in the
  machine's load falls on all of them alike;
* the report per callable is the median time per call and its spread (the
  interquartile range, min and max), never a best-of;
* the intra-op thread count is fixed for the whole comparison and recorded,
  with the machine's load average before and after.

Ratios are always ``median(other) / median(base)``: above 1 means ``base`` is
faster.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["compare", "environment", "ratio", "reuse_freed_memory"]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks (no mmap/trim below 1 GiB); False where unavailable.

    With glibc's defaults, large blocks go back to the kernel when freed and the
    threshold adapts to what was freed last, so one callable's timing can depend
    on what ran before it (the kernel zeroes fresh pages on every call). Call it
    once before timing; record its return value.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """Torch version, thread count, processor, core count and load average, for a record."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg": _load(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, med, q3


def compare(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 15,
    warmup: int = 2,
    min_sample_s: float = 0.02,
    threads: int | None = None,
    sync: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Time each callable in ``fns`` (no arguments; they close over shared inputs).

    Returns ``{"results": {name: {"median_s", "q1_s", "q3_s", "min_s", "max_s",
    "samples_s"}}, "calls_per_sample", "repeats", "env_before", "env_after"}``,
    all times per call in seconds.
    """
    if not fns:
        raise ValueError("fns must name at least one callable")
    if repeats < 3:
        raise ValueError(f"repeats must be >= 3 for a median and a spread, got {repeats}")
    sync = sync or _sync
    before_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        env_before = environment()
        names = list(fns)
        for name in names:
            for _ in range(warmup):
                fns[name]()
            sync()
        slowest = 0.0
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            sync()
            slowest = max(slowest, time.perf_counter() - t0)
        calls = max(1, int(min_sample_s / max(slowest, 1e-9)) + 1) if slowest < min_sample_s else 1
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                fn = fns[name]
                sync()
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                sync()
                samples[name].append((time.perf_counter() - t0) / calls)
        env_after = environment()
    finally:
        torch.set_num_threads(before_threads)
    results = {}
    for name, xs in samples.items():
        q1, med, q3 = _quantiles(xs)
        results[name] = {"median_s": med, "q1_s": q1, "q3_s": q3, "min_s": min(xs), "max_s": max(xs),
                         "samples_s": xs}
    return {"results": results, "calls_per_sample": calls, "repeats": repeats,
            "env_before": env_before, "env_after": env_after}


def ratio(report: Mapping[str, Any], other: str, base: str) -> float:
    """``median(other) / median(base)`` from a :func:`compare` report."""
    res = report["results"]
    return res[other]["median_s"] / res[base]["median_s"]
