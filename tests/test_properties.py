"""Property-based tests (Hypothesis): identities that must hold for every input, not only chosen ones.

Each property is one the chapters derive or the guide promises:

* RoPE's scores depend on relative positions only, in 1D (ch03, Eq. R11) and 2D
  (Eq. ch03-relativity), and rotations keep norms;
* BIO keeps every span set without overlaps and, for nested sets, keeps a subset
  without overlaps (ch02);
* padding never changes the encoder's output at real tokens, for every mixer,
  and never changes GlobalPointer's scores of real spans;
* the two-pass accumulation gives the full-batch gradient at every micro-batch
  size, including sizes that do not divide the batch (ch07);
* ``log_bessel_iv`` and the vMF KL agree with mpmath across orders and
  arguments spanning many decades (ch04);
* growing a model (wider, then deeper) keeps its function, for random shapes,
  norms, positions, head rules, conventions and factors (ch06).

The search is derandomized (the same examples on every run), so CI is
deterministic; ``HYPOTHESIS_PROFILE=explore`` searches more widely.
"""

from __future__ import annotations

import math
import os

import mpmath
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kexue.accumulation as acc
from kexue import growth, rope, spans, vmf
from kexue.globalpointer import GlobalPointer
from kexue.mixers import MIXERS
from kexue.nn import MaskedLM, TransformerConfig, TransformerEncoder

settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

F64 = torch.float64


def _tensor(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


positions = st.integers(-10_000, 10_000)
seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- RoPE
@given(half=st.integers(1, 16), m=positions, n=positions, shift=positions, seed=seeds,
       layout=st.sampled_from(["pairs", "rotate_half"]))
def test_rope_scores_depend_on_the_offset_only(half, m, n, shift, seed, layout):
    q, k = _tensor(seed, 1, 2 * half), _tensor(seed + 1, 1, 2 * half)

    def score(a: int, b: int) -> float:
        qa = rope.apply_rope(q, torch.tensor([a]), layout=layout)
        kb = rope.apply_rope(k, torch.tensor([b]), layout=layout)
        return float((qa * kb).sum())

    assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-9 * (1 + abs(score(m, n))))


@given(quarter=st.integers(1, 8), a=st.tuples(positions, positions), b=st.tuples(positions, positions),
       shift=st.tuples(positions, positions), seed=seeds,
       layout=st.sampled_from(["pairs", "rotate_half", "block4"]))
def test_rope_2d_scores_depend_on_the_offset_only(quarter, a, b, shift, seed, layout):
    q, k = _tensor(seed, 1, 4 * quarter), _tensor(seed + 1, 1, 4 * quarter)

    def score(p: tuple[int, int], r: tuple[int, int]) -> float:
        qp = rope.apply_rope_2d(q, torch.tensor([p]), layout=layout)
        kr = rope.apply_rope_2d(k, torch.tensor([r]), layout=layout)
        return float((qp * kr).sum())

    moved = score((a[0] + shift[0], a[1] + shift[1]), (b[0] + shift[0], b[1] + shift[1]))
    assert moved == pytest.approx(score(a, b), abs=1e-9 * (1 + abs(score(a, b))))


@given(half=st.integers(1, 16), seq=st.integers(1, 6), seed=seeds,
       pos=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=6, max_size=6))
def test_rope_keeps_every_vector_norm(half, seq, seed, pos):
    x = _tensor(seed, seq, 2 * half)
    out = rope.apply_rope(x, torch.tensor(pos[:seq], dtype=F64))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- BIO spans
@st.composite
def flat_spans(draw):
    """Non-overlapping (type, start, end) spans in a sentence of random length."""
    length = draw(st.integers(0, 30))
    cuts = sorted(draw(st.sets(st.integers(0, length), max_size=12)))
    out, prev = [], -1
    for i, j in zip(cuts, cuts[1:]):
        if i > prev and draw(st.booleans()):
            out.append((draw(st.integers(0, 3)), i, j - 1))
            prev = j - 1
    return length, out


@given(flat_spans())
def test_bio_round_trip_keeps_flat_spans(case):
    length, flat = case
    assert spans.bio_to_spans(spans.spans_to_bio(flat, length)) == set(flat)


@given(length=st.integers(1, 20),
       raw=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 19), st.integers(0, 6)), max_size=10))
def test_bio_keeps_a_non_overlapping_subset_of_nested_spans(length, raw):
    nested = {(t, i, min(i + w, length - 1)) for t, i, w in raw if i < length}
    kept = spans.bio_to_spans(spans.spans_to_bio(nested, length))
    assert kept <= nested
    cells = [c for _, i, j in kept for c in range(i, j + 1)]
    assert len(cells) == len(set(cells)), "kept spans overlap"
    # BIO drops a span only when it overlaps one it kept
    for t, i, j in nested - kept:
        assert any(not (j < a or b < i) for _, a, b in kept)


# ----------------------------------------------------------------------------- padding
@st.composite
def padded_batch(draw):
    batch, seq = draw(st.integers(1, 3)), draw(st.integers(2, 8))
    lengths = draw(st.lists(st.integers(1, seq), min_size=batch, max_size=batch))
    mask = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    return mask, draw(seeds)


