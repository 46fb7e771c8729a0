"""Conversions between entity spans and per-character tag sequences.

A span is ``(type, start, end)`` with ``end`` inclusive and ``type`` an index
into a tuple of entity-type names. BIO tag ids put ``O`` at 0 and type ``t``
at ``2t + 1`` (``B-t``) and ``2t + 2`` (``I-t``), so :func:`bio_tag_names`
lists them in id order. BMES tags (``B-``, ``M-``, ``E-``, ``S-`` plus a type
name, or ``O``) are the MSRA corpus's own format.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["bio_tag_names", "spans_to_bio", "bio_to_spans", "decode_bmes"]

TypedSpan = tuple[int, int, int]  # (type, start, end inclusive)


def _names(name: str, types: Any) -> tuple[str, ...]:
    """``types`` as a tuple of type names; a bare string (a sequence of characters) is refused."""
    if isinstance(types, (str, bytes)) or not isinstance(types, Iterable):
        raise TypeError(f"{name} must be a sequence of type names such as ('PER', 'LOC'), got {types!r}")
    types = tuple(types)
    if not all(isinstance(t, str) for t in types):
        raise TypeError(f"{name} must hold strings, got {types!r}")
    return types


def _index(name: str, value: Any) -> int:
    """``value`` as a Python int (ints, numpy/torch integer scalars); bools, floats and strings refused."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be integers, got {value!r}")
    try:
        return operator.index(value)
    except TypeError as err:
        raise TypeError(f"{name} must be integers, got {value!r} ({type(value).__name__})") from err


def bio_tag_names(types: Sequence[str]) -> tuple[str, ...]:
    """``("O", "B-T0", "I-T0", "B-T1", ...)``: the tag names in id order."""
    types = _names("types", types)
    return ("O", *(f"{p}-{t}" for t in types for p in ("B", "I")))


def spans_to_bio(spans: Iterable[TypedSpan], length: int) -> list[int]:
    """BIO tag ids of a sentence of ``length`` characters from ``(type, start, end)`` spans.

    Spans are placed outermost first (by start, then longest); a span that
    overlaps one already placed is dropped, so of nested entities only the
    outermost survives: BIO cannot represent nesting. Spans that run past
    ``length`` are dropped too.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be a non-negative int, got {length!r}")
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Iterable):
        raise TypeError(f"spans must be an iterable of (type, start, end) triples, got {type(spans).__name__}")
    triples = []
    for span in spans:
        if isinstance(span, (str, bytes)) or not isinstance(span, Iterable) or len(span := tuple(span)) != 3:
            raise ValueError(f"spans must be (type, start, end) triples, got {span!r}")
        triples.append(tuple(_index("spans", v) for v in span))
    tags = [0] * length
    for t, i, j in sorted(triples, key=lambda s: (s[1], -s[2], s[0])):
        if t < 0 or i < 0 or j < i:
            raise ValueError(f"spans must be (type >= 0, start >= 0, end >= start), got {(t, i, j)}")
        if j >= length or any(tags[i : j + 1]):
            continue
        tags[i] = 2 * t + 1
        tags[i + 1 : j + 1] = [2 * t + 2] * (j - i)
    return tags


def bio_to_spans(tags: Iterable[int]) -> set[TypedSpan]:
    """``(type, start, end)`` spans from BIO tag ids; an ``I-t`` that continues no ``t`` opens a span.

    ``tags`` are non-negative integer ids (Python, numpy or 0-d torch integers,
    or a 1-d integer tensor); strings, floats and negative ids are refused.
    """
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise TypeError(f"tags must be an iterable of integer tag ids, got {type(tags).__name__}")
    ids = [_index("tags", t) for t in tags]
    if any(t < 0 for t in ids):
        raise ValueError(f"tags must be non-negative tag ids, got {min(ids)}")
    out: set[TypedSpan] = set()
    start: int | None = None
    cur: int | None = None
    for p, tag in enumerate([*ids, 0]):
        t = (tag - 1) // 2 if tag > 0 else None
        if tag > 0 and tag % 2 == 0 and cur == t:  # continuation
            continue
        if cur is not None:
            out.add((cur, start, p - 1))  # type: ignore[arg-type]
        start, cur = (p, t) if tag > 0 else (None, None)
    return out


def decode_bmes(tags: Iterable[str], types: Sequence[str]) -> tuple[tuple[int, int, str], ...]:
    """Spans ``(start, end inclusive, type name)`` from BMES tags (``B-PER``, ``O``, ...).

    ``B`` opens, ``M`` continues, ``E`` closes, ``S`` is a one-character
    entity. A sentence may start inside an entity (MSRA was split mid-name in a
    few places), so an ``M``/``E`` with no open entity of its type opens one,
    and an entity still open when a new one starts or the sentence ends is
    closed there. Every character of a returned span carries a tag of that
    span's type.
    """
    types = _names("types", types)
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise TypeError(f"tags must be a sequence of tag strings such as ['B-PER', 'E-PER', 'O'], got {tags!r}")
    spans: list[tuple[int, int, str]] = []
    start: int | None = None
    kind: str | None = None
    n = 0
    for i, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise TypeError(f"tags must be strings such as 'B-PER' or 'O', got {tag!r}")
        n = i + 1
        if tag == "O":
            if start is not None:
                spans.append((start, i - 1, kind))  # type: ignore[arg-type]
                start = kind = None
            continue
        prefix, _, typ = tag.partition("-")
        if prefix not in {"B", "M", "E", "S"} or typ not in types:
            raise ValueError(f"tags must be BMES tags over {tuple(types)} or 'O', got {tag!r}")
        continuing = start is not None and kind == typ and prefix in {"M", "E"}
        if not continuing:
            if start is not None:
                spans.append((start, i - 1, kind))  # type: ignore[arg-type]
            start, kind = i, typ
        if prefix in {"E", "S"}:
            spans.append((start, i, typ))
            start = kind = None
    if start is not None:
        spans.append((start, n - 1, kind))  # type: ignore[arg-type]
    return tuple(spans)
