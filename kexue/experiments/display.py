"""How the chapters show results: tables, recorded runs and stale-record warnings.

:func:`table` lays out rows of results as a Markdown table (the chapters show
tables this way, never as printed text); :func:`record_summary` turns a run
record into a Markdown table (mean, 95% interval, each seed's value) with a
line saying what the record is;
:func:`stale_warning` returns a visible warning when a record was made with
another config than the chapter's current one (``None`` otherwise, so a cell
that displays it shows nothing).
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kexue.experiments.records import RUN_FORMAT, load_record
from kexue.experiments.status import current_hash, is_stale

__all__ = ["Markdown", "Html", "table", "record_caption", "record_summary", "show_record", "stale_warning"]


class Markdown:
    """Text Jupyter (and the book) renders as Markdown."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


class Html:
    """Markup Jupyter (and the book) renders as HTML."""

    def __init__(self, markup: str) -> None:
        self.markup = markup

    def _repr_html_(self) -> str:
        return self.markup

    def __str__(self) -> str:
        return self.markup


def _cell(value: Any, digits: int, fmt: str | None) -> str:
    """One table cell: ``fmt`` if given, else ints as is, reals with ``digits`` decimals.

    Reals below ``10**-digits`` or from a million up are written in scientific
    notation (``digits`` significant digits) so that no nonzero value shows as 0.
    """
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # a numpy or torch scalar
        value = value.item()
    if fmt is not None and value is not None:
        text = fmt.format(value)
    elif value is None:
        text = "—"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, numbers.Integral):
        text = str(value)
    elif isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x) or x == 0 or 10.0 ** -digits <= abs(x) < 1e6:
            text = f"{x:.{digits}f}"
        else:
            text = f"{x:.{max(digits - 1, 0)}e}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(
    rows: Iterable[Mapping[str, Any] | Sequence[Any]],
    columns: Sequence[str] | None = None,
    *,
    digits: int = 3,
    formats: Mapping[str, str] | None = None,
    caption: str | None = None,
) -> Markdown:
    """``rows`` as a Markdown table, for ``display`` in a chapter.

    Rows are mappings (their keys, in first-row order, are the columns unless
    ``columns`` picks them) or sequences (``columns`` then names them; pass the
    items of a dict with two names to show it as a table). ``formats`` maps a
    column to a format string (``"{:.1e}"``); other reals get ``digits`` decimals,
    ``None`` shows as a dash. ``caption`` is a line of Markdown under the table.
    No rows give the text *none*.
    """
    rows = list(rows)
    if not isinstance(digits, int) or isinstance(digits, bool) or digits < 0:
        raise ValueError(f"digits must be a non-negative int, got {digits!r}")
    if not rows:
        return Markdown("_none_" if caption is None else f"_none_\n\n{caption}")
    if isinstance(rows[0], Mapping):
        if not all(isinstance(r, Mapping) for r in rows):
            raise TypeError("rows must be all mappings or all sequences")
        columns = list(columns) if columns is not None else list(rows[0])
        missing = sorted({c for r in rows for c in columns if c not in r})
        if missing:
            raise ValueError(f"rows lack column(s) {missing}")
        cells = [[r[c] for c in columns] for r in rows]
    else:
        if columns is None:
            raise ValueError("columns must name the columns when rows are sequences")
        columns = list(columns)
        cells = [list(r) for r in rows]
        bad = [i for i, r in enumerate(cells) if len(r) != len(columns)]
        if bad:
            raise ValueError(f"row(s) {bad} do not have {len(columns)} values, one per column in {columns}")
    formats = dict(formats or {})
    unknown = sorted(set(formats) - set(columns))
    if unknown:
        raise ValueError(f"formats names column(s) {unknown} that are not among {columns}")
    head = [_cell(c, digits, None) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    for row in cells:
        lines.append("| " + " | ".join(_cell(v, digits, formats.get(c)) for c, v in zip(columns, row)) + " |")
    text = "\n".join(lines)
    return Markdown(text if caption is None else f"{text}\n\n{caption}")


def _run(name: str) -> dict[str, Any]:
    rec = load_record(name)
    if rec.get("format") != RUN_FORMAT:
        raise ValueError(f"{name!r} is not a run record ({RUN_FORMAT})")
    return rec


def record_caption(name: str) -> str:
    """One line: profile, seeds, wall time, date, commit and threads of record ``name``."""
    rec = _run(name)
    cap = f", every training run capped at {rec['max_steps']} steps" if rec.get("max_steps") else ""
    commit = (rec.get("git_commit") or "unknown")[:7]
    return (
        f"Record `{name}`: `{rec['profile']}` profile{cap}, seeds {', '.join(map(str, rec['seeds']))}, "
        f"{rec['wall_seconds'] / 60:.0f} min of wall time summed over the seeds, on {rec['device']} "
        f"({rec['threads']} thread(s)), "
        f"{rec['date'][:10]}, commit {commit}, config {rec['config_hash']}."
    )


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def record_summary(
    name: str,
    rows: Sequence[tuple[str, str]] | None = None,
    *,
    scale: float = 1.0,
    digits: int = 3,
) -> Markdown:
    """A Markdown table of record ``name``: one row per ``(label, metric)``.

    Columns: mean, 95% Student-t interval of the mean, and each seed's value, all
    multiplied by ``scale`` (100 for percentages). ``rows`` defaults to every
    summarised metric, labelled by its key.
    """
    rec = _run(name)
    if rows is None:
        rows = [(k, k) for k in rec["summary"]]
    out = []
    for label, metric in rows:
        if metric not in rec["summary"]:
            raise KeyError(f"record {name!r} has no metric {metric!r}; it has {sorted(rec['summary'])}")
        summ = rec["summary"][metric]
        ci = summ["ci95"]
        interval = None if ci is None else f"[{_num(scale * ci[0], digits)}, {_num(scale * ci[1], digits)}]"
        per = [m.get(metric) for m in rec["per_seed"]]
        out.append([label, _num(scale * summ["mean"], digits), interval,
                    *(None if v is None else _num(scale * v, digits) for v in per)])
    return table(out, ["", "mean", "95% interval", *(f"seed {s}" for s in rec["seeds"])],
                 caption=record_caption(name))


def stale_warning(*names: str) -> Html | None:
    """A warning naming every run record among ``names`` whose config is not the current one."""
    stale = []
    for name in names:
        rec = _run(name)
        if is_stale(rec):
            stale.append(
                f"<code>{html.escape(name)}</code> was recorded with config {rec['config_hash']}, "
                f"but the chapter's <code>{rec['profile']}</code> config is now "
                f"{current_hash(rec['chapter'], rec['profile'], rec.get('overrides'))}"
            )
    if not stale:
        return None
    items = "".join(f"<li>{s}</li>" for s in stale)
    return Html(
        '<div class="admonition warning"><p class="admonition-title">Stale record</p>'
        f"<p>These records no longer match the code that would regenerate them:</p><ul>{items}</ul>"
        "<p><code>python -m kexue.experiments stale</code> lists every stale record.</p></div>"
    )


def show_record(
    name: str,
    rows: Sequence[tuple[str, str]] | None = None,
    *,
    scale: float = 1.0,
    digits: int = 3,
) -> Markdown:
    """:func:`record_summary` of ``name``, preceded by its stale warning (as HTML) when it has one.

    A missing record raises ``FileNotFoundError`` (from :func:`load_record`), so a
    chapter that shows one fails to build rather than quietly leaving it out.
    """
    table = record_summary(name, rows, scale=scale, digits=digits)
    warning = stale_warning(name)
    return table if warning is None else Markdown(f"{warning.markup}\n\n{table.text}")
