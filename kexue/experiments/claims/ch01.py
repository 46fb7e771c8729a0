"""Chapter 01's claims (SimCSE on Chinese STS against BERT-whitening).

Derivations are re-checked in float64 by the ``check_*`` functions below.
Experimental claims read the chapter's book record ``ch01_simcse_book`` (three
seeds: raw, whitened and SimCSE scores per pooling, the controls, the dropout
sweep and the frozen-encoder head) and the pretraining-budget records
``ch01_budget_book_steps<b>`` (the encoder after ``b`` pretraining steps, 0 being a
random encoder); ``e5_reference`` is a recorded evaluation of a frozen
multilingual encoder (no training, no seed). Scores are Spearman correlations,
compared in points (times 100).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kexue.experiments.claims import Claim, Difference, Exact, FromRecord, NotTested, PerSeed, Within
from kexue.losses import simcse_loss
from kexue.simcse import POOLINGS, apply_whitening, fit_whitening

__all__ = [
    "CLAIMS", "BOOK", "BUDGETS", "budget_record", "check_eq1_is_code", "check_official_differs",
    "check_whitening_null_direction", "check_adjacent_copies",
]

BOOK = "ch01_simcse_book"
#: pretraining budgets of the curve (steps; 0 = random init, 3500 = the shipped encoder)
BUDGETS: tuple[int, ...] = (0, 250, 500, 1000, 2000, 3500)
E5 = "e5_reference"
F64 = torch.float64
_BOOK_SCALE = ("book profile: shipped 4-layer char-BERT, SimCSE on 2,560 STS-B train sentences "
               "(40 steps at lr 1e-4), STS-B test, 3 seeds")
_BUDGET_SCALE = ("book profile of the budget curve: encoders after 0 to 3,500 pretraining steps, "
                 "SimCSE on 2,560 sentences (40 steps), last-avg pooling, STS-B test, 3 seeds")
_FROZEN_LR = "frozen_linear_lr0.01"  # the frozen-encoder head at 100 x the book lr


def budget_record(steps: int) -> str:
    """The record of the budget curve at ``steps`` pretraining steps."""
    return f"ch01_budget_book_steps{int(steps)}"


# ----------------------------------------------------------------------------- float64 checks
def _eq1(h0: torch.Tensor, h1: torch.Tensor, tau: float, same_view: bool = True) -> torch.Tensor:
    """Eq. (1) of the article, summed over anchors (``same_view=False``: the official loss's candidates)."""
    views = (h0, h1)
    total = torch.zeros((), dtype=h0.dtype)
    n = h0.shape[0]
    for alpha in (0, 1):
        a, b = views[alpha], views[1 - alpha]
        cos_ab = torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=-1) / tau
        cos_aa = torch.nn.functional.cosine_similarity(a[:, None], a[None], dim=-1) / tau
        for i in range(n):
            cands = [cos_ab[i]]
            if same_view:
                cands.append(torch.cat([cos_aa[i, :i], cos_aa[i, i + 1:]]))
            total = total - (cos_ab[i, i] - torch.logsumexp(torch.cat(cands), 0))
        if not same_view:
            break  # the official loss: one direction
    return total


def check_eq1_is_code() -> tuple[float, float]:
    """Eq. (1) summed over the 2N anchors equals 2N times the code's mean row loss."""
    g = torch.Generator().manual_seed(0)
    h0, h1 = torch.randn(5, 7, generator=g, dtype=F64), torch.randn(5, 7, generator=g, dtype=F64)
    rows = torch.stack([h0, h1], 1).reshape(10, 7)  # sentence k on rows 2k and 2k+1
    code = simcse_loss(rows, 0.05) * 10
    eq1 = _eq1(h0, h1, 0.05)
    return float((code - eq1).abs() / eq1.abs()), 1e-12


def check_official_differs() -> tuple[float, float]:
    """The official SimCSE loss (one direction, no same-view negatives) is another number.

    Returns ``(1e-3 / |difference of the mean losses|, 1)``: at most 1 when they
    differ by at least 1e-3.
    """
    g = torch.Generator().manual_seed(1)
    h0, h1 = torch.randn(6, 8, generator=g, dtype=F64), torch.randn(6, 8, generator=g, dtype=F64)
    rows = torch.stack([h0, h1], 1).reshape(12, 8)
    code = float(simcse_loss(rows, 0.05))
    official = float(_eq1(h0, h1, 0.05, same_view=False)) / 6
    return 1e-3 / max(abs(code - official), 1e-300), 1.0


