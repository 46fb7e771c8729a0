"""Tests for kexue.rope (book chapter 03): 1D/2D RoPE, its references and layouts; the benchmark's variants.

The ViT experiment is tested in tests/test_experiments_ch03.py.
"""

from __future__ import annotations

import pytest
import torch

from kexue import rope
from kexue.nn import TransformerConfig, TransformerEncoder
from kexue.rope import (
    apply_rope,
    apply_rope_2d,
    apply_rope_2d_reference,
    layout_permutation,
    rope_2d_matrix,
    rope_matrix,
)

F64 = dict(rtol=1e-12, atol=1e-12)




def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# fast path == explicit matrices (forward and gradient), float64
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["pairs", "rotate_half"])
def test_apply_rope_equals_matrix_forward_and_grad(layout):
    g = _gen(1)
    x = torch.randn(3, 7, 16, dtype=torch.float64, generator=g, requires_grad=True)
    pos = torch.randn(7, dtype=torch.float64, generator=g) * 20
    pos.requires_grad_(True)
    fast = apply_rope(x, pos, 10000.0, layout=layout)
    slow = torch.stack([x[:, s] @ rope_matrix(pos[s], 16, layout=layout).T for s in range(7)], dim=1)
    torch.testing.assert_close(fast, slow, **F64)
    w = torch.randn(fast.shape, dtype=torch.float64, generator=g)
    gx_fast, gp_fast = torch.autograd.grad((fast * w).sum(), (x, pos))
    gx_slow, gp_slow = torch.autograd.grad((slow * w).sum(), (x, pos))
    torch.testing.assert_close(gx_fast, gx_slow, **F64)
    torch.testing.assert_close(gp_fast, gp_slow, **F64)


@pytest.mark.parametrize("layout", ["pairs", "rotate_half", "block4"])
def test_apply_rope_2d_equals_matrix_forward_and_grad(layout):
    g = _gen(2)
    x = torch.randn(2, 3, 9, 32, dtype=torch.float64, generator=g, requires_grad=True)
    pos = (torch.rand(9, 2, dtype=torch.float64, generator=g) * 30 - 5).requires_grad_(True)
    fast = apply_rope_2d(x, pos, 10000.0, layout=layout)
    slow = apply_rope_2d_reference(x, pos, 10000.0, layout=layout)
    torch.testing.assert_close(fast, slow, **F64)
    w = torch.randn(fast.shape, dtype=torch.float64, generator=g)
    gx_fast, gp_fast = torch.autograd.grad((fast * w).sum(), (x, pos))
    gx_slow, gp_slow = torch.autograd.grad((slow * w).sum(), (x, pos))
    torch.testing.assert_close(gx_fast, gx_slow, **F64)
    torch.testing.assert_close(gp_fast, gp_slow, rtol=1e-11, atol=1e-11)


def test_rope_2d_is_two_1d_ropes_on_the_halves():
    g = _gen(3)
    x = torch.randn(4, 10, 24, dtype=torch.float64, generator=g)
    pos = torch.randint(-50, 50, (10, 2), generator=g)
    out = apply_rope_2d(x, pos)
    torch.testing.assert_close(out[..., :12], apply_rope(x[..., :12], pos[:, 0]), **F64)
    torch.testing.assert_close(out[..., 12:], apply_rope(x[..., 12:], pos[:, 1]), **F64)


