"""Claims as data: every claim the book tests, with a computed verdict.

Each chapter declares its claims in ``kexue.experiments.claims.chNN`` as a list
``CLAIMS`` of :class:`Claim`. A claim names its source (the article, a paper, or
ours), the scale it was tested at, its evidence (a record under
:data:`~kexue.experiments.records.RECORDS_DIR`, or a labelled cell of the
chapter) and a **criterion**, a small object that turns the evidence into an
:class:`Outcome`. Nobody types a verdict:

``reproduced``
    the criterion holds over the whole 95% interval (or, for an exact check, the
    check passes);
``refuted``
    it fails over the whole interval (or the check fails);
``inconclusive``
    the interval straddles the criterion's bound, or fewer than three seeds
    stand behind a comparison and the claim gives no reason why one run is
    enough;
``not tested at this scale``
    the book has no evidence at a scale where the claim applies (the claim says
    why), or its record is missing.

Criteria over records (:class:`Difference`, :class:`Within`, :class:`Bound`)
read per-seed metrics; seeds are paired in a :class:`Difference`, so an effect
is judged against the spread of its own paired differences. :class:`Exact`
re-runs a float64 check of a derivation (the chapter's asserting cell shows it
in full); :class:`FromRecord` wraps a function of a whole record (benchmark
records have their own layout).

:func:`table` renders one chapter's claims (an HTML table whose rows can be
linked to), :func:`glance` all of them.
"""

from __future__ import annotations

import html
import importlib
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scipy import stats

from kexue.experiments import CHAPTERS
from kexue.experiments.records import RUN_FORMAT, load_record, record_path
from kexue.experiments.status import is_stale

__all__ = [
    "VERDICTS",
    "Outcome",
    "Claim",
    "Criterion",
    "Difference",
    "Within",
    "Bound",
    "Exact",
    "FromRecord",
    "PerSeed",
    "NotTested",
    "interval",
    "chapter_claims",
    "all_claims",
    "evaluate",
    "table",
    "glance",
    "counts",
    "across_scales",
    "chapter_page",
]

Verdict = Literal["reproduced", "refuted", "inconclusive", "not tested at this scale"]
VERDICTS: tuple[Verdict, ...] = ("reproduced", "refuted", "inconclusive", "not tested at this scale")
MIN_SEEDS = 3  # fewer seeds give no verdict on a comparison unless the claim says why one run suffices

#: chapter key -> the notebook's page name (``book/<name>.md``)
PAGES: dict[str, str] = {
    "01": "01_simcse_chinese",
    "02": "02_globalpointer",
    "03": "03_rope_2d",
    "04": "04_vmf_vae",
    "05": "05_token_mixers",
    "06": "06_lossless_growth",
    "07": "07_contrastive_accumulation",
}


def chapter_page(chapter: str) -> str:
    """The page name of chapter ``chapter`` (``"02"`` -> ``"02_globalpointer"``)."""
    if chapter not in PAGES:
        raise ValueError(f"chapter must be one of {sorted(PAGES)}, got {chapter!r}")
    return PAGES[chapter]


