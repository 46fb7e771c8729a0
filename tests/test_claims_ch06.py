"""Chapter 06's claims: every claim evaluates, the identities hold, and the verdicts can flip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kexue.experiments.ch06_growth as ch06_growth
import kexue.experiments.records as records
import kexue.growth as growth
from kexue.experiments.ch06_growth import CONFIGS
from kexue.experiments.claims import VERDICTS, Exact, chapter_claims, table
from kexue.experiments.claims import ch06

# the article's two errata: their checks measure the error of the article's formula
ERRATA = {"06.layernorm-article", "06.ffn-bias-article"}

BY_ID = {c.id: c for c in ch06.CLAIMS}


def test_every_claim_evaluates_and_identities_hold():
    claims = chapter_claims("06")
    assert len(claims) == len(BY_ID) >= 20
    for claim in claims:
        outcome = claim.evaluate()
        assert outcome.verdict in VERDICTS, claim.id
        assert outcome.detail, claim.id
        if isinstance(claim.criterion, Exact):
            expected = "refuted" if claim.id in ERRATA else "reproduced"
            assert outcome.verdict == expected, (claim.id, outcome.detail)
    assert ERRATA <= {c.id for c in claims if isinstance(c.criterion, Exact)}
    markup = str(table("06"))
    assert all(c.anchor in markup for c in claims)


def test_every_claim_names_its_evidence():
    for claim in ch06.CLAIMS:
        assert claim.evidence == ch06.BOOK or claim.evidence.startswith("cell: ch06-"), claim.id
    page = (Path(__file__).resolve().parents[1] / "book" / "06_lossless_growth.md").read_text(encoding="utf-8")
    for label in {c.evidence[6:] for c in ch06.CLAIMS if c.evidence.startswith("cell: ")}:
        assert f"({label})=" in page, label


def test_exact_checks_flip_on_broken_growth(monkeypatch):
    real_widen = growth.widen

    def broken_widen(model, *args, **kwargs):  # the right maps, then one weight nudged
        big = real_widen(model, *args, **kwargs)
        with torch.no_grad():
            next(p for n, p in big.named_parameters() if n.endswith("ffn.down.weight")).mul_(1.01)
        return big

    monkeypatch.setattr(growth, "widen", broken_widen)
    assert BY_ID["06.whole-model"].evaluate().verdict == "refuted"
    monkeypatch.undo()
    assert BY_ID["06.whole-model"].evaluate().verdict == "reproduced"


def test_adam_check_flips_with_unscaled_eps(monkeypatch):
    real_groups = ch06_growth.adam_twin_groups

    def eps_unscaled(small, factor, *, lr, eps=1e-8, weight_decay=0.0, **options):
        return [dict(g, eps=eps) for g in real_groups(small, factor, lr=lr, eps=eps,
                                                       weight_decay=weight_decay, **options)]

    monkeypatch.setattr(ch06_growth, "adam_twin_groups", eps_unscaled)
    outcome = BY_ID["06.adam-rule"].evaluate()
    assert outcome.verdict == "refuted", outcome.detail


def _write_book_record(tmp_path, per_seed):
    rec = records.run_record("ch06_growth", "book", CONFIGS["book"], [0, 1, 2], per_seed, seconds=3.0)
    (tmp_path / f"{ch06.BOOK}.json").write_text(json.dumps(rec), encoding="utf-8")


def _metrics(scratch, grown, noise_loss, gap, seed):
    return {
        "final_loss_small": 5.0, "final_loss_grown": grown + 0.01 * seed,
        "final_loss_grown_noise": noise_loss + 0.01 * seed, "final_loss_net2net": 4.9,
        "final_loss_scratch": scratch + 0.012 * seed, "loss_at_growth": 5.2,
        "start_gap_grown": 1e-7, "start_gap_grown_noise": 2e-7, "max_symmetry_gap_grown": gap,
        "final_symmetry_gap_grown_noise": 0.03, "flops_budget": 1e12, "scratch_steps": 1400.0,
        "max_unused_rope_row_grown": 0.0, "max_unused_rope_row_grown_noise": 0.05,
    }


def test_record_claims_missing_then_reproduced_then_refuted(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    ids = ["06.grown-vs-scratch", "06.noise-vs-scratch", "06.image-book", "06.rope-saddle-book",
           "06.lossless-start-book", "06.noise-gap-book"]
    for i in ids:
        outcome = BY_ID[i].evaluate()
        assert outcome.verdict == "not tested at this scale" and "missing" in outcome.detail

    # growing pays off, and the noiseless run stays in the image
    _write_book_record(tmp_path, [_metrics(4.8, 4.6, 4.5, 1e-7, s) for s in range(3)])
    for i in ids:
        outcome = BY_ID[i].evaluate()
        assert outcome.verdict == "reproduced", (i, outcome.detail)
        assert not outcome.stale

    # scratch wins by a clear margin, and float32 roundoff breaks the symmetry
    _write_book_record(tmp_path, [_metrics(4.3, 4.6, 4.5, 1e-2, s) for s in range(3)])
    for i in ("06.grown-vs-scratch", "06.noise-vs-scratch", "06.image-book"):
        outcome = BY_ID[i].evaluate()
        assert outcome.verdict == "refuted", (i, outcome.detail)


def test_rope_saddle_check_needs_noise_to_move_the_key_rows(monkeypatch):
    real_widen = growth.widen
    monkeypatch.setattr(growth, "widen", lambda model, k, **kw: real_widen(model, k, **{**kw, "noise": 0.0}))
    err, tol = ch06.check_rope_saddle()
    assert err > tol


@pytest.mark.parametrize("check", [ch06.check_layer_norm_article, ch06.check_ffn_bias_article])
def test_errata_are_far_from_lossless(check):
    err, tol = check()
    assert err > 1e-3 > tol
