"""The benchmarks' timing helper: interleaved, warmed-up medians with a spread (no timings asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from timing import compare, ratio  # noqa: E402


def test_compare_reports_every_callable_with_the_same_call_count():
    calls = {"a": 0, "b": 0}

    def a():
        calls["a"] += 1

    def b():
        calls["b"] += 1
        torch.ones(10).sum()

    rep = compare({"a": a, "b": b}, repeats=5, warmup=1, min_sample_s=0.001)
    assert set(rep["results"]) == {"a", "b"}
    n = rep["calls_per_sample"]
    assert calls["a"] == calls["b"] == 1 + 1 + 5 * n  # warm-up, calibration, samples
    for r in rep["results"].values():
        assert len(r["samples_s"]) == 5
        assert r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"] <= r["max_s"]
    assert rep["env_before"]["threads"] >= 1
    assert ratio(rep, "b", "a") > 0


def test_compare_interleaves_rounds():
    order = []
    compare({"x": lambda: order.append("x"), "y": lambda: order.append("y")}, repeats=4, warmup=0,
            min_sample_s=0.0)
    timed = order[2:]  # after one calibration call each
    assert timed[:2] == ["x", "y"] and timed[2:4] == ["y", "x"]


def test_compare_restores_threads_and_refuses_bad_arguments():
    before = torch.get_num_threads()
    compare({"x": lambda: None}, repeats=3, threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        compare({}, repeats=3)
    with pytest.raises(ValueError):
        compare({"x": lambda: None}, repeats=2)