def check_whitening_null_direction() -> tuple[float, float]:
    """Post-LN vectors have a singular covariance; ``fit_whitening`` drops the null direction.

    Returns the worst of: the smallest covariance eigenvalue relative to the
    largest (must be ~0), the whitened covariance's distance from the identity.
    """
    g = torch.Generator().manual_seed(2)
    x = torch.nn.functional.layer_norm(torch.randn(400, 12, generator=g, dtype=F64), (12,))
    cov = torch.cov(x.T)
    ev = torch.linalg.eigvalsh(cov)
    singular = float(ev[0] / ev[-1])
    mean, w = fit_whitening(x)
    y = apply_whitening(x, mean, w)
    eye = torch.eye(w.shape[1], dtype=F64)
    off = float((torch.cov(y.T) - eye).abs().max())
    dropped = 0.0 if w.shape[1] == 11 else 1.0
    return max(singular / 1e-12, off / 1e-9, dropped), 1.0


def check_adjacent_copies() -> tuple[float, float]:
    """Dropout on the doubled batch: adjacent copies differ in training mode and coincide at p = 0."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 16, generator=g, dtype=F64).repeat_interleave(2, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        noisy = torch.nn.functional.dropout(x, 0.3, training=True)
    differ = float((noisy[0::2] - noisy[1::2]).abs().amax(1).min())
    same = float((torch.nn.functional.dropout(x, 0.0, training=True)[0::2] - x[1::2]).abs().max())
    return max(same / 1e-15, 1e-3 / max(differ, 1e-300)), 1.0


# ----------------------------------------------------------------------------- record functions
def _best(rec: Mapping[str, Any], prefix: str) -> list[float]:
    """Per seed, the best score over the poolings of ``<prefix><pooling>``."""
    return [max(m[f"{prefix}{p}"] for p in POOLINGS) for m in rec["per_seed"]]


def _simcse_minus_whitening_best(recs: Sequence[Mapping[str, Any]]) -> list[float]:
    (rec,) = recs
    return [100 * (s - w) for s, w in zip(_best(rec, "simcse_"), _best(rec, "pretrained_whitening_"))]


def _whitening_gain_min(recs: Sequence[Mapping[str, Any]]) -> list[float]:
    (rec,) = recs
    return [100 * min(m[f"pretrained_whitening_{p}"] - m[f"pretrained_raw_{p}"] for p in POOLINGS)
            for m in rec["per_seed"]]


def _tfidf_minus_whitening(recs: Sequence[Mapping[str, Any]]) -> list[float]:
    (rec,) = recs
    return [100 * (m["bag_tfidf"] - w) for m, w in zip(rec["per_seed"], _best(rec, "pretrained_whitening_"))]


def _random_minus_pretrained_whitening(recs: Sequence[Mapping[str, Any]]) -> list[float]:
    (rec,) = recs
    return [100 * (r - p) for r, p in zip(_best(rec, "random_whitening_"), _best(rec, "pretrained_whitening_"))]


def _cls_minus_best_other(recs: Sequence[Mapping[str, Any]]) -> list[float]:
    (rec,) = recs
    return [100 * (m["simcse_cls"] - max(m[f"simcse_{p}"] for p in POOLINGS if p != "cls"))
            for m in rec["per_seed"]]


def _dropout_03_minus_others(recs: Sequence[Mapping[str, Any]]) -> list[float]:
    (rec,) = recs
    out = []
    for m in rec["per_seed"]:
        others = [v for k, v in m.items() if k.startswith("dropout_") and k != "dropout_0.3"]
        out.append(100 * (m["dropout_0.3"] - max(others)))
    return out


def _gap(rec: Mapping[str, Any], lr: str) -> list[float]:
    return [100 * (m[f"simcse_lr{lr}"] - m["whitening"]) for m in rec["per_seed"]]


def _gap_change(lr: str):  # noqa: ANN202 - a small closure factory
    def fn(recs: Sequence[Mapping[str, Any]]) -> list[float]:
        first, last = recs
        return [b - a for a, b in zip(_gap(first, lr), _gap(last, lr))]
    return fn


def _last_gap(lr: str):  # noqa: ANN202
    def fn(recs: Sequence[Mapping[str, Any]]) -> list[float]:
        return _gap(recs[0], lr)
    return fn


def _mlm_rises(recs: Sequence[Mapping[str, Any]]) -> list[float]:
    accs = [r["per_seed"][0]["mlm_accuracy"] for r in recs]
    rise = min(b - a for a, b in zip(accs, accs[1:]))
    return [100 * rise] * len(recs[0]["seeds"])


def _whitening_over_random(recs: Sequence[Mapping[str, Any]]) -> list[float]:
    random, shipped = recs
    return [100 * (b["whitening"] - a["whitening"]) for a, b in zip(random["per_seed"], shipped["per_seed"])]


def _e5_whitening_hurts(rec: Mapping[str, Any]) -> tuple[float, None, None, int]:
    sp = rec["spearman"]
    worst = max(sp[f"sts_b_{lang}_test_whitened"] - sp[f"sts_b_{lang}_test"] for lang in ("zh", "en"))
    return 100 * worst, None, None, 1


_TRAINED = [budget_record(b) for b in BUDGETS if b > 0]

CLAIMS: list[Claim] = [
    Claim(
        id="01.eq1-code",
        statement="The article's Eq. (1) is what its code computes, up to the factor 2N (the code takes the mean).",
        source="article", scale="float64 identity, N = 5", evidence="cell: ch01-simcse",
        criterion=Exact(check_eq1_is_code, what="relative difference of Eq. (1) and 2N x the code's loss"),
    ),
    Claim(
        id="01.official-differs",
        statement="Eq. (1) is not the official SimCSE loss, which has no same-view negatives and one direction.",
        source="ours", scale="float64, N = 6", evidence="cell: ch01-simcse",
        criterion=Exact(check_official_differs, what="1e-3 / |Eq. (1) mean − official loss|"),
    ),
    Claim(
        id="01.adjacent-copies",
        statement="Copies on adjacent rows get independent dropout masks, and coincide at dropout 0.",
        source="article", scale="float64", evidence="cell: ch01-simcse",
        criterion=Exact(check_adjacent_copies, what="worst of the two conditions, scaled to its bound"),
    ),
    Claim(
        id="01.whitening-null",
        statement="Post-LN vectors have a singular covariance; full whitening would divide by zero.",
        source="ours", scale="float64, 400 LayerNorm outputs of width 12", evidence="cell: ch01-whiten",
        criterion=Exact(check_whitening_null_direction, what="worst of the conditions, scaled to its bound"),
        note="fit_whitening drops the null direction; the whitened covariance is then the identity.",
    ),
    Claim(
        id="01.c1-simcse-beats-whitening",
        statement="Unsupervised SimCSE clearly beats BERT-whitening on Chinese STS-B (best pooling of each).",
        source="article", scale=_BOOK_SCALE, evidence=BOOK,
        criterion=PerSeed((BOOK,), _simcse_minus_whitening_best, what="best SimCSE − best whitening",
                          at_least=0.0, unit=" points"),
        note="A 4.5M-parameter encoder, not BERT-base: this tests the claim at the book's scale only.",
    ),
    Claim(
        id="01.c1-pawsx",
        statement="The exception is PAWSX, where whitening stays ahead.",
        source="article", scale="—", evidence="cell: ch01-pawsx",
        criterion=NotTested("PAWS-X does not ship offline; the chapter only recounts the article's own table."),
    ),
    Claim(
        id="01.whitening-improves-raw",
        statement="Whitening improves the raw embeddings for every pooling.",
        source="article", scale=_BOOK_SCALE, evidence=BOOK,
        criterion=PerSeed((BOOK,), _whitening_gain_min, what="smallest whitening − raw over the poolings",
                          at_least=0.0, unit=" points"),
        one_run="no training and no seed: the shipped encoder's raw and whitened scores are deterministic",
    ),
    Claim(
        id="01.tfidf-beats-whitening",
        statement="A TF-IDF bag of characters scores higher than every whitened pooling of the shipped encoder.",
        source="ours", scale=_BOOK_SCALE, evidence=BOOK,
        criterion=PerSeed((BOOK,), _tfidf_minus_whitening, what="TF-IDF − best whitening", at_least=0.0,
                          unit=" points"),
        one_run="no training and no seed: both scores are deterministic",
    ),
    Claim(
        id="01.random-matches-whitening",
        statement="A random encoder plus whitening scores within 3 points of the pretrained one plus whitening.",
        source="ours", scale=_BOOK_SCALE, evidence=BOOK,
        criterion=PerSeed((BOOK,), _random_minus_pretrained_whitening,
                          what="best random-init whitening − best pretrained whitening",
                          at_least=-3.0, at_most=3.0, unit=" points"),
        note="The seed draws the random encoder.",
    ),
    Claim(
        id="01.c3-first-last-no-edge",
        statement="With SimCSE, first-last-avg has no edge over last-avg (within 2 points).",
        source="article", scale=_BOOK_SCALE, evidence=BOOK,
        criterion=Within(BOOK, "simcse_first-last-avg", "simcse_last-avg", tol=2.0, scale=100, unit=" points"),
    ),
    Claim(
        id="01.c3-cls-does-well",
        statement="With SimCSE, [CLS] does well: within 2 points of the best other pooling or better.",
        source="article", scale=_BOOK_SCALE, evidence=BOOK,
        criterion=PerSeed((BOOK,), _cls_minus_best_other, what="SimCSE [CLS] − best other pooling",
                          at_least=-2.0, unit=" points"),
        note="The poolings are matched to the article's P1 to P4 by our inference.",
    ),
    Claim(
        id="01.c4-frozen-below-whitening",
        statement="SimCSE on a frozen encoder plus a linear layer does not reach whitening, "
                  "even at 100 times the learning rate.",
        source="article", scale=_BOOK_SCALE, evidence=BOOK,
        criterion=Difference(BOOK, "pretrained_whitening_last-avg", _FROZEN_LR, at_least=0.0, scale=100,
                             unit=" points"),
        note="At the recipe's rate the head barely leaves its orthogonal start, so the check there is close "
             "to a tautology; the larger rate is the informative version. Our head has no bias.",
    ),
    Claim(
        id="01.c5-dropout",
        statement="Dropout 0.3 works best for SimCSE (against 0.1 and 0.2).",
        source="article", scale=_BOOK_SCALE, evidence=BOOK,
        criterion=PerSeed((BOOK,), _dropout_03_minus_others, what="dropout 0.3 − best other rate", at_least=0.0,
                          unit=" points"),
    ),
    Claim(
        id="01.whitening-hurts-contrastive",
        statement="Whitening lowers a contrastively trained encoder's score (multilingual e5-small, "
                  "zh and en STS-B).",
        source="ours", scale="frozen e5-small, STS-B test in both languages, no training", evidence=E5,
        criterion=FromRecord(E5, _e5_whitening_hurts, what="largest whitened − raw over the two languages",
                             at_most=0.0, unit=" points"),
        one_run="no training and no seed: one deterministic evaluation of a frozen encoder",
    ),
    Claim(
        id="01.budget-mlm",
        statement="Held-out MLM accuracy rises at every step of the pretraining budget (250 to 3,500 steps).",
        source="ours", scale=_BUDGET_SCALE, evidence=budget_record(3500),
        criterion=PerSeed(tuple(_TRAINED), _mlm_rises, what="smallest rise between budgets", at_least=0.0,
                          unit=" points"),
        one_run="one pretraining run; its held-out accuracy is deterministic given the checkpoint",
    ),
    Claim(
        id="01.budget-whitening-learns",
        statement="After 3,500 pretraining steps, whitening scores higher than on a random encoder.",
        source="ours", scale=_BUDGET_SCALE, evidence=budget_record(3500),
        criterion=PerSeed((budget_record(0), budget_record(3500)), _whitening_over_random,
                          what="whitening at 3,500 steps − at random init", at_least=0.0, unit=" points"),
    ),
    Claim(
        id="01.budget-gap-closes",
        statement="SimCSE's gap to whitening narrows as pretraining grows from 250 to 3,500 steps "
                  "(SimCSE at lr 1e-4).",
        source="ours", scale=_BUDGET_SCALE, evidence=budget_record(3500),
        criterion=PerSeed((budget_record(250), budget_record(3500)), _gap_change("0.0001"),
                          what="gap at 3,500 − gap at 250 steps", at_least=0.0, unit=" points"),
    ),
    Claim(
        id="01.budget-gap-closes-article-lr",
        statement="The same holds for SimCSE at the article's lr (1e-5).",
        source="ours", scale=_BUDGET_SCALE, evidence=budget_record(3500),
        criterion=PerSeed((budget_record(250), budget_record(3500)), _gap_change("1e-05"),
                          what="gap at 3,500 − gap at 250 steps", at_least=0.0, unit=" points"),
    ),
    Claim(
        id="01.budget-still-behind",
        statement="At the shipped encoder's 3,500 steps, SimCSE (lr 1e-4) still trails whitening.",
        source="ours", scale=_BUDGET_SCALE, evidence=budget_record(3500),
        criterion=PerSeed((budget_record(3500),), _last_gap("0.0001"), what="SimCSE − whitening",
                          at_most=0.0, unit=" points"),
    ),
]
