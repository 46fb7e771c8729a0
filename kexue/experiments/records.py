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
    "add_seed",
    "validate_record",
    "RUN_FORMAT",
]

#: the format tag of a run record (``python -m kexue.experiments``)
RUN_FORMAT = "kexue-run/1"
_RUN_KEYS = {
    "format": str, "chapter": str, "profile": str, "config": dict, "config_hash": str, "seeds": list,
    "per_seed": list, "summary": dict, "wall_seconds": (int, float), "device": str, "threads": int,
    "torch": str, "git_commit": (str, type(None)), "date": str, "data": dict,
}

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
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"record {name!r} ({path}) is not valid JSON: {err}") from None
    if isinstance(record, dict) and record.get("format") == RUN_FORMAT:
        validate_record(record, name)
    return record


def validate_record(record: Mapping[str, Any], name: str = "record") -> None:
    """Check a run record's schema: every key present with its type, one metrics dict per seed.

    Raises ``ValueError`` naming the record and what is wrong.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{name}: a record must be a JSON object, got {type(record).__name__}")
    if record.get("format") != RUN_FORMAT:
        raise ValueError(f"{name}: format must be {RUN_FORMAT!r}, got {record.get('format')!r}")
    for key, kind in _RUN_KEYS.items():
        if key not in record:
            raise ValueError(f"{name}: missing key {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise ValueError(f"{name}: {key!r} must be {kind}, got {type(record[key]).__name__}")
    if not record["seeds"] or len(record["seeds"]) != len(record["per_seed"]):
        raise ValueError(f"{name}: needs one per_seed entry per seed, got {len(record['seeds'])} seeds "
                         f"and {len(record['per_seed'])} entries")
    if len(set(record["seeds"])) != len(record["seeds"]):
        raise ValueError(f"{name}: seeds repeat: {record['seeds']}")
    for key, summ in record["summary"].items():
        if not isinstance(summ, Mapping) or not {"n", "mean", "std", "ci95"} <= set(summ):
            raise ValueError(f"{name}: summary[{key!r}] must hold n, mean, std and ci95")


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
    max_steps: int | None = None,
    seed_seconds: Sequence[float] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of one recorded run: ``per_seed[i]`` holds the scalar metrics of ``seeds[i]``.

    ``max_steps`` marks a run whose training was capped
    (:func:`kexue.experiments.loop.step_cap`); ``overrides`` are the fields
    changed from the profile's config (``--set``); ``seed_seconds`` is each seed's
    wall time (default: ``seconds`` split evenly).
    """
    if len(seeds) != len(per_seed) or not seeds:
        raise ValueError(f"need one metrics dict per seed, got {len(seeds)} seeds and {len(per_seed)} dicts")
    if seed_seconds is None:
        seed_seconds = [seconds / len(seeds)] * len(seeds)
    return {
        "format": RUN_FORMAT,
        "chapter": chapter,
        "profile": profile,
        "config": config_dict(cfg),
        "config_hash": config_hash(cfg),
        "seeds": list(seeds),
        "max_steps": max_steps,
        "overrides": config_dict_values(overrides or {}),
        "per_seed": [dict(m) for m in per_seed],
        "summary": _summaries(per_seed),
        "wall_seconds": seconds,
        "seed_seconds": [float(t) for t in seed_seconds],
        "device": str(get_device()),
        "device_name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": {k: dict(v) for k, v in (data or {}).items()},
        "seed_data": [{k: dict(v) for k, v in (data or {}).items()} for _ in seeds],
    }


def config_dict_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Override values as JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}))


def _summaries(per_seed: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    keys = sorted(set().union(*(m.keys() for m in per_seed)))

    def ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return {k: summarize([m[k] for m in per_seed if ok(m.get(k))]) for k in keys if any(ok(m.get(k)) for m in per_seed)}


def add_seed(
    record: Mapping[str, Any],
    seed: int,
    metrics: Mapping[str, float],
    *,
    seconds: float,
    data: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A copy of ``record`` with one more seed's metrics, the summary recomputed.

    Wall time adds up; date, commit, threads and torch version become this
    chunk's. Data fingerprints are kept per seed (``seed_data``); ``data`` keeps
    the splits every seed saw identically, so a split drawn by the seed (a
    seeded train/test split) shows up as differing between seeds rather than
    being hidden. Seeds are kept in increasing order, with their metrics.
    """
    validate_record(record)
    if seed in record["seeds"]:
        raise ValueError(f"seed {seed} is already in the record")
    out = json.loads(json.dumps(record))
    out["seeds"].append(int(seed))
    out["per_seed"].append(dict(metrics))
    out["summary"] = _summaries(out["per_seed"])
    out["wall_seconds"] = float(record["wall_seconds"]) + float(seconds)
    out["seed_seconds"] = list(record.get("seed_seconds") or []) + [float(seconds)]
    seed_data = list(record.get("seed_data") or [dict(record["data"]) for _ in record["seeds"]])
    seed_data.append({k: dict(v) for k, v in (data or {}).items()})
    out["seed_data"] = seed_data
    out["data"] = {k: v for k, v in seed_data[0].items() if all(d.get(k) == v for d in seed_data)}
    # seeds recorded out of order (parallel processes) are kept in seed order
    order = sorted(range(len(out["seeds"])), key=lambda i: out["seeds"][i])
    per_seed_lists = ["seeds", "per_seed", "seed_data"]
    if len(out["seed_seconds"]) == len(out["seeds"]):
        per_seed_lists.append("seed_seconds")
    for key in per_seed_lists:
        out[key] = [out[key][i] for i in order]
    out.update(
        threads=torch.get_num_threads(), torch=torch.__version__, git_commit=git_commit(),
        date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return out
