"""One config pattern for every experiment.

Each experiment declares one frozen dataclass and a :class:`Profiles` table
with exactly three instances, ``smoke``, ``book`` and ``full``::

    @dataclass(frozen=True)
    class ViTConfig:
        epochs: int = 8
        ...

    CONFIGS = Profiles(smoke=ViTConfig(), book=ViTConfig(epochs=30), full=ViTConfig(...))
    cfg = CONFIGS.get()            # the instance for KEXUE_PROFILE
    cfg = CONFIGS.get("book")      # or a named one

Configs are frozen, so a notebook that wants a variant writes
``dataclasses.replace(cfg, epochs=2)``; assigning to a field raises, and the
table itself cannot be edited, so no notebook can change a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from kexue.utils import PROFILES, profile

__all__ = ["Profiles", "apply_overrides", "config_dict", "config_hash"]

C = TypeVar("C")


class Profiles(Mapping[str, C], Generic[C]):
    """The ``smoke`` / ``book`` / ``full`` instances of one frozen config dataclass."""

    __slots__ = ("_table",)

    def __init__(self, *, smoke: C, book: C, full: C) -> None:
        table = {"smoke": smoke, "book": book, "full": full}
        kinds = {type(c) for c in table.values()}
        if len(kinds) != 1:
            raise TypeError(f"smoke, book and full must be instances of one class, got {sorted(k.__name__ for k in kinds)}")
        cls = kinds.pop()
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise TypeError(f"{cls.__name__} must be a frozen dataclass (@dataclass(frozen=True))")
        object.__setattr__(self, "_table", table)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Profiles is read-only; use dataclasses.replace(cfg, ...) for a variant")

    def __getitem__(self, name: str) -> C:
        if name not in self._table:
            raise ValueError(f"profile must be one of {PROFILES}, got {name!r}")
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def get(self, name: str | None = None) -> C:  # type: ignore[override]
        """The config of profile ``name`` (default: ``KEXUE_PROFILE``, see :func:`kexue.utils.profile`)."""
        return self[profile() if name is None else name]

    def __repr__(self) -> str:
        cls = type(self._table["smoke"]).__name__
        return f"Profiles[{cls}](smoke, book, full)"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-ready data (tuples become lists)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"cfg must be a dataclass instance, got {type(cfg).__name__}")
    return {"class": type(cfg).__name__, **_plain(cfg)}


def config_hash(cfg: Any) -> str:
    """The first 16 hex digits of the SHA-256 of :func:`config_dict`, keys sorted."""
    text = json.dumps(config_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def apply_overrides(cfg: C, overrides: Mapping[str, Any]) -> C:
    """``dataclasses.replace(cfg, **overrides)``, with list values made tuples and unknown fields named."""
    names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{type(cfg).__name__} has no field(s) {unknown}; it has {sorted(names)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(cfg, **fixed)  # type: ignore[type-var]
