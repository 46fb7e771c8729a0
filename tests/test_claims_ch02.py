"""Chapter 02's claims: every one evaluates, every exact check passes, and the criteria can fail."""

from __future__ import annotations

import time

import pytest

from kexue import globalpointer as gp
from kexue.experiments import claims, records
from kexue.experiments.ch02_globalpointer import CONFIGS
from kexue.experiments.claims import Exact, NotTested, ch02

BY_ID = {c.id: c for c in ch02.CLAIMS}


def test_chapter_claims_load_with_unique_prefixed_ids():
    loaded = claims.chapter_claims("02")
    assert [c.id for c in loaded] == [c.id for c in ch02.CLAIMS]
    assert all(c.id.startswith("02.") for c in loaded)


@pytest.mark.parametrize("claim", ch02.CLAIMS, ids=lambda c: c.id)
def test_every_claim_evaluates(claim):
    start = time.perf_counter()
    outcome = claim.evaluate()
    elapsed = time.perf_counter() - start
    assert outcome.verdict in claims.VERDICTS
    assert outcome.detail
    if isinstance(claim.criterion, Exact):
        assert outcome.verdict == "reproduced", outcome.detail
        assert elapsed < 2.0, f"{claim.id}: the exact check took {elapsed:.2f} s"
    if isinstance(claim.criterion, NotTested):
        assert outcome.verdict == "not tested at this scale"


def test_table_renders_every_claim():
    markup = str(claims.table("02"))
    for c in ch02.CLAIMS:
        assert f'id="{c.anchor}"' in markup


def test_exact_check_refutes_a_broken_loss(monkeypatch):
    right = gp.multilabel_categorical_crossentropy
    monkeypatch.setattr(gp, "multilabel_categorical_crossentropy", lambda s, y: right(s, y) + 1e-6)
    assert BY_ID["02.loss-pairwise"].evaluate().verdict == "refuted"


def test_exact_check_refutes_a_decoder_that_drops_nested_spans(monkeypatch):
    right = gp.decode_spans

    def outermost_only(logits, threshold=0.0):
        out = right(logits, threshold)
        return [{s for s in spans if not any(o != s and o[1] <= s[1] and s[2] <= o[2] for o in spans)}
                for spans in out]

    monkeypatch.setattr(gp, "decode_spans", outermost_only)
    assert BY_ID["02.decode-nested"].evaluate().verdict == "refuted"


def _book_record(tmp_path, monkeypatch, rope_gain: float, gp_minus_crf: float):
    """A fake three-seed book record with the given gaps (F1 as fractions), written under ``tmp_path``."""
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    per_seed = []
    for k, jitter in enumerate((-0.002, 0.0, 0.002)):
        g = 0.70 + jitter
        per_seed.append({
            "gp_f1": g, "gp_norope_f1": g - rope_gain - 0.001 * k, "crf_f1": g - gp_minus_crf + 0.001 * k,
            "egp_f1": g - 0.002, "nested_gp_inner_recall": 0.5, "nested_crf_inner_recall": 0.2 + 0.01 * k,
        })
    rec = records.run_record("ch02_globalpointer", "book", CONFIGS["book"], [0, 1, 2], per_seed, seconds=3.0)
    records.write_record(ch02.BOOK, rec)


def test_record_criterion_refutes_and_reproduces(tmp_path, monkeypatch):
    _book_record(tmp_path, monkeypatch, rope_gain=0.05, gp_minus_crf=0.03)
    drop = BY_ID["02.rope-drop-book"].evaluate()
    assert drop.verdict == "refuted", drop.detail
    assert not drop.stale
    assert BY_ID["02.rope-helps-book"].evaluate().verdict == "reproduced"
    assert BY_ID["02.gp-crf-book"].evaluate().verdict == "refuted"  # a 3-point gap is no match
    assert BY_ID["02.egp-gp-book"].evaluate().verdict == "reproduced"
    assert BY_ID["02.nested-inner-book"].evaluate().verdict == "reproduced"

    _book_record(tmp_path, monkeypatch, rope_gain=0.35, gp_minus_crf=0.0)
    assert BY_ID["02.rope-drop-book"].evaluate().verdict == "reproduced"
    assert BY_ID["02.gp-crf-book"].evaluate().verdict == "reproduced"


def test_missing_book_record_is_not_tested(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    out = BY_ID["02.rope-drop-book"].evaluate()
    assert out.verdict == "not tested at this scale" and "missing" in out.detail


def test_benchmark_criterion_reads_quartiles(tmp_path, monkeypatch):
    """A benchmark record where GlobalPointer trains 1.5 times faster end to end reproduces 02.train-speed."""
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)

    def t(median):
        return {"median_s": median, "q1_s": 0.98 * median, "q3_s": 1.02 * median}

    e2e = [{"n": n, "repeats": 7, "results": {
        "gp_train": t(1.0), "crf_torchcrf_train": t(1.5), "crf_ours_train": t(1.5),
        "gp_infer": t(1.0), "crf_torchcrf_infer": t(0.8), "crf_ours_infer": t(0.8)}} for n in (64, 128)]
    records.write_record(ch02.BENCH, {"e2e": e2e, "rows": []})
    assert BY_ID["02.train-speed"].evaluate().verdict == "reproduced"
    assert BY_ID["02.infer-speed"].evaluate().verdict == "refuted"
    assert BY_ID["02.e2e-tie"].evaluate().verdict == "refuted"


def test_one_run_claims_say_why():
    for c in ch02.CLAIMS:
        if c.evidence == ch02.FULL and c.one_run is None:
            assert c.evaluate().verdict in ("inconclusive", "not tested at this scale"), c.id