def test_matrix_is_the_exponential_of_commuting_generators():
    dim, theta_x, theta_y = 8, 0.3, -1.7
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    freqs = rope.rope_frequencies(dim // 2, dtype=torch.float64)
    B1 = torch.block_diag(*[f * J for f in freqs], torch.zeros(dim // 2, dim // 2, dtype=torch.float64))
    B2 = torch.block_diag(torch.zeros(dim // 2, dim // 2, dtype=torch.float64), *[f * J for f in freqs])
    torch.testing.assert_close(B1 @ B2, B2 @ B1, **F64)
    torch.testing.assert_close(B1.T, -B1, **F64)
    expm = torch.linalg.matrix_exp(theta_x * B1 + theta_y * B2)
    torch.testing.assert_close(expm, rope_2d_matrix((theta_x, theta_y), dim), **F64)


# ---------------------------------------------------------------------------
# group properties of the explicit matrices
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["pairs", "rotate_half", "block4"])
def test_orthogonal_and_relative(layout):
    g = _gen(4)
    eye = torch.eye(16, dtype=torch.float64)
    for _ in range(5):
        a, b = (torch.rand(2, dtype=torch.float64, generator=g) * 40 - 20 for _ in range(2))
        Ra, Rb = rope_2d_matrix(a, 16, layout=layout), rope_2d_matrix(b, 16, layout=layout)
        torch.testing.assert_close(Ra.T @ Ra, eye, **F64)
        torch.testing.assert_close(torch.linalg.det(Ra), torch.tensor(1.0, dtype=torch.float64), **F64)
        torch.testing.assert_close(Ra.T @ Rb, rope_2d_matrix(b - a, 16, layout=layout), **F64)


def test_1d_relativity_and_identity_at_zero():
    for m, n in [(0, 5), (3, -7), (12.5, 4.25)]:
        torch.testing.assert_close(rope_matrix(m, 12).T @ rope_matrix(n, 12), rope_matrix(n - m, 12), **F64)
    torch.testing.assert_close(rope_2d_matrix((0, 0), 12), torch.eye(12, dtype=torch.float64), **F64)


@pytest.mark.parametrize("layout", ["pairs", "rotate_half"])
def test_rope_matrix_of_a_position_vector_is_the_batch_of_scalar_matrices(layout):
    # contract: a 0-d position gives (dim, dim); a 1-d one of n positions gives (n, dim, dim)
    g = _gen(9)
    pos = torch.randn(6, dtype=torch.float64, generator=g) * 30
    batch = rope_matrix(pos, 10, 100.0, layout=layout)
    assert batch.shape == (6, 10, 10) and batch.dtype == torch.float64
    for i in range(6):
        single = rope_matrix(pos[i], 10, 100.0, layout=layout)
        assert single.shape == (10, 10)
        assert torch.equal(batch[i], single)
        assert torch.equal(single, rope_matrix(float(pos[i]), 10, 100.0, layout=layout))
    # integer and list positions work too (cast to dtype); an empty vector gives an empty batch
    ints = rope_matrix(torch.arange(4), 8, dtype=torch.float32)
    assert ints.dtype == torch.float32 and torch.equal(ints, rope_matrix([0, 1, 2, 3], 8, dtype=torch.float32))
    assert rope_matrix(torch.arange(0), 8).shape == (0, 8, 8)
    # the batch acts like apply_rope and stays differentiable in the positions
    x = torch.randn(6, 10, dtype=torch.float64, generator=g)
    p = pos.clone().requires_grad_(True)
    slow = torch.einsum("nde,ne->nd", rope_matrix(p, 10, 100.0, layout=layout), x)
    torch.testing.assert_close(slow, apply_rope(x, pos, 100.0, layout=layout), **F64)
    (grad,) = torch.autograd.grad(slow.sum(), p)
    (want,) = torch.autograd.grad(apply_rope(x, p, 100.0, layout=layout).sum(), p)
    torch.testing.assert_close(grad, want, **F64)


def test_scores_depend_only_on_the_2d_offset():
    g = _gen(5)
    q = torch.randn(64, dtype=torch.float64, generator=g)
    k = torch.randn(64, dtype=torch.float64, generator=g)
    grid = rope.grid_positions(16, 16)  # (256, 2)
    other = torch.tensor([[3, -2]])
    base = (apply_rope_2d(q.expand(256, 64), grid) * apply_rope_2d(k.expand(256, 64), grid + other)).sum(-1)
    shift = torch.tensor([[7, 11]])
    shifted = (
        apply_rope_2d(q.expand(256, 64), grid + shift) * apply_rope_2d(k.expand(256, 64), grid + other + shift)
    ).sum(-1)
    torch.testing.assert_close(base, shifted, **F64)
    torch.testing.assert_close(base, base[:1].expand(256), **F64)  # same offset everywhere -> same score
    # and swapping row/col of the offset does change the score (invertibility, not x + y)
    swapped = (apply_rope_2d(q[None], grid[:1]) * apply_rope_2d(k[None], grid[:1] + other.flip(-1))).sum()
    assert (swapped - base[0]).abs() > 1e-3


def test_x_plus_y_counterexample_is_not_invertible_but_ours_is():
    # Eq. (3): rotating by (x + y) theta gives R_{1,2} == R_{2,1}; 2D RoPE does not.
    assert not torch.allclose(rope_2d_matrix((1, 2), 8), rope_2d_matrix((2, 1), 8))
    torch.testing.assert_close(rope_matrix(1 + 2, 2), rope_matrix(2 + 1, 2), **F64)


def test_score_by_offset_flat_is_1d_and_2d_is_axis_symmetric():
    g = _gen(14)
    q, k = torch.randn(2, 3, 16, dtype=torch.float64, generator=g)
    size = 5
    flat = rope.score_by_offset(q, k, size, mode="flat")
    r = torch.arange(-(size - 1), size)
    idx = (r[:, None] * size + r[None, :]).flatten()
    one_d = (apply_rope(q[:, None], torch.zeros(1)) * apply_rope(k[:, None].expand(-1, len(idx), -1), idx)).sum(-1)
    torch.testing.assert_close(flat.flatten(), one_d.mean(0), **F64)
    ones = torch.ones(1, 16, dtype=torch.float64)
    two_d = rope.score_by_offset(ones, ones, size)
    torch.testing.assert_close(two_d, two_d.T, **F64)
    assert (rope.score_by_offset(ones, ones, size, mode="flat") - rope.score_by_offset(ones, ones, size, mode="flat").T).abs().max() > 0.1
    with pytest.raises(ValueError, match="mode"):
        rope.score_by_offset(q, k, size, mode="3d")


def test_tiled_cos_table_bug_breaks_orthogonality():
    # The pairing bug of ark-nlp #47 / bert4torch #1: .repeat(2) instead of .repeat_interleave(2).
    dim, m = 8, 3.0
    theta = rope.rope_frequencies(dim, dtype=torch.float64)
    cos, sin = (m * theta).cos().repeat(2), (m * theta).sin().repeat(2)
    rot = lambda v: torch.stack((-v[..., 1::2], v[..., ::2]), -1).flatten(-2)  # noqa: E731
    M = torch.eye(dim, dtype=torch.float64)
    buggy = M * cos + rot(M) * sin  # rows are images of basis vectors
    assert (buggy @ buggy.T - torch.eye(dim, dtype=torch.float64)).abs().max() > 1e-2
    good = M * (m * theta).cos().repeat_interleave(2) + rot(M) * (m * theta).sin().repeat_interleave(2)
    torch.testing.assert_close(good, apply_rope(M, torch.full((dim,), m, dtype=torch.float64)), **F64)


# ---------------------------------------------------------------------------
# conventions: layouts give the same scores after a fixed permutation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["rotate_half", "block4"])
def test_layouts_equal_after_permutation_2d(layout):
    g = _gen(6)
    q = torch.randn(2, 12, 32, dtype=torch.float64, generator=g)
    k = torch.randn(2, 12, 32, dtype=torch.float64, generator=g)
    pos = torch.randint(0, 9, (12, 2), generator=g)
    perm = layout_permutation(32, layout)
    assert sorted(perm.tolist()) == list(range(32))
    ref = apply_rope_2d(q, pos) @ apply_rope_2d(k, pos).transpose(-1, -2)
    alt = apply_rope_2d(q[..., perm], pos, layout=layout) @ apply_rope_2d(k[..., perm], pos, layout=layout).transpose(
        -1, -2
    )
    torch.testing.assert_close(alt, ref, **F64)
    torch.testing.assert_close(apply_rope_2d(q[..., perm], pos, layout=layout), apply_rope_2d(q, pos)[..., perm], **F64)
    # without the permutation the layouts are different maps
    wrong = apply_rope_2d(q, pos, layout=layout) @ apply_rope_2d(k, pos, layout=layout).transpose(-1, -2)
    assert (wrong - ref).abs().max() > 1e-3


def test_half_split_1d_equals_pairs_after_permutation():
    g = _gen(7)
    q = torch.randn(3, 20, 16, dtype=torch.float64, generator=g)
    k = torch.randn(3, 20, 16, dtype=torch.float64, generator=g)
    pos = torch.arange(20)
    perm = layout_permutation(16, "rotate_half")
    ref = apply_rope(q, pos) @ apply_rope(k, pos).transpose(-1, -2)
    alt = apply_rope(q[..., perm], pos, layout="rotate_half") @ apply_rope(
        k[..., perm], pos, layout="rotate_half"
    ).transpose(-1, -2)
    torch.testing.assert_close(alt, ref, **F64)


def test_matches_rotary_embedding_torch_axial():
    rot = pytest.importorskip("rotary_embedding_torch")
    H, W, dim = 5, 7, 32
    emb = rot.RotaryEmbedding(dim=dim // 2)
    freqs = emb.get_axial_freqs(H, W).double()  # (H, W, dim)
    x = torch.randn(2, 4, H, W, dim, dtype=torch.float64, generator=_gen(8))
    theirs = rot.apply_rotary_emb(freqs, x).reshape(2, 4, H * W, dim)
    ours = apply_rope_2d(x.reshape(2, 4, H * W, dim), rope.grid_positions(H, W))
    # their frequencies are float32, so compare at float32 precision
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# dtypes, devices, shapes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float32, 1e-5), (torch.float64, 1e-12)]
)
def test_dtypes_preserved_and_accurate(dtype, tol):
    g = _gen(9)
    x64 = torch.randn(2, 4, 30, 16, dtype=torch.float64, generator=g)
    pos = torch.randint(0, 200, (30, 2), generator=g)
    ref = apply_rope_2d(x64, pos)
    x = x64.to(dtype)
    out = apply_rope_2d(x, pos)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), apply_rope_2d(x.double(), pos), rtol=tol, atol=tol)
    out1 = apply_rope(x, pos[:, 0])
    assert out1.dtype == dtype
    torch.testing.assert_close(out1.double(), apply_rope(x.double(), pos[:, 0]), rtol=tol, atol=tol)
    assert torch.isfinite(out).all() and ref.shape == out.shape


def test_angles_at_least_fp32_for_large_positions():
    # fp16 cannot represent position 4097 * theta accurately; we form angles in fp32.
    x = torch.ones(1, 1, 8, dtype=torch.float16)
    pos = torch.tensor([[4097, 3001]])
    out = apply_rope_2d(x, pos)
    ref = apply_rope_2d(x.double(), pos)
    torch.testing.assert_close(out.double(), ref, rtol=2e-3, atol=2e-3)


def test_position_broadcasting_shapes():
    g = _gen(10)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, generator=g)
    pos = torch.randint(0, 10, (2, 5, 2), generator=g)
    out = apply_rope_2d(x, pos[:, None])  # (b, 1, s, 2) broadcasts over heads
    for b in range(2):
        torch.testing.assert_close(out[b], apply_rope_2d(x[b], pos[b]), **F64)
    # float positions equal integer positions with the same values
    torch.testing.assert_close(apply_rope_2d(x, pos[0].double()), apply_rope_2d(x, pos[0]), **F64)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: apply_rope(torch.randn(4, 7), torch.arange(4)), ValueError, "dim"),
        (lambda: apply_rope(torch.randn(4, 8), torch.arange(5)), ValueError, "positions"),
        (lambda: apply_rope(torch.randn(8), torch.arange(8)), ValueError, "x must have shape"),
        (lambda: apply_rope(torch.randn(4, 8), torch.arange(4), layout="bogus"), ValueError, "layout"),
        (lambda: apply_rope(torch.randn(4, 8), torch.arange(4), layout="block4"), ValueError, "layout"),
        (lambda: apply_rope_2d(torch.randn(4, 6), torch.zeros(4, 2)), ValueError, "dim"),
        (lambda: apply_rope_2d(torch.randn(4, 8), torch.zeros(4, 3)), ValueError, "positions"),
        (lambda: apply_rope_2d(torch.randn(4, 8), torch.zeros(5, 2)), ValueError, "positions"),
        (lambda: apply_rope_2d(torch.randn(4, 8), torch.zeros(4)), ValueError, "positions"),
        (lambda: apply_rope_2d(torch.ones(4, 8, dtype=torch.int64), torch.zeros(4, 2)), TypeError, "x must be"),
        (lambda: apply_rope_2d([[1.0] * 8] * 4, torch.zeros(4, 2)), TypeError, "x must be"),
        (lambda: apply_rope_2d(torch.randn(4, 8), torch.zeros(4, 2, dtype=torch.bool)), TypeError, "positions"),
        (lambda: rope_matrix(1.0, 5), ValueError, "dim"),
        (lambda: rope_matrix([[1.0, 2.0]], 4), ValueError, "position"),
        (lambda: rope_matrix(torch.tensor([True]), 4), ValueError, "position"),
        (lambda: rope_2d_matrix((1.0, 2.0), 6), ValueError, "dim"),
        (lambda: rope_2d_matrix((1.0, 2.0, 3.0), 8), ValueError, "position"),
        (lambda: rope.rope_frequencies(8, base=-1.0), ValueError, "base"),
        (lambda: layout_permutation(6, "block4"), ValueError, "dim"),
        (lambda: rope.grid_positions(0, 3), ValueError, "height"),
    ],
)
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# kexue.nn: position="rotary2d"
# ---------------------------------------------------------------------------
def _encoder(position: str) -> TransformerEncoder:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=11, dim=32, depth=2, heads=2, ffn_dim=64, max_len=64,
                            dropout=0.0, attention_dropout=0.0, position=position)
    return TransformerEncoder(cfg).double().eval()


