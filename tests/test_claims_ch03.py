"""Chapter 03's claims: every claim evaluates, every exact check passes, and criteria can fail."""

from __future__ import annotations

from kexue import rope
from kexue.experiments import ch03_rope as ch03
from kexue.experiments import records
from kexue.experiments.claims import VERDICTS, Exact, FromRecord, chapter_claims, evaluate, table
from kexue.experiments.claims import ch03 as claims03


def _by_id() -> dict[str, object]:
    return {c.id: c for c in chapter_claims("03")}


def test_every_claim_evaluates_and_exact_checks_pass() -> None:
    rows = evaluate(chapter_claims("03"))
    assert len(rows) >= 30
    for claim, outcome in rows:
        assert outcome.verdict in VERDICTS
        assert claim.source == "article" or claim.source == "ours" or claim.source.startswith("paper: ")
        if isinstance(claim.criterion, Exact):
            assert outcome.verdict == "reproduced", (claim.id, outcome.detail)
    assert 'id="claim-03-skew-1d"' in str(table("03"))


def test_smoke_record_claims_are_judged_over_ten_seeds() -> None:
    claims = _by_id()
    for cid in ("03.interp-helps-smoke", "03.pad-drop-smoke", "03.pad-keys-exact-smoke"):
        outcome = claims[cid].evaluate()
        assert outcome.verdict == "reproduced", (cid, outcome.detail)
        assert "10" in outcome.detail


def test_benchmark_claim_reads_the_record() -> None:
    outcome = _by_id()["03.faster-than-peer"].evaluate()
    assert outcome.verdict == "reproduced", outcome.detail
    assert "n = 31" in outcome.detail


def test_exact_check_is_refuted_when_the_implementation_is_broken(monkeypatch) -> None:
    claim = _by_id()["03.final-form"]
    assert claim.evaluate().verdict == "reproduced"
    real = rope.rope_2d_matrix

    def broken(position, dim, *args, **kwargs):  # the row and column swapped: no longer exp of B1, B2
        x, y = (float(v) for v in position)
        return real((y, x), dim, *args, **kwargs)

    monkeypatch.setattr(rope, "rope_2d_matrix", broken)
    outcome = claim.evaluate()
    assert outcome.verdict == "refuted", outcome.detail


def test_peer_check_is_refuted_for_a_wrong_layout(monkeypatch) -> None:
    claim = _by_id()["03.matches-peer"]
    real = rope.apply_rope_2d
    monkeypatch.setattr(rope, "apply_rope_2d", lambda x, p, *a, **k: real(x, p.flip(-1), *a, **k))
    assert claim.evaluate().verdict == "refuted"


def _fake_book_record(tmp_path, monkeypatch, per_seed: list[dict[str, float]]) -> None:
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    rec = records.run_record("ch03_rope", "book", ch03.CONFIGS["book"], list(range(len(per_seed))), per_seed,
                             seconds=1.0, data={"fashion_mnist/test": {"size": 2000, "sha256": "0"}})
    records.write_record(claims03.BOOK, rec)


def _metrics(interp_gain: float, keys_move: float = 0.0) -> dict[str, float]:
    """Every book metric at 0.5, with 2D RoPE's interpolation gain at 56 px and its pad_keys change."""
    cfg = ch03.CONFIGS["book"]
    m = {ch03.acc_key(p, mode, s, i): 0.5 for p in ch03.POSITIONS for mode, s, i in ch03.evaluations(cfg, p)}
    m[ch03.acc_key("rotary2d", "upsample", 56, True)] = 0.5 + interp_gain
    for p in ch03.POSITIONS:
        m[ch03.acc_key(p, "upsample", 28)] = 0.9
    for s in cfg.test_sizes:
        m[ch03.acc_key("rotary2d", "pad_keys", s)] = 0.9 + keys_move
    return m


def test_record_criteria_flip_on_a_fake_book_record(tmp_path, monkeypatch) -> None:
    claims = _by_id()
    interp = claims["03.interp-helps-book"]
    keys = claims["03.pad-keys-exact-book"]

    # interpolation clearly helps, 2D RoPE keeps its accuracy under pad_keys: reproduced
    _fake_book_record(tmp_path, monkeypatch, [_metrics(g) for g in (0.10, 0.12, 0.11)])
    assert interp.evaluate().verdict == "reproduced"
    assert keys.evaluate().verdict == "reproduced"

    # interpolation clearly hurts, pad_keys moves 2D RoPE by 20 test images in every seed: refuted
    _fake_book_record(tmp_path, monkeypatch, [_metrics(g, 0.01) for g in (-0.10, -0.12, -0.11)])
    assert interp.evaluate().verdict == "refuted"
    assert keys.evaluate().verdict == "refuted"

    # seeds disagree: inconclusive
    _fake_book_record(tmp_path, monkeypatch, [_metrics(g) for g in (0.10, -0.12, 0.01)])
    assert interp.evaluate().verdict == "inconclusive"


def test_benchmark_criterion_flips_on_a_slow_record(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    rows = [{"repeats": 31, "ratios": {"peer_over_kexue": {"ratio": 0.5, "q1": 0.4, "q3": 0.6}}}]
    (tmp_path / "benchmarks").mkdir()
    records.write_record("benchmarks/rope", {"benchmark": "rope", "results": rows})
    claim = _by_id()["03.faster-than-peer"]
    assert isinstance(claim.criterion, FromRecord)
    assert claim.evaluate().verdict == "refuted"


def test_exact_checks_are_fast() -> None:
    import time

    for claim in chapter_claims("03"):
        if isinstance(claim.criterion, Exact):
            claim.criterion.check()  # warm up (imports, first calls)
            start = time.perf_counter()
            err, tol = claim.criterion.check()
            assert time.perf_counter() - start < 2.0, claim.id  # < 0.5 s unloaded; slack for a busy machine
            assert err <= tol
