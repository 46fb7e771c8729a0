"""Chapter 04's claims: every claim evaluates, every derivation check passes, and the
criteria turn to "refuted" when a check or a record is deliberately broken."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from kexue import vmf
from kexue.experiments import records
from kexue.experiments.ch04_vmf import CONFIGS, LATENTS
from kexue.experiments.claims import VERDICTS, Exact, NotTested, chapter_claims, evaluate, table
from kexue.experiments.claims import ch04

BY_ID = {c.id: c for c in ch04.CLAIMS}
KL_16_50 = vmf.vmf_kl_uniform(torch.tensor(50.0, dtype=torch.float64), 16).item()
KL_4_20 = vmf.vmf_kl_uniform(torch.tensor(20.0, dtype=torch.float64), 4).item()
KL_3_5 = vmf.vmf_kl_uniform(torch.tensor(5.0, dtype=torch.float64), 3).item()


def _metrics(kl_const: float, **overrides: float) -> dict[str, float]:
    """One seed's metrics with every key that ``ch04_vmf.run`` returns, plausible values."""
    m: dict[str, float] = {}
    for latent in LATENTS:
        kl = kl_const if latent == "vmf" else 20.0
        m.update({
            f"{latent}_test_recon": 100.0, f"{latent}_test_recon_epoch1": 120.0,
            f"{latent}_test_recon_min": 99.0, f"{latent}_test_recon_min_epoch": 15.0,
            f"{latent}_test_kl": kl, f"{latent}_active_units": 16.0,
            f"{latent}_kl_mc": kl, f"{latent}_kl_mc_se": 0.01,
            f"{latent}_iw_nll": 110.0, f"{latent}_neg_elbo": 115.0,
            f"{latent}_mutual_info": min(kl, 5.0) - 0.2, f"{latent}_mutual_info_se": 0.01,
            f"{latent}_recon_own_z": 100.0, f"{latent}_recon_shuffled_z": 130.0,
        })
    m["vmf_kl_constant"] = kl_const
    m["gauss_collapsed"] = 0.0
    m.update(overrides)
    return m


def _write_run(name: str, profile: str, overrides: dict[str, Any], per_seed: list[dict[str, float]]) -> None:
    from kexue.experiments.config import apply_overrides

    cfg = apply_overrides(CONFIGS[profile], overrides)
    seeds = list(range(len(per_seed)))
    rec = records.run_record("ch04_vmf", profile, cfg, seeds, per_seed, seconds=1.0, overrides=overrides)
    records.write_record(name, rec)


def _jitter(m: dict[str, float], i: int) -> dict[str, float]:
    """Small seed-to-seed noise so every interval has a width."""
    return {k: v + 1e-3 * (i - 1) * (1 + abs(v)) if "kl_constant" not in k else v for k, v in m.items()}


@pytest.fixture
def fake_records(tmp_path, monkeypatch):
    """A RECORDS_DIR in tmp_path with every record chapter 04's claims read; returns a writer."""
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)

    def write(book: dict[str, float] | None = None, *, seeds: int = 3, gauss_full_kl: float = 22.9,
              sampling: tuple[float, float, float] = (6.7, 6.6, 8.6)) -> None:
        base = _metrics(KL_16_50, **(book or {}))
        _write_run(ch04.BOOK, "book", {}, [_jitter(base, i) for i in range(seeds)])
        author = _metrics(KL_4_20, vmf_iw_nll=112.0)  # the vMF-VAE worse by 2 nats
        _write_run(ch04.AUTHOR, "book", {"dim": 4, "kappa": 20.0}, [_jitter(author, i) for i in range(3)])
        for kappa, name in ch04.SWEEP.items():
            kl = vmf.vmf_kl_uniform(torch.tensor(float(kappa), dtype=torch.float64), 3).item()
            _write_run(name, "smoke", {"kappa": float(kappa)}, [_jitter(_metrics(kl), i) for i in range(3)])
        curve = [120.0 - i for i in range(20)] + [100.0 + 0.3 * i for i in range(30)]
        full = {"runs": {lat: {"nll": curve, "kl": [gauss_full_kl if lat == "gauss" else KL_16_50] * 50}
                         for lat in LATENTS}}
        records.write_record("vmf_full", full)
        med, q1, q3 = sampling
        row = {"threads": 2, "d": 128, "kappa": 20.0,
               "sample_speedup_vs_scipy": {"median": med, "q1": q1, "q3": q3},
               "log_prob_speedup_vs_scipy": {"median": 1.5, "q1": 1.4, "q3": 1.8}}
        other = {**row, "d": 3, "log_prob_speedup_vs_scipy": {"median": 4.0, "q1": 3.9, "q3": 4.1}}
        records.write_record("benchmarks/vmf", {"default_threads": 2, "repeats": 7, "rows": [row, other]})

    return write


def verdict(claim_id: str) -> str:
    return BY_ID[claim_id].evaluate().verdict


