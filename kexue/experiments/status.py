"""What the recorded evidence is and whether it is current.

:func:`stale_records` compares every run record under
:data:`~kexue.experiments.records.RECORDS_DIR` with the config its chapter
declares today (``python -m kexue.experiments stale`` prints them);
:func:`record_rows` is the table of the book's status page.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kexue.experiments import CHAPTERS, EXTRA_EXPERIMENTS
from kexue.experiments.config import apply_overrides, config_hash
from kexue.experiments import records
from kexue.experiments.records import RUN_FORMAT, load_record

__all__ = [
    "current_hash", "is_stale", "run_record_names", "stale_records", "record_rows", "other_rows",
]

_MODULES = {
    name: importlib.import_module(f"kexue.experiments.{name}") for name in [*CHAPTERS.values(), *EXTRA_EXPERIMENTS]
}


def current_hash(chapter: str, profile: str, overrides: Mapping[str, Any] | None = None) -> str:
    """The hash of chapter module ``chapter``'s current ``profile`` config, with ``overrides`` applied."""
    if chapter not in _MODULES:
        raise ValueError(f"chapter must be one of {sorted(_MODULES)}, got {chapter!r}")
    return config_hash(apply_overrides(_MODULES[chapter].CONFIGS[profile], overrides or {}))


def is_stale(record: Mapping[str, Any]) -> bool:
    """True if a run record's config hash is not its chapter's current one (same profile and overrides)."""
    return record["config_hash"] != current_hash(record["chapter"], record["profile"], record.get("overrides"))


def run_record_names() -> list[str]:
    """The names of every run record (format ``kexue-run/1``), sorted."""
    names = []
    for path in sorted(Path(records.RECORDS_DIR).rglob("*.json")):
        name = path.relative_to(records.RECORDS_DIR).with_suffix("").as_posix()
        if load_record(name).get("format") == RUN_FORMAT:
            names.append(name)
    return names


def stale_records() -> list[dict[str, str]]:
    """One row per run record whose config differs from the current one."""
    rows = []
    for name in run_record_names():
        rec = load_record(name)
        if is_stale(rec):
            rows.append({"name": name, "profile": rec["profile"], "recorded": rec["config_hash"],
                         "current": current_hash(rec["chapter"], rec["profile"], rec.get("overrides"))})
    return rows


def record_rows() -> list[dict[str, Any]]:
    """Date, profile, seeds, wall time and staleness of every run record."""
    rows = []
    for name in run_record_names():
        rec = load_record(name)
        rows.append({
            "record": name,
            "chapter": EXTRA_EXPERIMENTS.get(rec["chapter"], rec["chapter"][2:4]),
            "profile": rec["profile"]
            + "".join(f", {k}={v}" for k, v in (rec.get("overrides") or {}).items())
            + (f" (capped at {rec['max_steps']} steps)" if rec.get("max_steps") else ""),
            "seeds": len(rec["seeds"]),
            "wall time (min)": round(rec["wall_seconds"] / 60, 1),
            "date": rec["date"][:10],
            "device": f"{rec['device']}, {rec['threads']} thread(s)",
            "current": "yes" if not is_stale(rec) else "stale: config changed",
        })
    return rows


def _date_of(rec: Mapping[str, Any]) -> str:
    for key in ("date",):
        if isinstance(rec.get(key), str):
            return rec[key][:10]
    meta = rec.get("meta")
    if isinstance(meta, Mapping) and isinstance(meta.get("date"), str):
        return meta["date"][:10]
    return "not recorded"


def _threads_of(rec: Mapping[str, Any]) -> str:
    for source in (rec, rec.get("meta") or {}, rec.get("environment") or {}, rec.get("env_start") or {}):
        if isinstance(source, Mapping) and isinstance(source.get("threads"), int):
            return str(source["threads"])
    return "not recorded"


def other_rows() -> list[dict[str, Any]]:
    """Every record that is not a run record: benchmarks (``benchmarks/*``) and one-run records."""
    rows = []
    for path in sorted(Path(records.RECORDS_DIR).rglob("*.json")):
        name = path.relative_to(records.RECORDS_DIR).with_suffix("").as_posix()
        rec = load_record(name)
        if rec.get("format") == RUN_FORMAT:
            continue
        rows.append({
            "record": name,
            "kind": "benchmark" if name.startswith("benchmarks/") else "one recorded run",
            "date": _date_of(rec),
            "threads": _threads_of(rec),
            "commit": str(rec.get("git_commit") or "not recorded")[:7],
        })
    return rows