def test_nn_rotary2d_translation_invariant_and_position_sensitive():
    enc = _encoder("rotary2d")
    ids = torch.randint(1, 11, (3, 12), generator=_gen(11))
    grid = rope.grid_positions(3, 4)  # (12, 2)
    out = enc(ids, positions=grid[None])  # (1, s, 2) shared by the batch
    # 2D RoPE only sees offsets: shifting every patch by the same (dx, dy) changes nothing
    torch.testing.assert_close(enc(ids, positions=(grid + torch.tensor([5, -3]))[None]), out, **F64)
    # per-example (b, s, 2) positions and a bare (s, 2) grid give the same result
    torch.testing.assert_close(enc(ids, positions=grid[None].expand(3, -1, -1)), out, **F64)
    torch.testing.assert_close(enc(ids, positions=grid), out, **F64)
    # transposing the grid (row <-> col) is a different geometry
    assert (enc(ids, positions=grid.flip(-1)[None]) - out).abs().max() > 1e-4


def test_nn_rotary2d_matches_manual_attention():
    enc = _encoder("rotary2d")
    attn = enc.blocks[0].attention
    x = torch.randn(2, 6, 32, dtype=torch.float64, generator=_gen(12))
    pos = torch.randint(0, 5, (2, 6, 2), generator=_gen(13))
    q, k, v = (attn._split(lin(x)) for lin in (attn.query, attn.key, attn.value))  # (b, h, s, hd)
    R = torch.stack([torch.stack([rope_2d_matrix(p, 16) for p in row]) for row in pos])  # (b, s, hd, hd)
    qr = torch.einsum("bsij,bhsj->bhsi", R, q)
    kr = torch.einsum("bsij,bhsj->bhsi", R, k)
    probs = torch.softmax(qr @ kr.transpose(-1, -2) / 4.0, dim=-1)
    expected = attn.output((probs @ v).transpose(1, 2).flatten(-2))
    torch.testing.assert_close(attn(x, positions=pos), expected, **F64)