# ---------------------------------------------------------------------------
# (a) every claim evaluates; every derivation check passes
# ---------------------------------------------------------------------------
def test_claims_are_registered_and_evaluate() -> None:
    claims = chapter_claims("04")
    assert [c.id for c in claims] == [c.id for c in ch04.CLAIMS]
    rows = evaluate(claims)
    assert all(o.verdict in VERDICTS for _, o in rows)
    markup = str(table("04"))
    assert markup.count("<tr id=") == len(claims)


@pytest.mark.parametrize("claim", [c for c in ch04.CLAIMS if isinstance(c.criterion, Exact)], ids=lambda c: c.id)
def test_every_exact_claim_is_reproduced(claim) -> None:
    outcome = claim.evaluate()
    assert outcome.verdict == "reproduced", outcome.detail


def test_record_claims_get_verdicts_from_records(fake_records) -> None:
    fake_records()
    for claim, outcome in evaluate(ch04.CLAIMS):
        if isinstance(claim.criterion, NotTested):
            assert outcome.verdict == "not tested at this scale"
        else:
            assert "missing" not in outcome.detail, (claim.id, outcome.detail)
    # the plausible fake records: no collapse, codes used, the KL checks agree
    assert verdict("04.collapse-made") == "refuted"
    assert verdict("04.collapse-made-author-setting") == "refuted"
    assert verdict("04.vmf-code-used-author-setting") == "reproduced"
    assert verdict("04.vmf-iw-nll-lower-author-setting") == "refuted"
    assert verdict("04.collapse-made-full") == "refuted"
    assert verdict("04.kl-constant-in-training") == "reproduced"
    assert verdict("04.gauss-kl-checks") == "reproduced"
    assert verdict("04.vmf-code-used") == "reproduced"
    assert verdict("04.full-overfits") == "reproduced"
    assert verdict("04.rate-cap-small-kappa") == "reproduced"
    assert verdict("04.speed-sampling") == "inconclusive"  # 6.7x [6.6, 8.6] straddles 7
    assert verdict("04.speed-log-prob") == "reproduced"


def test_missing_records_are_not_tested(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(records, "RECORDS_DIR", tmp_path)
    outcome = BY_ID["04.collapse-made"].evaluate()
    assert outcome.verdict == "not tested at this scale" and "missing" in outcome.detail


# ---------------------------------------------------------------------------
# (b) broken variants flip to "refuted"
# ---------------------------------------------------------------------------
def test_exact_checks_refute_a_wrong_kl(monkeypatch) -> None:
    right = vmf.vmf_kl_uniform
    monkeypatch.setattr(vmf, "vmf_kl_uniform", lambda kappa, dim: right(kappa, dim) + 1e-3)
    assert verdict("04.kl-demo-constant") == "refuted"
    assert verdict("04.kl-depends-on-d-kappa") == "refuted"


def test_exact_check_refutes_a_wrong_mean_resultant_length(monkeypatch) -> None:
    right = vmf.mean_resultant_length
    monkeypatch.setattr(vmf, "mean_resultant_length", lambda kappa, dim: right(kappa, dim) * (1 + 1e-4))
    assert verdict("04.w-density") == "refuted"


def test_exact_check_refutes_a_wrong_log_prob(monkeypatch) -> None:
    right = vmf.VonMisesFisher.log_prob
    monkeypatch.setattr(vmf.VonMisesFisher, "log_prob", lambda self, x: right(self, x) + 0.01)
    assert verdict("04.stable-large-d") == "refuted"


def test_record_criteria_refute_broken_records(fake_records) -> None:
    fake_records({"vmf_kl_mc": KL_16_50 + 0.5, "gauss_test_kl": 0.01, "gauss_kl_mc": 0.01,
                  "vmf_recon_shuffled_z": 100.5, "vmf_neg_elbo": 120.0},
                 gauss_full_kl=0.02, sampling=(5.0, 4.8, 5.2))
    assert verdict("04.kl-constant-in-training") == "refuted"  # the MC KL is 0.5 nats off
    assert verdict("04.collapse-made") == "reproduced"  # the fake Gaussian KL collapsed
    assert verdict("04.collapse-made-full") == "reproduced"
    assert verdict("04.vmf-code-used") == "refuted"  # shuffled codes cost 0.5 nats only
    assert verdict("04.vmf-elbo-lower") == "refuted"  # vMF -ELBO 120 vs Gaussian 115
    assert verdict("04.speed-sampling") == "refuted"


def test_one_seed_is_inconclusive(fake_records) -> None:
    fake_records(seeds=1)
    assert verdict("04.collapse-made") == "inconclusive"
    assert verdict("04.vmf-code-used") == "inconclusive"


def test_fake_records_are_current(fake_records) -> None:
    """The fake run records carry today's config hashes, so no verdict is marked stale."""
    fake_records()
    rec = json.loads(records.record_path(ch04.AUTHOR).read_text())
    assert rec["overrides"] == {"dim": 4, "kappa": 20.0}
    assert not BY_ID["04.collapse-made"].evaluate().stale
    assert not BY_ID["04.collapse-made-author-setting"].evaluate().stale
