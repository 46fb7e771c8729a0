"""Where recorded results live, and the format of a recorded run.

Every JSON the book displays sits under :data:`RECORDS_DIR` (inside the
installed package, so a notebook downloaded and run elsewhere still finds
them): chapter records by name (``ner_full``), benchmark records under
``benchmarks/`` (``benchmarks/vmf``). :func:`record_path` is the one way to
locate them and :func:`load_record` the one way to read them.

:func:`run_record` builds the record that ``python -m kexue.experiments``
writes: the config and its hash, the seeds, each seed's metrics, their mean,
standard deviation and 95% Student-t interval, wall time, hardware, torch
version, git commit and data fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from kexue.experiments.config import config_dict, config_hash
from kexue.utils import get_device, git_commit

__all__ = [
    "RunResult",
    "RECORDS_DIR",
    "record_path",
    "load_record",
    "write_record",
    "summarize",
    "fingerprint",
    "run_record",
]

@dataclass
class RunResult:
    """What an experiment's ``run(cfg, seed)`` returns.

    ``metrics`` are the scalars a record keeps per seed (and summarises over
    seeds); ``artifacts`` are everything else the chapter shows (curves,
    tables, trained models); ``data`` fingerprints each dataset split used
    (see :func:`fingerprint`).
    """

    metrics: dict[str, float]
    artifacts: dict[str, Any] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)


RECORDS_DIR = Path(__file__).resolve().parent.parent / "results"


def record_path(name: str) -> Path:
    """The path of record ``name`` (``"ner_full"``, ``"benchmarks/vmf"``), with ``.json`` added."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name.split("/"):
        raise ValueError(f"name must be a relative record name such as 'ner_full', got {name!r}")
    return RECORDS_DIR / f"{name.removesuffix('.json')}.json"


def load_record(name: str) -> dict[str, Any]:
    """Read record ``name``; ``FileNotFoundError`` names the record and the command that writes it."""
    path = record_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"record {name!r} is missing ({path}); it is written by the recorder that the chapter names "
            "(benchmarks/*.py, tools/*.py or `python -m kexue.experiments`)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def write_record(name: str, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as record ``name`` (atomically: a cut-off write leaves the old file)."""
    path = record_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and the 95% Student-t interval of the mean.

    With one value the deviation and interval are ``None``: one seed gives no
    estimate of its own spread.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("values must not be empty")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95": None, "interval": "t"}
    sd = statistics.stdev(xs)
    half = float(stats.t.ppf(0.975, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return {"n": len(xs), "mean": mean, "std": sd, "ci95": [mean - half, mean + half], "interval": "t"}


def fingerprint(items: Sequence[Any]) -> dict[str, Any]:
    """Size and SHA-256 (first 16 hex digits) of a data split, hashed through ``repr`` of each item."""
    h = hashlib.sha256()
    for item in items:
        h.update(repr(item).encode("utf-8"))
        h.update(b"\x00")
    return {"size": len(items), "sha256": h.hexdigest()[:16]}


def run_record(
    chapter: str,
    profile: str,
    cfg: Any,
    seeds: Sequence[int],
    per_seed: Sequence[Mapping[str, float]],
    *,
    seconds: float,
    data: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The record of one recorded run: ``per_seed[i]`` holds the scalar metrics of ``seeds[i]``."""
    if len(seeds) != len(per_seed) or not seeds:
        raise ValueError(f"need one metrics dict per seed, got {len(seeds)} seeds and {len(per_seed)} dicts")
    keys = sorted(set().union(*(m.keys() for m in per_seed)))
    summary = {
        k: summarize([m[k] for m in per_seed if k in m and m[k] is not None and math.isfinite(m[k])])
        for k in keys
        if any(k in m and m[k] is not None and math.isfinite(m[k]) for m in per_seed)
    }
    return {
        "format": "kexue-run/1",
        "chapter": chapter,
        "profile": profile,
        "config": config_dict(cfg),
        "config_hash": config_hash(cfg),
        "seeds": list(seeds),
        "per_seed": [dict(m) for m in per_seed],
        "summary": summary,
        "wall_seconds": seconds,
        "device": str(get_device()),
        "device_name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {k: dict(v) for k, v in (data or {}).items()},
    }