def test_nn_rotary2d_requires_positions():
    enc = _encoder("rotary2d")
    with pytest.raises(ValueError, match="positions"):
        enc(torch.ones(1, 4, dtype=torch.long))


# ---------------------------------------------------------------------------
# the benchmark's variants
# ---------------------------------------------------------------------------
def test_benchmark_variants_are_equivalent():
    import importlib.util
    from pathlib import Path

    pytest.importorskip("rotary_embedding_torch")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "rope.py"
    spec = importlib.util.spec_from_file_location("bench_rope", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    variants = bench.make_variants(16, 16, torch.device("cpu"))
    assert set(variants) == set(bench.VARIANTS) == {"kexue", "rotary_embedding_torch", "real_formula", "matrix"}
    assert bench.check_equivalence(variants, (2, 2, 16, 16), torch.device("cpu")) < 1e-5


# ---------------------------------------------------------------------------
# large positions: float64 angles
# ---------------------------------------------------------------------------
def _relative_gap(dim: int = 64) -> float:
    """Largest ``|(R_m q).(R_n k) - (R_{m-n} q).(R_0 k)| / (|q||k|)`` in float32 at ``m ~ 1e6``."""
    g = _gen(21)
    q = torch.randn(4, 64, dim, generator=g)
    k = torch.randn(4, 64, dim, generator=g)
    m = 1_000_000 + torch.randint(0, 1000, (64,), generator=g)
    n = m - torch.randint(0, 500, (64,), generator=g)
    lhs = (apply_rope(q, m) * apply_rope(k, n)).sum(-1)
    rhs = (apply_rope(q, m - n) * apply_rope(k, torch.zeros_like(n))).sum(-1)
    return ((lhs - rhs).abs() / (q.norm(dim=-1) * k.norm(dim=-1))).max().item()


def test_relative_property_holds_at_a_million_in_float32():
    assert _relative_gap() < 1e-5  # float32 rounding of the rotation only (measured ~1e-7)


def test_relative_property_check_catches_float32_angles(monkeypatch):
    """The check above fails when the angles m * theta are formed in float32 (gap ~6e-3)."""
    monkeypatch.setattr(rope, "_ANGLE_DTYPE", torch.float32)
    assert _relative_gap() > 1e-4


@pytest.mark.parametrize("layout", ["pairs", "rotate_half", "block4"])
def test_2d_rope_at_large_positions_matches_float64(layout):
    g = _gen(22)
    x = torch.randn(3, 40, 16, dtype=torch.float64, generator=g)
    pos = 500_000 + torch.randint(0, 10_000, (40, 2), generator=g)
    out = apply_rope_2d(x.float(), pos, layout=layout)
    torch.testing.assert_close(out.double(), apply_rope_2d(x, pos, layout=layout), rtol=1e-5, atol=1e-5)
    angles = rope.rope_angles_2d(pos, 16, layout=layout, dtype=torch.float64)
    theta = rope.rope_frequencies(8, dtype=torch.float64)
    torch.testing.assert_close(angles[:, 0], pos[:, 0].double() * theta[0], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_positions_raise(bad):
    x = torch.randn(2, 4, 8)
    pos = torch.arange(4, dtype=torch.float32)
    pos[2] = bad
    with pytest.raises(ValueError, match="positions must be finite"):
        apply_rope(x, pos)
    with pytest.raises(ValueError, match="positions must be finite"):
        apply_rope_2d(x, torch.stack([pos, pos], dim=-1))
    with pytest.raises(ValueError, match="positions must be finite"):
        rope.rope_angles_2d(torch.stack([pos, pos], dim=-1), 8)
    with pytest.raises(ValueError, match="position must be finite"):
        rope_matrix(bad, 8)