@dataclass(frozen=True)
class Outcome:
    """A computed verdict and the numbers behind it, in words."""

    verdict: Verdict
    detail: str
    stale: bool = False  # the evidence's record was made with another config than today's

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def interval(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and 95% Student-t interval of the mean; the bounds are ``None`` for one value."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("values must not be empty")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"values must be finite, got {xs}")
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return mean, None, None
    half = float(stats.t.ppf(0.975, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def _fmt(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}" if digits >= 0 else f"{x:+.3g}"


def _describe(mean: float, lo: float | None, hi: float | None, n: int, unit: str, digits: int) -> str:
    if lo is None or hi is None:
        return f"{_fmt(mean, digits)}{unit} (one seed, no interval)"
    return f"{_fmt(mean, digits)}{unit} [{_fmt(lo, digits)}, {_fmt(hi, digits)}] over {n} seeds"


def _judge(lo: float | None, hi: float | None, mean: float, n: int, low: float | None, high: float | None,
           one_run: str | None) -> Verdict:
    """Reproduced if [lo, hi] lies inside [low, high], refuted if it lies outside, else inconclusive."""
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    if lo is None or hi is None or n < MIN_SEEDS:
        if not one_run:
            return "inconclusive"
        if lo is None or hi is None:  # one run, and the claim says why that is enough
            lo = hi = mean
    if low <= lo and hi <= high:
        return "reproduced"
    if hi < low or lo > high:
        return "refuted"
    return "inconclusive"


def _bounds(at_least: float | None, at_most: float | None) -> str:
    """``"≥ a and ≤ b"`` for the bounds that are given."""
    parts = [f"{op} {v:g}" for op, v in (("≥", at_least), ("≤", at_most)) if v is not None]
    return " and ".join(parts)


class Criterion:
    """Turns a claim's evidence into an :class:`Outcome`; ``text`` says the rule in words."""

    @property
    def text(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def evaluate(self, one_run: str | None = None) -> Outcome:  # pragma: no cover - interface
        raise NotImplementedError


def _per_seed(record: Mapping[str, Any], metric: str, name: str) -> list[float]:
    if record.get("format") != RUN_FORMAT:
        raise ValueError(f"{name} is not a run record ({RUN_FORMAT}); use FromRecord for other layouts")
    rows = [m.get(metric) for m in record["per_seed"]]
    if any(v is None for v in rows):
        raise KeyError(f"record {name!r} has no metric {metric!r} for every seed; it has {sorted(record['summary'])}")
    return [float(v) for v in rows]


def _missing(name: str) -> Outcome:
    return Outcome("not tested at this scale", f"record {name!r} is missing ({record_path(name).name})")


@dataclass(frozen=True)
class Difference(Criterion):
    """``scale * (a - b)`` per seed (seeds paired) must be at least ``at_least`` (and at most ``at_most``).

    Example: ``Difference("ch02_globalpointer_book", "gp_f1", "crf_f1", at_least=-0.5, scale=100,
    unit=" F1 points")``: GlobalPointer within half a point of the CRF or better.
    """

    record: str
    a: str
    b: str
    at_least: float | None = None
    at_most: float | None = None
    scale: float = 1.0
    unit: str = ""
    digits: int = 2

    def __post_init__(self) -> None:
        if self.at_least is None and self.at_most is None:
            raise ValueError("give at_least, at_most or both")

    @property
    def text(self) -> str:
        parts = _bounds(self.at_least, self.at_most)
        s = "" if self.scale == 1 else f"{self.scale:g} × "
        return f"{s}({self.a} − {self.b}) {parts}{self.unit}, over the 95% interval of paired seeds"

    def evaluate(self, one_run: str | None = None) -> Outcome:
        try:
            rec = load_record(self.record)
        except FileNotFoundError:
            return _missing(self.record)
        a, b = _per_seed(rec, self.a, self.record), _per_seed(rec, self.b, self.record)
        diffs = [self.scale * (x - y) for x, y in zip(a, b)]
        mean, lo, hi = interval(diffs)
        verdict = _judge(lo, hi, mean, len(diffs), self.at_least, self.at_most, one_run)
        detail = f"{self.a} − {self.b} = " + _describe(mean, lo, hi, len(diffs), self.unit, self.digits)
        return Outcome(verdict, detail, stale=_stale(rec))


@dataclass(frozen=True)
class Within(Criterion):
    """``|scale * (a - b)| <= tol`` over the whole interval: two things measure the same."""

    record: str
    a: str
    b: str
    tol: float
    scale: float = 1.0
    unit: str = ""
    digits: int = 2

    @property
    def text(self) -> str:
        s = "" if self.scale == 1 else f"{self.scale:g} × "
        return f"|{s}({self.a} − {self.b})| ≤ {self.tol:g}{self.unit}, over the 95% interval of paired seeds"

    def evaluate(self, one_run: str | None = None) -> Outcome:
        inner = Difference(self.record, self.a, self.b, at_least=-self.tol, at_most=self.tol, scale=self.scale,
                           unit=self.unit, digits=self.digits)
        return inner.evaluate(one_run)


@dataclass(frozen=True)
class Bound(Criterion):
    """``scale * metric`` must be at least ``at_least`` (and/or at most ``at_most``) over its interval."""

    record: str
    metric: str
    at_least: float | None = None
    at_most: float | None = None
    scale: float = 1.0
    unit: str = ""
    digits: int = 3

    def __post_init__(self) -> None:
        if self.at_least is None and self.at_most is None:
            raise ValueError("give at_least, at_most or both")

    @property
    def text(self) -> str:
        parts = _bounds(self.at_least, self.at_most)
        s = "" if self.scale == 1 else f"{self.scale:g} × "
        return f"{s}{self.metric} {parts}{self.unit}, over its 95% interval"

    def evaluate(self, one_run: str | None = None) -> Outcome:
        try:
            rec = load_record(self.record)
        except FileNotFoundError:
            return _missing(self.record)
        xs = [self.scale * v for v in _per_seed(rec, self.metric, self.record)]
        mean, lo, hi = interval(xs)
        verdict = _judge(lo, hi, mean, len(xs), self.at_least, self.at_most, one_run)
        detail = f"{self.metric} = " + _describe(mean, lo, hi, len(xs), self.unit, self.digits).lstrip("+")
        return Outcome(verdict, detail, stale=_stale(rec))


@dataclass(frozen=True)
class Exact(Criterion):
    """A float64 check of a derivation: ``check()`` returns ``(error, tolerance)``.

    Reproduced when ``error <= tolerance``, refuted otherwise. The chapter's
    asserting cell (the claim's evidence) shows the same check in full; this one
    is re-run wherever the verdict is computed.
    """

    check: Callable[[], tuple[float, float]]
    what: str = "max abs error"

    @property
    def text(self) -> str:
        return f"{self.what} ≤ tolerance (float64, recomputed at every build)"

    def evaluate(self, one_run: str | None = None) -> Outcome:
        err, tol = self.check()
        ok = bool(err <= tol)
        return Outcome("reproduced" if ok else "refuted", f"{err:.2g} against a tolerance of {tol:.2g}")


@dataclass(frozen=True)
class FromRecord(Criterion):
    """A criterion over a whole record: ``fn(record)`` returns ``(value, lo, hi, n)``.

    ``lo``/``hi`` may be ``None`` (one measurement); ``n`` is the number of
    independent repeats behind the interval. The verdict applies the same rule
    as :class:`Bound` to ``[lo, hi]`` against ``at_least``/``at_most``.
    Benchmark records (their own layout) are read this way.
    """

    record: str
    fn: Callable[[Mapping[str, Any]], tuple[float, float | None, float | None, int]]
    what: str
    at_least: float | None = None
    at_most: float | None = None
    unit: str = ""
    digits: int = 3

    @property
    def text(self) -> str:
        parts = _bounds(self.at_least, self.at_most)
        return f"{self.what} {parts}{self.unit}, over its interval"

    def evaluate(self, one_run: str | None = None) -> Outcome:
        try:
            rec = load_record(self.record)
        except FileNotFoundError:
            return _missing(self.record)
        value, lo, hi, n = self.fn(rec)
        verdict = _judge(lo, hi, value, n, self.at_least, self.at_most, one_run)
        if lo is None or hi is None:
            detail = f"{self.what} = {value:.{self.digits}g}{self.unit} (one measurement)"
        else:
            detail = (f"{self.what} = {value:.{self.digits}g}{self.unit} "
                      f"[{lo:.{self.digits}g}, {hi:.{self.digits}g}], n = {n}")
        stale = _stale(rec) if rec.get("format") == RUN_FORMAT else False
        return Outcome(verdict, detail, stale=stale)


@dataclass(frozen=True)
class PerSeed(Criterion):
    """A per-seed quantity computed from one or more run records, judged over its 95% interval.

    ``fn(records)`` gets the loaded records (in the order of ``records``) and
    returns one value per seed; the records must hold the same seeds (they are
    paired by seed). Example: the gap between SimCSE and whitening at the
    largest pretraining budget minus the gap at the smallest.
    """

    records: tuple[str, ...]
    fn: Callable[[Sequence[Mapping[str, Any]]], Sequence[float]]
    what: str
    at_least: float | None = None
    at_most: float | None = None
    unit: str = ""
    digits: int = 2

    def __post_init__(self) -> None:
        if not self.records:
            raise ValueError("records must name at least one record")
        if self.at_least is None and self.at_most is None:
            raise ValueError("give at_least, at_most or both")

    @property
    def text(self) -> str:
        parts = _bounds(self.at_least, self.at_most)
        return f"{self.what} {parts}{self.unit}, over the 95% interval of paired seeds"

    def evaluate(self, one_run: str | None = None) -> Outcome:
        recs = []
        for name in self.records:
            try:
                recs.append(load_record(name))
            except FileNotFoundError:
                return _missing(name)
        seeds = [tuple(r.get("seeds", ())) for r in recs]
        if any(s != seeds[0] for s in seeds):
            return Outcome("inconclusive", f"the records hold different seeds: {dict(zip(self.records, seeds))}")
        xs = [float(v) for v in self.fn(recs)]
        mean, lo, hi = interval(xs)
        verdict = _judge(lo, hi, mean, len(xs), self.at_least, self.at_most, one_run)
        detail = f"{self.what} = " + _describe(mean, lo, hi, len(xs), self.unit, self.digits)
        return Outcome(verdict, detail, stale=any(_stale(r) for r in recs))


@dataclass(frozen=True)
class NotTested(Criterion):
    """No evidence at a scale where the claim applies; ``reason`` says why."""

    reason: str

    @property
    def text(self) -> str:
        return "—"

    def evaluate(self, one_run: str | None = None) -> Outcome:
        return Outcome("not tested at this scale", self.reason)


def _stale(rec: Mapping[str, Any]) -> bool:
    try:
        return is_stale(dict(rec))
    except (KeyError, ValueError):
        return False


@dataclass(frozen=True)
class Claim:
    """One claim, its provenance and how it is judged.

    ``source``: ``"article"`` (the claim is the article's; its numbers are the
    article's), ``"paper: <who>"``, or ``"ours"``. ``scale``: what the evidence
    was run at. ``evidence``: a record name, or ``"cell: <label>"`` for the
    chapter's asserting cell. ``one_run``: why one run is enough here, if it is
    (otherwise a comparison with fewer than three seeds is inconclusive).
    """

    id: str
    statement: str
    source: str
    scale: str
    evidence: str
    criterion: Criterion
    one_run: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if not self.id or not self.id.replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"id must be letters, digits, '-' and '.', got {self.id!r}")
        if not (self.source in ("article", "ours") or self.source.startswith("paper: ")):
            raise ValueError(f"source must be 'article', 'ours' or 'paper: <who>', got {self.source!r}")
        if not isinstance(self.criterion, Criterion):
            raise TypeError(f"criterion must be a Criterion, got {type(self.criterion).__name__}")

    @property
    def chapter(self) -> str:
        return self.id[:2]

    @property
    def anchor(self) -> str:
        """The HTML id of the claim's row in its chapter's table."""
        return "claim-" + self.id.replace(".", "-")

    def evaluate(self) -> Outcome:
        return self.criterion.evaluate(self.one_run)


def chapter_claims(chapter: str) -> list[Claim]:
    """The ``CLAIMS`` list of chapter ``chapter`` (``"01"`` ... ``"07"``); ids must be unique and prefixed."""
    if chapter not in CHAPTERS:
        raise ValueError(f"chapter must be one of {sorted(CHAPTERS)}, got {chapter!r}")
    claims = list(importlib.import_module(f"kexue.experiments.claims.ch{chapter}").CLAIMS)
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise ValueError(f"chapter {chapter}: claim ids repeat: {sorted(i for i in ids if ids.count(i) > 1)}")
    wrong = [i for i in ids if not i.startswith(f"{chapter}.")]
    if wrong:
        raise ValueError(f"chapter {chapter}: claim ids must start with '{chapter}.', got {wrong}")
    return claims


def all_claims() -> list[Claim]:
    """Every chapter's claims, in book order."""
    return [c for ch in CHAPTERS for c in chapter_claims(ch)]


def evaluate(claims: Sequence[Claim]) -> list[tuple[Claim, Outcome]]:
    """Each claim with its computed :class:`Outcome`."""
    return [(c, c.evaluate()) for c in claims]


_COLOURS = {
    "reproduced": "#1b7a3a",
    "refuted": "#b3261e",
    "inconclusive": "#8a6d00",
    "not tested at this scale": "#5f6368",
}


def _badge(outcome: Outcome) -> str:
    colour = _COLOURS[outcome.verdict]
    stale = ' <span class="kexue-stale" title="the record was made with another config">(stale record)</span>' \
        if outcome.stale else ""
    return f'<strong style="color:{colour}">{html.escape(outcome.verdict)}</strong>{stale}'


def _evidence_cell(claim: Claim) -> str:
    ev = claim.evidence
    if ev.startswith("cell: "):
        return f"cell <code>{html.escape(ev[6:])}</code>"
    return f"record <code>{html.escape(ev)}</code>"


class _Html:
    """An object Jupyter shows as HTML (and ``str`` as the same markup)."""

    def __init__(self, markup: str) -> None:
        self.markup = markup

    def _repr_html_(self) -> str:
        return self.markup

    def __str__(self) -> str:
        return self.markup


def table(chapter: str) -> _HtmlTable:
    """Chapter ``chapter``'s claims table with computed verdicts (shown as HTML in a notebook)."""
    rows = evaluate(chapter_claims(chapter))
    return _HtmlTable(rows, with_chapter=False)


class _HtmlTable(_Html):
    """Claims as an HTML table: the glance layout (chapter, claim, source, verdict, result) or a chapter's
    (claim with its scale and evidence, source, criterion, result, verdict; rows carry ids to link to)."""

    def __init__(self, rows: Sequence[tuple[Claim, Outcome]], *, with_chapter: bool) -> None:
        self.rows = list(rows)
        if with_chapter:
            head = ["Chapter", "Claim", "Source", "Verdict", "Result"]
        else:
            head = ["Claim", "Source", "Criterion", "Result", "Verdict"]
        out = ['<div class="kexue-claims-wrap"><table class="kexue-claims">', "<thead><tr>"]
        out += [f"<th>{h}</th>" for h in head]
        out.append("</tr></thead><tbody>")
        for claim, outcome in self.rows:
            note = f"<br><small>{html.escape(claim.note)}</small>" if claim.note else ""
            one = f"<br><small>one run: {html.escape(claim.one_run)}</small>" if claim.one_run else ""
            result = f"{html.escape(outcome.detail)}{one}"
            if with_chapter:
                link = f"{chapter_page(claim.chapter)}.html#{claim.anchor}"
                out.append(
                    f'<tr><td><a href="{link}">{claim.chapter}</a></td>'
                    f'<td><a href="{link}">{html.escape(claim.statement)}</a></td>'
                    f"<td>{html.escape(claim.source)}</td><td>{_badge(outcome)}</td><td>{result}</td></tr>"
                )
            else:
                where = (f"<br><small>Scale: {html.escape(claim.scale)}. Evidence: {_evidence_cell(claim)}."
                         "</small>")
                out.append(
                    f'<tr id="{claim.anchor}"><td>{html.escape(claim.statement)}{where}{note}</td>'
                    f"<td>{html.escape(claim.source)}</td><td>{html.escape(claim.criterion.text)}</td>"
                    f"<td>{result}</td><td>{_badge(outcome)}</td></tr>"
                )
        out.append("</tbody></table></div>")
        super().__init__("\n".join(out))

    def records(self) -> list[dict[str, Any]]:
        """The same rows as plain dicts (for filtering in Jupyter)."""
        return (
            [{"id": c.id, "claim": c.statement, "source": c.source, "scale": c.scale, "evidence": c.evidence,
              "criterion": c.criterion.text, "result": o.detail, "verdict": o.verdict, "stale": o.stale}
             for c, o in self.rows]
        )


def glance() -> _HtmlTable:
    """Every claim in the book, linked to its row in its chapter, with its verdict."""
    return _HtmlTable(evaluate(all_claims()), with_chapter=True)


def counts(rows: Sequence[tuple[Claim, Outcome]] | None = None) -> dict[str, dict[str, int]]:
    """Verdict counts per chapter (``{"01": {"reproduced": 3, ...}, ...}``), plus ``"all"``."""
    rows = evaluate(all_claims()) if rows is None else rows
    out: dict[str, dict[str, int]] = {}
    for claim, outcome in rows:
        for key in (claim.chapter, "all"):
            out.setdefault(key, dict.fromkeys(VERDICTS, 0))[outcome.verdict] += 1
    return out



def across_scales(chapter: str, scales: Sequence[str] = ("smoke", "book")) -> _Html:
    """Chapter ``chapter``'s claims tested at several scales, one row per claim and a verdict per scale.

    Claims pair up by id: ``<stem>-<scale>`` for each of ``scales``. The last
    column says whether the verdicts agree, so a reader sees at once where a
    small run's finding does not survive a larger one. Raises ``ValueError``
    when the chapter has no claim tested at every scale.
    """
    if len(scales) < 2:
        raise ValueError(f"scales must name at least two scales, got {list(scales)}")
    rows = evaluate(chapter_claims(chapter))
    by_id = {claim.id: (claim, outcome) for claim, outcome in rows}
    stems = [c.id[: -len(scales[-1]) - 1] for c, _ in rows if c.id.endswith("-" + scales[-1])]
    stems = [s for s in stems if all(f"{s}-{sc}" in by_id for sc in scales)]
    if not stems:
        raise ValueError(f"chapter {chapter!r} has no claim tested at every scale of {list(scales)}")
    head = ["Claim", *[f"{sc} scale" for sc in scales], "Same verdict"]
    out = ['<div class="kexue-claims-wrap"><table class="kexue-claims"><thead><tr>',
           *[f"<th>{html.escape(h)}</th>" for h in head], "</tr></thead><tbody>"]
    for stem in stems:
        pairs = [by_id[f"{stem}-{sc}"] for sc in scales]
        texts = [c.statement for c, _ in pairs]
        if len(set(texts)) == 1:
            text = html.escape(texts[0])
        else:  # the scales word it differently (sizes, say): show each wording
            text = "<br>".join(f"<em>{html.escape(sc)}:</em> {html.escape(t)}" for sc, t in zip(scales, texts))
        cells = [f'<a href="#{c.anchor}">{_badge(o)}</a>' for c, o in pairs]
        same = "yes" if len({o.verdict for _, o in pairs}) == 1 else "<strong>no</strong>"
        out.append(f"<tr><td>{text}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                   + f"<td>{same}</td></tr>")
    out.append("</tbody></table></div>")
    return _Html("\n".join(out))
