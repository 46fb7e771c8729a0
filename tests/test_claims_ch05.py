"""Tests for chapter 05's claims (kexue.experiments.claims.ch05).

(a) every claim evaluates; every exact check gives its expected verdict (reproduced,
except the post's statements that the check measures as wrong); (b) the verdicts
follow the evidence: a broken kexue function flips an exact check, and fake run and
benchmark records flip the record criteria between reproduced and refuted.
"""

from __future__ import annotations

import copy

import pytest
import torch

import kexue.experiments.records as records
import kexue.mixers as km
from kexue.experiments import ch05_mixers as ch05
from kexue.experiments.claims import VERDICTS, Exact, chapter_claims
from kexue.experiments.claims import ch05 as claims05

#: the post's statements that the chapter's checks show to be wrong
REFUTED = {"05.fnet-exp-literal", "05.ea-isolation", "05.mixer-not-causal", "05.only-fnet-variable-length"}


def by_id() -> dict:
    return {c.id: c for c in chapter_claims("05")}


def test_every_claim_evaluates_and_exact_checks_give_their_verdict():
    claims = chapter_claims("05")
    assert len(claims) >= 20
    assert REFUTED <= {c.id for c in claims}
    for claim in claims:
        outcome = claim.evaluate()
        assert outcome.verdict in VERDICTS, claim.id
        if isinstance(claim.criterion, Exact):
            expected = "refuted" if claim.id in REFUTED else "reproduced"
            assert outcome.verdict == expected, (claim.id, outcome.detail)


def test_benchmark_claims_are_decided_on_the_shipped_record():
    claims = by_id()
    for cid in ("05.mlps-quadratic", "05.attention-quadratic", "05.ea-subquadratic",
                "05.aft-subquadratic", "05.peers-equal"):
        assert claims[cid].evaluate().verdict in ("reproduced", "refuted"), cid


def test_a_broken_dft_refutes_the_fnet_checks(monkeypatch):
    claims = by_id()
    assert claims["05.fnet-exp-scaled"].evaluate().verdict == "reproduced"
    real = km.dft_matrix
    monkeypatch.setattr(km, "dft_matrix", lambda m, **kw: real(m, **kw).conj())  # the other sign
    assert claims["05.fnet-exp-scaled"].evaluate().verdict == "refuted"
    monkeypatch.setattr(km, "dft_matrix", lambda m, **kw: real(m, **kw) * 1.001)
    assert claims["05.fnet-dft"].evaluate().verdict == "refuted"


def test_the_causality_counterexample_is_what_refutes_the_post(monkeypatch):
    claim = by_id()["05.mixer-not-causal"]
    assert claim.evaluate().verdict == "refuted"
    # a token MLP that did read later inputs would leave the post's statement standing
    monkeypatch.setattr(ch05, "future_dependence", lambda module, x: (0.5, 0.5))
    assert claim.evaluate().verdict == "reproduced"


def test_a_broken_resmlp_refutes_its_check(monkeypatch):
    claim = by_id()["05.resmlp-fixed-a"]
    cls = km.MIXERS["resmlp"]
    real = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, x, mask=None: real(self, x, mask) + 1e-6)
    assert claim.evaluate().verdict == "refuted"


# --------------------------------------------------------------------------- fake records


def _book_record(f1_gap: float, fnet_shift: float, other_shift: float) -> dict:
    """A 3-seed book record: attention F1 ~0.7, every other mixer ``f1_gap`` below it."""
    cfg = ch05.CONFIGS["book"]
    per_seed = []
    for seed in range(3):
        m = {"msra_all_o_accuracy": 0.88}
        for name in cfg.mixers:
            base = 0.70 + 0.01 * seed
            m[f"msra_f1_{name}"] = base if name == "attention" else base - f1_gap + 0.002 * seed
            m[f"msra_token_accuracy_{name}"] = 0.95
            m[f"digits_accuracy_{name}"] = 0.9 + 0.01 * seed
            m[f"msra_max_logit_change_{name}"] = fnet_shift if name == "fnet" else other_shift
            m[f"msra_same_prediction_{name}"] = 1.0
        per_seed.append(m)
    return records.run_record("ch05_mixers", "book", cfg, [0, 1, 2], per_seed, seconds=1.0)


@pytest.fixture
def fake_records(monkeypatch, tmp_path):
    shipped = records.load_record(claims05.BENCH)  # read before the records move
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    return tmp_path, shipped


def test_book_record_criteria_follow_the_record(fake_records):
    claims = by_id()
    ids = [f"05.fixed-fits-msra-{n.replace('_', '-')}" for n in claims05.FIXED]
    for cid in ids + ["05.digits-all-learn", "05.fnet-padding-trained"]:
        assert claims[cid].evaluate().verdict == "not tested at this scale", cid

    records.write_record(claims05.BOOK, _book_record(f1_gap=0.01, fnet_shift=2.0, other_shift=1e-6))
    for cid in ids + ["05.digits-all-learn", "05.fnet-padding-trained", "05.exact-padding-trained"]:
        assert claims[cid].evaluate().verdict == "reproduced", (cid, claims[cid].evaluate().detail)

    records.write_record(claims05.BOOK, _book_record(f1_gap=0.30, fnet_shift=0.0, other_shift=0.5))
    for cid in ids + ["05.fnet-padding-trained", "05.exact-padding-trained"]:
        assert claims[cid].evaluate().verdict == "refuted", (cid, claims[cid].evaluate().detail)


def test_benchmark_criteria_follow_the_record(fake_records):
    tmp_path, shipped = fake_records
    claims = by_id()
    (tmp_path / "benchmarks").mkdir()
    records.write_record(claims05.BENCH, shipped)
    assert claims["05.attention-quadratic"].evaluate().verdict == "reproduced"
    assert claims["05.ea-subquadratic"].evaluate().verdict == "reproduced"
    linear = copy.deepcopy(shipped)  # attention made linear in n: its time per token held fixed
    for row in linear["scaling"]["times"]["attention"]:
        if row.get("ms") is not None:
            row["ms"], row["q1_ms"], row["q3_ms"] = (row["seq_len"] * f for f in (1e-3, 0.99e-3, 1.01e-3))
    records.write_record(claims05.BENCH, linear)
    assert claims["05.attention-quadratic"].evaluate().verdict == "refuted"
    assert claims["05.ea-subquadratic"].evaluate().verdict == "refuted"
    unequal = copy.deepcopy(shipped)
    unequal["peers"]["gmlp_block"]["max_abs_diff"] = 0.1
    records.write_record(claims05.BENCH, unequal)
    assert claims["05.peers-equal"].evaluate().verdict == "refuted"


def test_record_functions_on_the_shipped_benchmark():
    rec = records.load_record(claims05.BENCH)
    value, lo, hi, n = claims05.attention_slope(rec)
    assert lo <= value <= hi and n == rec["meta"]["repeats"]
    value, lo, hi, _ = claims05.exponent_gap_fn("fnet")(rec)
    assert lo <= value <= hi
    assert torch.isfinite(torch.tensor(claims05.peer_difference(rec)[0]))