@given(case=padded_batch(), mixer=st.sampled_from(sorted(MIXERS)), norm=st.sampled_from(["post", "pre"]))
def test_padding_never_changes_real_tokens_for_any_mixer(case, mixer, norm):
    mask, seed = case
    torch.manual_seed(seed % 1000)
    cfg = TransformerConfig(vocab_size=30, dim=8, depth=2, heads=2, ffn_dim=16, max_len=8, dropout=0.0,
                            attention_dropout=0.0, mixer=mixer, norm=norm)
    model = TransformerEncoder(cfg).double().eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, mask.shape, generator=g)
    junk = torch.where(mask, ids, torch.randint(0, 30, mask.shape, generator=g))
    with torch.no_grad():
        clean = model(torch.where(mask, ids, torch.zeros_like(ids)), mask)
        noisy = model(junk, mask)
    torch.testing.assert_close(noisy[mask], clean[mask], rtol=1e-10, atol=1e-10)


@given(case=padded_batch(), rope_on=st.booleans())
def test_padding_never_changes_globalpointer_scores_of_real_spans(case, rope_on):
    mask, seed = case
    torch.manual_seed(seed % 1000)
    head = GlobalPointer(6, 2, head_size=4, rope=rope_on).double()
    hidden = _tensor(seed, *mask.shape, 6)
    junk = torch.where(mask[..., None], hidden, _tensor(seed + 1, *mask.shape, 6, scale=1e3))
    with torch.no_grad():
        a, b = head(hidden, mask), head(junk, mask)
    real = (mask[:, None, :, None] & mask[:, None, None, :]).triu().expand_as(a)
    torch.testing.assert_close(b[real], a[real], rtol=1e-12, atol=1e-12)
    assert torch.equal(a[~real], b[~real]), "masked cells must not depend on the padding"


# ----------------------------------------------------------------------------- accumulation
@given(sentences=st.integers(2, 7), micro=st.integers(1, 14), seed=seeds,
       temperature=st.floats(0.05, 2.0))
def test_two_pass_gradient_equals_the_full_batch_at_every_micro_batch(sentences, micro, seed, temperature):
    torch.manual_seed(seed % 1000)
    encoder = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 4)).double()
    rows = _tensor(seed, sentences, 5).repeat_interleave(2, dim=0) + _tensor(seed + 1, 2 * sentences, 5, scale=0.1)

    def loss(h: torch.Tensor) -> torch.Tensor:
        return acc.simcse_loss(h, temperature)

    def grad(method) -> torch.Tensor:
        encoder.zero_grad(set_to_none=True)
        method(encoder, rows, loss, micro)
        return acc.grad_vector(encoder).clone()

    full, two = grad(acc.full_batch_backward), grad(acc.contrastive_backward)
    assert acc.relative_error(two, full) < 1e-12


# ----------------------------------------------------------------------------- Bessel and vMF
@given(half_order=st.integers(0, 400), log10_x=st.floats(-6, 5))
def test_log_bessel_iv_matches_mpmath(half_order, log10_x):
    v, x = half_order / 2, 10.0 ** log10_x
    got = float(vmf.log_bessel_iv(v, torch.tensor(x, dtype=F64)))
    want = float(mpmath.log(mpmath.besseli(v, mpmath.mpf(x))))
    assert got == pytest.approx(want, rel=1e-10, abs=1e-10)


@given(dim=st.integers(2, 300), log10_kappa=st.floats(-4, 4))
def test_vmf_kl_to_uniform_matches_mpmath(dim, log10_kappa):
    kappa = mpmath.mpf(10.0 ** log10_kappa)
    nu = mpmath.mpf(dim) / 2 - 1
    log_c = nu * mpmath.log(kappa) - (nu + 1) * mpmath.log(2 * mpmath.pi) - mpmath.log(mpmath.besseli(nu, kappa))
    area = mpmath.log(2) + (nu + 1) * mpmath.log(mpmath.pi) - mpmath.loggamma(nu + 1)
    ratio = mpmath.besseli(nu + 1, kappa) / mpmath.besseli(nu, kappa)
    want = float(log_c + area + kappa * ratio)  # E[log q] - log(1/area), with E[mu.z] = A_d(kappa)
    got = float(vmf.vmf_kl_uniform(torch.tensor(float(kappa), dtype=F64), dim))
    assert got >= 0
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12 * max(1.0, math.log(dim)))


# ----------------------------------------------------------------------------- growth
@given(heads=st.integers(1, 3), head_dim=st.sampled_from([2, 4]), depth=st.integers(1, 3),
       factor=st.integers(2, 3), norm=st.sampled_from(["pre", "post"]),
       position=st.sampled_from(["learned", "rotary", "none"]), head_rule=st.sampled_from(["size", "count"]),
       convention=st.sampled_from(["isometric", "copy"]), case=padded_batch())
def test_growing_wider_then_deeper_keeps_the_logits(heads, head_dim, depth, factor, norm, position, head_rule,
                                                    convention, case):
    mask, seed = case
    torch.manual_seed(seed % 1000)
    # layer_norm_eps = 0 makes post-LN deepening exact (with eps it is off by O(eps / variance))
    cfg = TransformerConfig(vocab_size=30, dim=heads * head_dim, depth=depth, heads=heads, ffn_dim=8,
                            max_len=8, dropout=0.0, attention_dropout=0.0, norm=norm, position=position,
                            layer_norm_eps=0.0)
    small = MaskedLM(cfg).double().eval()
    grown = growth.deepen(growth.widen(small, factor, heads=head_rule, convention=convention), 2,
                          generator=torch.Generator().manual_seed(seed))
    assert grown.config.dim == factor * cfg.dim and grown.config.depth == 2 * depth
    ids = torch.randint(1, 30, mask.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(grown(ids, mask)[mask], small(ids, mask)[mask], rtol=1e-9, atol=1e-9)
