"""Chapter 03's claims (2D RoPE): derivation checks, the ViT comparisons and the benchmark.

The derivation claims are float64 recomputations through :mod:`kexue.rope` (the
chapter's asserting cells show each in full). The experimental claims are ours
(the article has no numbers): each comparison of :func:`kexue.experiments.ch03_rope.verdicts`
is judged over the paired seeds of a record, once on the 10-seed smoke record
``ch03_rope_smoke`` (sklearn digits, 8x8) and once on the book record
``ch03_rope_book`` (Fashion-MNIST, 28x28). The benchmark claims read
``benchmarks/rope``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from kexue import rope
from kexue.experiments import ch03_rope as ch03
from kexue.experiments.claims import (
    Claim, Difference, Exact, FromRecord, NotTested, interval,
)

__all__ = ["CLAIMS"]

F64 = torch.float64


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _worst(*parts: tuple[str, float, float]) -> tuple[float, float]:
    """Each part ``(kind, value, bound)``: ``"<="`` (value at most bound) or ``">="`` (at least).

    Returns ``(worst ratio, 1.0)``: every part as a fraction of what it may be
    (``value / bound`` for ``"<="``, ``bound / value`` for ``">="``), so the check
    passes when every part is within its bound.
    """
    ratios = []
    for kind, value, bound in parts:
        if kind == "<=":
            ratios.append(value / bound)
        elif kind == ">=":
            ratios.append(bound / value if value > 0 else float("inf"))
        else:
            raise ValueError(f"kind must be '<=' or '>=', got {kind!r}")
    return max(ratios), 1.0


# --------------------------------------------------------------------------- derivation checks

def check_flattened_anisotropic() -> tuple[float, float]:
    """Flattened score at (dx, dy) = 1D score at size * dx + dy; the q = k = 1 map is asymmetric."""
    size = 8
    q, k = torch.randn(2, 32, dtype=F64, generator=torch.Generator().manual_seed(0))
    flat = rope.score_by_offset(q[None], k[None], size, mode="flat")
    r = torch.arange(-(size - 1), size)
    shifted = (r[:, None] * size + r[None, :]).flatten()
    one_d = (rope.apply_rope(q[None], torch.zeros(1))
             * rope.apply_rope(k[None].expand(len(r) ** 2, -1), shifted)).sum(-1)
    ones = torch.ones(1, 32, dtype=F64)
    m = rope.score_by_offset(ones, ones, size, mode="flat")
    m2 = rope.score_by_offset(ones, ones, size, mode="2d")
    return _worst(("<=", _max_abs(flat.flatten(), one_d), 1e-12),
                  (">=", (m - m.T).abs().max().item(), 1.0),  # rows and columns differ
                  ("<=", (m2 - m2.T).abs().max().item(), 1e-12))  # 2D RoPE treats them alike


def check_relativity_not_enough() -> tuple[float, float]:
    """Rotating by (x + y) theta: relative, but R(1, 2) = R(2, 1); 2D RoPE recovers (3, 7) from R."""
    def xy(x: float, y: float) -> torch.Tensor:
        return rope.rope_matrix(x + y, 2)

    relative = max(_rel_error(xy, a, b) for a, b in [((1.0, 2.0), (-3.0, 0.5)), ((0.2, 4.0), (2.0, -1.0))])
    swapped = _max_abs(rope.rope_2d_matrix((1, 2), 8), rope.rope_2d_matrix((2, 1), 8))
    R = rope.rope_2d_matrix((3, 7), 8, base=100.0)
    slowest = rope.rope_frequencies(4, base=100.0, dtype=F64)[1]
    recovered = torch.atan2(R[[3, 7], [2, 6]], R[[2, 6], [2, 6]]) / slowest
    return _worst(("<=", relative, 1e-12),
                  ("<=", _max_abs(xy(1, 2), xy(2, 1)), 1e-12),
                  (">=", swapped, 0.1),
                  ("<=", _max_abs(recovered, torch.tensor([3.0, 7.0], dtype=F64)), 1e-12))


def _quat(a: float, b: float, c: float, d: float) -> torch.Tensor:
    return torch.tensor([[a, -b, -c, -d], [b, a, -d, c], [c, d, a, -b], [d, -c, b, a]], dtype=F64)


def _rel_error(R: Callable[..., torch.Tensor], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (R(*a).T @ R(*b) - R(b[0] - a[0], b[1] - a[1])).abs().max().item()


def check_quaternion() -> tuple[float, float]:
    """ij - ji = 2k; exp((x i + y j) t) misses relativity by >= 0.1, except along parallel moves."""
    i, j, k = _quat(0, 1, 0, 0), _quat(0, 0, 1, 0), _quat(0, 0, 0, 1)

    def Q(x: float, y: float) -> torch.Tensor:
        return torch.linalg.matrix_exp(0.7 * (x * i + y * j))

    return _worst(("<=", _max_abs(i @ j - j @ i, 2 * k), 1e-12),
                  (">=", _rel_error(Q, (1.3, -0.4), (0.2, 2.1)), 0.1),
                  ("<=", _rel_error(Q, (1.0, 2.0), (3.0, 6.0)), 1e-12))


def _expm(B: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_exp(B)


def _rel_error_1d(B: torch.Tensor, pairs: list[tuple[float, float]]) -> float:
    return max(_max_abs(_expm(m * B.T) @ _expm(n * B), _expm((n - m) * B)) for m, n in pairs)


def check_skew_1d() -> tuple[float, float]:
    """Eq. (ch03-1d-condition): holds for skew B, fails for a random B; the n = 0 slope is B^T + B."""
    pairs = [(0.7, -1.3), (2.0, 0.5), (-0.4, 1.1), (0.25, 0.0)]
    Bn = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    Bs = (Bn - Bn.T) / 2
    h = 1e-5

    def slope(B: torch.Tensor) -> torch.Tensor:  # d/dm [exp(m B^T) - exp(-m B)] at m = 0
        return ((_expm(h * B.T) - _expm(-h * B)) - (_expm(-h * B.T) - _expm(h * B))) / (2 * h)

    return _worst(("<=", _rel_error_1d(Bs, pairs), 1e-13),
                  (">=", _rel_error_1d(Bn, pairs), 0.1),
                  ("<=", _max_abs(slope(Bn), Bn.T + Bn), 1e-8),  # central difference
                  ("<=", slope(Bs).abs().max().item(), 1e-10))


def check_integer_positions() -> tuple[float, float]:
    """A non-skew B with exp(B) = I is relative on integer positions but not at m = 0.25."""
    Bi = 2 * torch.pi * torch.tensor([[0.0, -2.0], [0.5, 0.0]], dtype=F64)
    ints = [(float(m), float(n)) for m in range(-3, 4) for n in range(-3, 4)]
    return _worst(("<=", _rel_error_1d(Bi, ints), 1e-10),
                  (">=", _rel_error_1d(Bi, [(0.25, 0.0)]), 0.1),
                  (">=", _max_abs(Bi.T, -Bi), 1.0))  # B is far from skew


_J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
_Z = torch.zeros(2, 2, dtype=F64)
_B1, _B2 = torch.block_diag(_J, _Z), torch.block_diag(_Z, _J)


def _skew_pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    A, C = (torch.randn(4, 4, dtype=F64, generator=g) for _ in range(2))
    return A - A.T, C - C.T


def check_commuting_generators() -> tuple[float, float]:
    """Commuting skew generators are relative; a random skew pair misses by about the BCH estimate."""
    A, C = _skew_pair()

    def E(P: torch.Tensor, Q: torch.Tensor) -> Callable[[float, float], torch.Tensor]:
        return lambda x, y: _expm(x * P + y * Q)

    a, b = (0.3, -0.2), (0.1, 0.25)
    noncommuting = _rel_error(E(0.3 * A, 0.3 * C), a, b)
    bch = 0.5 * abs(b[0] * a[1] - a[0] * b[1]) * (0.09 * (A @ C - C @ A)).abs().max().item()
    h = 3e-4

    def gap(x: float, y: float) -> torch.Tensor:
        return _expm(x * A) @ _expm(y * C) - _expm(x * A + y * C)

    # Eq. (ch03-xy-term): the order-xy term is [A, C] / 2 (mixed second difference)
    mixed = (gap(h, h) - gap(h, -h) - gap(-h, h) + gap(-h, -h)) / (4 * h * h)
    return _worst(("<=", _max_abs(_B1 @ _B2, _B2 @ _B1), 1e-14),
                  ("<=", _rel_error(E(_B1, _B2), a, b), 1e-14),
                  (">=", noncommuting, 1e-4),
                  ("<=", noncommuting / bch, 3.0), (">=", noncommuting / bch, 1 / 3),
                  ("<=", _max_abs(mixed, (A @ C - C @ A) / 2), 1e-5))


def check_klein() -> tuple[float, float]:
    """Eq. (ch03-klein) is relative on Z^2; skew matrices commuting with R(1,0), R(0,1) vanish on its K part."""
    K1 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))
    K2 = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=F64))
    power = torch.linalg.matrix_power

    def klein(x: int, y: int) -> torch.Tensor:
        return torch.block_diag(rope.rope_2d_matrix((x, y), 4), power(K1, x) @ power(K2, y))

    gi = torch.Generator().manual_seed(1)
    rel = 0.0
    for _ in range(5):
        (x1, y1), (x2, y2) = torch.randint(-9, 10, (2, 2), generator=gi).tolist()
        rel = max(rel, _max_abs(klein(x1, y1).T @ klein(x2, y2), klein(x2 - x1, y2 - y1)))
    units = []
    for i, j in torch.triu_indices(7, 7, 1).T.tolist():
        U = torch.zeros(7, 7, dtype=F64)
        U[i, j], U[j, i] = -1.0, 1.0
        units.append(U)
    R10, R01 = klein(1, 0), klein(0, 1)
    brackets = torch.stack([torch.cat([(U @ R10 - R10 @ U).flatten(), (U @ R01 - R01 @ U).flatten()])
                            for U in units], 1)
    _, sv, vh = torch.linalg.svd(brackets)
    commutant = [sum(c * U for c, U in zip(v, units)) for v in vh[sv < 1e-9]]
    on_last = max(max(M[4:].abs().max().item(), M[:, 4:].abs().max().item()) for M in commutant)
    return _worst(("<=", rel, 1e-12),
                  ("<=", abs(len(commutant) - 2), 0.5),  # one generator per plane of the 4x4 block
                  ("<=", on_last, 1e-12))


def check_no_3x3() -> tuple[float, float]:
    """SymPy: commutation forces b = c = 0 in 3x3; in 4x4 it leaves d = c f, e = -b f."""
    import sympy as sp

    b, c, d, e, f = sp.symbols("b c d e f")
    S1 = sp.Matrix([[0, -1, 0], [1, 0, 0], [0, 0, 0]])
    S2 = sp.Matrix([[0, 0, -b], [0, 0, -c], [b, c, 0]])
    sol3 = sp.solve(list(S1 * S2 - S2 * S1), [b, c], dict=True)
    T1 = sp.Matrix([[0, -1, -b, 0], [1, 0, -c, 0], [b, c, 0, 0], [0, 0, 0, 0]])
    T2 = sp.Matrix([[0, 0, 0, -d], [0, 0, 0, -e], [0, 0, 0, -f], [d, e, f, 0]])
    sol4 = sp.solve(list(T1 * T2 - T2 * T1), [d, e], dict=True)
    wrong = int(sol3 != [{b: 0, c: 0}]) + int(sol4 != [{d: c * f, e: -b * f}])
    return float(wrong), 0.0


def _four_by_four(bv: float, cv: float, fv: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4x4 generators of Eq. (ch03-4x4) at numbers b, c, f (with d = c f, e = -b f)."""
    G1 = torch.tensor([[0, -1, -bv, 0], [1, 0, -cv, 0], [bv, cv, 0, 0], [0, 0, 0, 0]], dtype=F64)
    dv, ev = cv * fv, -bv * fv
    G2 = torch.tensor([[0, 0, 0, -dv], [0, 0, 0, -ev], [0, 0, 0, -fv], [dv, ev, fv, 0]], dtype=F64)
    return G1, G2


def check_rotated_basis() -> tuple[float, float]:
    """Eq. (ch03-rotated-basis) at b, c, f = 0.6, -1.1, 0.8: the block form in a rotated basis."""
    G1, G2 = _four_by_four(0.6, -1.1, 0.8)

    def plane(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        u = torch.linalg.svd(G).U[:, 0]
        return u, G @ u / (G @ u).norm(), (G @ u).norm()

    (u1, v1, w1), (u2, v2, w2) = plane(G1), plane(G2)
    P = torch.stack([u1, v1, u2, v2])
    root = (1 + 0.6**2 + 1.1**2) ** 0.5

    def block(x: float, y: float) -> torch.Tensor:  # Eq. (ch03-final) at frequencies w1, w2
        return _expm(x * w1 * _B1 + y * w2 * _B2)

    q4, k4 = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    scores = 0.0
    for (x1, y1), (x2, y2) in [((3.0, -2.0), (0.5, 4.0)), ((-7.5, 1.0), (2.0, 2.0))]:
        ours = (_expm(x1 * G1 + y1 * G2) @ q4) @ (_expm(x2 * G1 + y2 * G2) @ k4)
        theirs = (block(x1, y1) @ P @ q4) @ (block(x2, y2) @ P @ k4)
        scores = max(scores, abs((ours - theirs).item()))
    return _worst(("<=", _max_abs(G1 @ G2, G2 @ G1), 1e-12),
                  ("<=", _max_abs(P @ P.T, torch.eye(4, dtype=F64)), 1e-12),
                  ("<=", _max_abs(torch.stack([w1, w2]), torch.tensor([root, 0.8 * root], dtype=F64)), 1e-12),
                  ("<=", _max_abs(P @ G1 @ P.T, w1 * _B1), 1e-12),
                  ("<=", _max_abs(P @ G2 @ P.T, w2 * _B2), 1e-12),
                  ("<=", scores, 1e-11))


def check_final_form() -> tuple[float, float]:
    """Eq. (ch03-final) = matrix_exp of the generators; orthogonal, det 1 and relative at d = 64."""
    expm_err = max(_max_abs(_expm(0.3 * (x * _B1 + y * _B2)), rope.rope_2d_matrix((0.3 * x, 0.3 * y), 4))
                   for x, y in [(3.0, 7.0), (-1.5, 0.25)])
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(64, dtype=F64)
    errs = []
    for _ in range(5):
        p1, p2 = (torch.rand(2, dtype=F64, generator=g) * 200 - 100 for _ in range(2))
        R1, R2 = rope.rope_2d_matrix(p1, 64), rope.rope_2d_matrix(p2, 64)
        errs += [_max_abs(R1.T @ R1, eye), abs(torch.linalg.det(R1).item() - 1.0),
                 _max_abs(R1.T @ R2, rope.rope_2d_matrix(p2 - p1, 64))]
    return _worst(("<=", expm_err, 1e-12), ("<=", max(errs), 1e-12))


def check_two_halves() -> tuple[float, float]:
    """2D RoPE scores: fixed by the offset, a sum of two 1D scores; fast = matrix path; layouts agree."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 64, dtype=F64, generator=g)
    grid = rope.grid_positions(8, 8)
    offset = torch.tensor([[2, -5]])
    n = len(grid)
    s = (rope.apply_rope_2d(q.expand(n, 64), grid) * rope.apply_rope_2d(k.expand(n, 64), grid + offset)).sum(-1)
    halves = sum((rope.apply_rope(q[None, sl], torch.zeros(1)) * rope.apply_rope(k[None, sl], offset[:, i])).sum()
                 for i, sl in enumerate((slice(0, 32), slice(32, 64))))
    x = torch.randn(1, 2, 6, 16, dtype=F64, generator=g, requires_grad=True)  # small: the matrix path is slow
    pos = (torch.rand(6, 2, dtype=F64, generator=g) * 40 - 10).requires_grad_(True)
    fast, slow = rope.apply_rope_2d(x, pos), rope.apply_rope_2d_reference(x, pos)
    w = torch.randn(fast.shape, dtype=F64, generator=g)
    grads = max(_max_abs(a, b) for a, b in zip(torch.autograd.grad((fast * w).sum(), (x, pos)),
                                                torch.autograd.grad((slow * w).sum(), (x, pos))))
    p = rope.grid_positions(4, 5)
    qk = torch.randn(2, 3, 20, 32, dtype=F64, generator=g)
    ref = rope.apply_rope_2d(qk[0], p) @ rope.apply_rope_2d(qk[1], p).mT
    layouts = 0.0
    for layout in ("rotate_half", "block4"):
        perm = rope.layout_permutation(32, layout)
        alt = (rope.apply_rope_2d(qk[0][..., perm], p, layout=layout)
               @ rope.apply_rope_2d(qk[1][..., perm], p, layout=layout).mT)
        layouts = max(layouts, _max_abs(alt, ref))
    return _worst(("<=", _max_abs(s, s[:1].expand(n)), 1e-12),
                  ("<=", abs((s[0] - halves).item()), 1e-12),
                  ("<=", _max_abs(fast, slow), 1e-12),
                  ("<=", grads, 1e-11),
                  ("<=", layouts, 1e-12))


def check_peer_match() -> tuple[float, float]:
    """The default layout equals rotary-embedding-torch's axial rotary (its table is float32)."""
    import rotary_embedding_torch as ret

    qk = torch.randn(3, 20, 32, dtype=F64, generator=torch.Generator().manual_seed(0))
    freqs = ret.RotaryEmbedding(16).get_axial_freqs(4, 5).double()
    theirs = ret.apply_rotary_emb(freqs, qk.reshape(3, 4, 5, 32)).reshape(3, 20, 32)
    return _max_abs(rope.apply_rope_2d(qk, rope.grid_positions(4, 5)), theirs), 1e-5


# --------------------------------------------------------------------------- experiment records

SMOKE, BOOK = "ch03_rope_smoke", "ch03_rope_book"
SCALES = {
    SMOKE: "smoke profile, digits 8x8, 10 seeds",
    BOOK: "book profile: Fashion-MNIST 28x28 (10k train, 2k test), 4-block ViT, 3 seeds",
}
PROFILE = {SMOKE: "smoke", BOOK: "book"}
OTHERS = ("learned", "rotary")
key = ch03.acc_key


def _sizes(record: str) -> tuple[int, int, int]:
    """(training side, middle test side, largest test side) of the record's profile."""
    cfg = ch03.CONFIGS[PROFILE[record]]
    sizes = sorted(cfg.test_sizes)
    return cfg.image_size, sizes[1], sizes[-1]


def _seedwise(fn: Callable[[Mapping[str, float], Mapping[str, Any]], float]) -> Callable[..., Any]:
    """``fn(metrics, record)`` per seed -> (mean, lo, hi, n) over the record's seeds."""
    def over(rec: Mapping[str, Any]) -> tuple[float, float | None, float | None, int]:
        values = [fn(m, rec) for m in rec["per_seed"]]
        mean, lo, hi = interval(values)
        return mean, lo, hi, len(values)
    return over


def _train(m: Mapping[str, float], rec: Mapping[str, Any], p: str) -> float:
    return m[key(p, "upsample", rec["config"]["image_size"])]


def _big(rec: Mapping[str, Any]) -> int:
    return max(rec["config"]["test_sizes"])


def _margin_at_training_size(m: Mapping[str, float], rec: Mapping[str, Any]) -> float:
    """100 x (2D RoPE's training-size accuracy - the best encoding's)."""
    return 100 * (_train(m, rec, "rotary2d") - max(_train(m, rec, p) for p in ch03.POSITIONS))


def _smallest_drop(mode: str) -> Callable[[Mapping[str, float], Mapping[str, Any]], float]:
    def drop(m: Mapping[str, float], rec: Mapping[str, Any]) -> float:
        return 100 * min(_train(m, rec, p) - m[key(p, mode, _big(rec))] for p in ch03.POSITIONS)
    return drop


def _keys_margin(m: Mapping[str, float], rec: Mapping[str, Any]) -> float:
    """100 x (2D RoPE - the better of the other two) under pad_keys at the largest side."""
    big = _big(rec)
    return 100 * (m[key("rotary2d", "pad_keys", big)] - max(m[key(p, "pad_keys", big)] for p in OTHERS))


def _keys_others_drop(m: Mapping[str, float], rec: Mapping[str, Any]) -> float:
    """100 x the smaller training-to-pad_keys drop of learned and flattened 1D RoPE at the largest side."""
    return 100 * min(_train(m, rec, p) - m[key(p, "pad_keys", _big(rec))] for p in OTHERS)


def _pooling_share(m: Mapping[str, float], rec: Mapping[str, Any]) -> float:
    """The largest share of the pad drop that pooling only the image's patches recovers (over encodings)."""
    big = _big(rec)
    return max((m[key(p, "pad_pool", big)] - m[key(p, "pad", big)]) / (_train(m, rec, p) - m[key(p, "pad", big)])
               for p in ch03.POSITIONS)


def _keys_moved(m: Mapping[str, float], rec: Mapping[str, Any]) -> float:
    """Test images by which 2D RoPE's pad_keys accuracy differs from its training accuracy (worst side)."""
    n_test = rec["data"][f"{rec['config']['dataset']}/test"]["size"]
    return n_test * max(abs(m[key("rotary2d", "pad_keys", s)] - _train(m, rec, "rotary2d"))
                        for s in rec["config"]["test_sizes"])


def _experiment_claims(record: str) -> list[Claim]:
    _, mid, big = _sizes(record)
    tag = "smoke" if record == SMOKE else "book"
    scale = SCALES[record]
    pts = " points"
    common = dict(source="ours", scale=scale, evidence=record)
    return [
        Claim(
            id=f"03.train-size-{tag}",
            statement="At the training resolution 2D RoPE is within 5 accuracy points of the best "
                      "of the three encodings.",
            criterion=FromRecord(record, _seedwise(_margin_at_training_size),
                                 what="2D RoPE − best encoding at the training side (points, mean and 95% "
                                      "interval over seeds)", at_least=-5, unit=pts, digits=3),
            **common,
        ),
        Claim(
            id=f"03.mid-vs-flat-{tag}",
            statement=f"Upsampled to the middle test side ({mid} px), 2D RoPE beats flattened 1D RoPE.",
            criterion=Difference(record, key("rotary2d", "upsample", mid), key("rotary", "upsample", mid),
                                 at_least=0, scale=100, unit=pts),
            **common,
        ),
        Claim(
            id=f"03.mid-vs-learned-{tag}",
            statement=f"Upsampled to the middle test side ({mid} px), 2D RoPE beats the resized learned table.",
            criterion=Difference(record, key("rotary2d", "upsample", mid), key("learned", "upsample", mid),
                                 at_least=0, scale=100, unit=pts),
            **common,
        ),
        Claim(
            id=f"03.interp-vs-learned-{tag}",
            statement=f"Upsampled to the largest test side ({big} px), 2D RoPE with position interpolation "
                      "beats the resized learned table.",
            criterion=Difference(record, key("rotary2d", "upsample", big, True), key("learned", "upsample", big),
                                 at_least=0, scale=100, unit=pts),
            **common,
        ),
        Claim(
            id=f"03.interp-helps-{tag}",
            statement=f"Upsampled to the largest test side ({big} px), position interpolation helps 2D RoPE.",
            criterion=Difference(record, key("rotary2d", "upsample", big, True), key("rotary2d", "upsample", big),
                                 at_least=0, scale=100, unit=pts),
            **common,
        ),
        Claim(
            id=f"03.pad-drop-{tag}",
            statement=f"Padded to the largest test side ({big} px), every encoding ends more than 30 points "
                      "below its training accuracy.",
            criterion=FromRecord(record, _seedwise(_smallest_drop("pad")),
                                 what="smallest training − pad drop over the three encodings (points, mean and "
                                      "95% interval over seeds)", at_least=30, unit=pts, digits=3),
            **common,
        ),
        Claim(
            id=f"03.pad-pool-drop-{tag}",
            statement=f"So does every encoding at {big} px when only the image's patches are pooled (pad_pool).",
            criterion=FromRecord(record, _seedwise(_smallest_drop("pad_pool")),
                                 what="smallest training − pad_pool drop over the three encodings (points, mean "
                                      "and 95% interval over seeds)", at_least=30, unit=pts, digits=3),
            **common,
        ),
        Claim(
            id=f"03.pooling-share-{tag}",
            statement="Pooling only the image's patches recovers less than a tenth of the pad drop for every "
                      f"encoding at {big} px: the drop is not pooling dilution.",
            criterion=FromRecord(record, _seedwise(_pooling_share),
                                 what="largest share of the pad drop recovered by pad_pool over the encodings "
                                      "(mean and 95% interval over seeds)", at_most=0.1, digits=2),
            **common,
        ),
        Claim(
            id=f"03.pad-keys-exact-{tag}",
            statement="With the blank patches hidden as attention keys (pad_keys), 2D RoPE keeps its training "
                      "accuracy at every test side, to within one test image (Eq. ch03-relativity).",
            criterion=FromRecord(record, _seedwise(_keys_moved),
                                 what="test images by which 2D RoPE's pad_keys accuracy differs from its "
                                      "training accuracy, worst test side (mean and 95% interval over seeds)",
                                 at_most=1, unit=" images", digits=2),
            **common,
        ),
        Claim(
            id=f"03.pad-keys-beats-{tag}",
            statement=f"Under pad_keys at {big} px, 2D RoPE beats both flattened 1D RoPE and the learned table.",
            criterion=FromRecord(record, _seedwise(_keys_margin),
                                 what="2D RoPE − the better of the other two under pad_keys (points, mean and "
                                      "95% interval over seeds)", at_least=0, unit=pts, digits=3),
            **common,
        ),
        Claim(
            id=f"03.pad-keys-others-{tag}",
            statement=f"Under pad_keys at {big} px, flattened 1D RoPE and the learned table stay more than 30 "
                      "points below their training accuracy: hiding the blank keys gives them only part back.",
            criterion=FromRecord(record, _seedwise(_keys_others_drop),
                                 what="smaller training − pad_keys drop of learned and flattened 1D RoPE "
                                      "(points, mean and 95% interval over seeds)", at_least=30, unit=pts,
                                 digits=3),
            **common,
        ),
    ]


# --------------------------------------------------------------------------- benchmark record

BENCH = "benchmarks/rope"
BENCH_SCALE = "benchmark: 4 shapes, forward + backward, 1 intra-op thread, shared 2-core CPU"


def _ratio_over_shapes(name: str, pick: Callable[..., float]) -> Callable[[Mapping[str, Any]], Any]:
    """``pick`` (min or max) over shapes of a ratio, its bracket the same pick of the quartile brackets."""
    def fn(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
        rows = [r["ratios"][name] for r in rec["results"]]
        n = min(r["repeats"] for r in rec["results"])
        return pick(r["ratio"] for r in rows), pick(r["q1"] for r in rows), pick(r["q3"] for r in rows), n
    return fn


def _default_allocator_penalty(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """kexue's median time at the largest shape with glibc's default allocator over the main table's."""
    rows, default = rec["results"], rec["default_allocator"]["results"]
    i = max(range(len(rows)), key=lambda j: rows[j]["bytes_moved"])
    a, b = default[i]["ms"]["kexue"], rows[i]["ms"]["kexue"]
    n = min(default[i]["repeats"], rows[i]["repeats"])
    return a["median"] / b["median"], a["q1"] / b["q3"], a["q3"] / b["q1"], n


_BRACKET = ("; bracket: the same over each shape's [fast quartile / slow quartile, slow / fast] "
            "(the benchmark's interquartile bracket)")

_BENCH_CLAIMS = [
    Claim(
        id="03.faster-than-peer",
        statement="kexue's fast 2D path is faster than rotary-embedding-torch's axial rotary in every "
                  "benchmarked shape (forward + backward).",
        source="ours", scale=BENCH_SCALE, evidence=BENCH,
        criterion=FromRecord(BENCH, _ratio_over_shapes("peer_over_kexue", min),
                             what="smallest peer / kexue time ratio over shapes" + _BRACKET, at_least=1),
        note="The issue's target: at least as fast as rotary-embedding-torch.",
    ),
    Claim(
        id="03.faster-than-real-formula",
        statement="kexue's complex-multiplication path is faster than the textbook real formula with "
                  "precomputed full-width cos/sin tables in every benchmarked shape.",
        source="ours", scale=BENCH_SCALE, evidence=BENCH,
        criterion=FromRecord(BENCH, _ratio_over_shapes("real_formula_over_kexue", min),
                             what="smallest real-formula / kexue time ratio over shapes" + _BRACKET, at_least=1),
    ),
    Claim(
        id="03.near-floor",
        statement="kexue's fast 2D path takes at most 3x the memory-traffic floor (bytes moved over the "
                  "measured copy bandwidth) in every benchmarked shape.",
        source="ours", scale=BENCH_SCALE, evidence=BENCH,
        criterion=FromRecord(BENCH, _ratio_over_shapes("kexue_over_floor", max),
                             what="largest kexue / floor time ratio over shapes" + _BRACKET, at_most=3),
        note="The issue asked for 'close to the floor'; 3x is our reading of 'close'. The floor leaves out "
             "allocating outputs and forming the cos/sin tables.",
    ),
    Claim(
        id="03.default-allocator",
        statement="With glibc's default allocator, kexue is more than 1.5x slower at the largest shape than "
                  "with freed blocks kept for reuse (fresh pages are zeroed by the kernel on every call).",
        source="ours", scale=BENCH_SCALE, evidence=BENCH,
        criterion=FromRecord(BENCH, _default_allocator_penalty,
                             what="kexue's time at the largest shape, default allocator / reuse allocator; "
                                  "bracket from the two runs' quartiles", at_least=1.5),
        note="The two allocator passes are separate runs, not interleaved rounds.",
    ),
]


# --------------------------------------------------------------------------- the list

_DERIVATION = "float64 identity"
_WORST = "worst part over its bound"  # see _worst: each part as a fraction of what it may be


def _parts(*parts: str) -> str:
    return f"{_WORST} ({'; '.join(parts)})"


CLAIMS: list[Claim] = [
    Claim(
        id="03.flattened-anisotropic",
        statement="Flattening an h x w grid to one index makes one row step cost as much as h column steps.",
        source="article", scale="float64 identity, 8x8 grid, d = 32", evidence="cell: ch03-scores",
        criterion=Exact(check_flattened_anisotropic, what=_parts(
            "flattened score at (dx, dy) = 1D score at h·dx + dy, to 1e-12",
            "q = k = 1 map: flattened |S − Sᵀ| ≥ 1, 2D |S − Sᵀ| ≤ 1e-12")),
    ),
    Claim(
        id="03.relativity-not-enough",
        statement="Relativity alone is not enough: rotating by (x + y)θ is relative but gives (1, 2) and (2, 1) "
                  "the same matrix; 2D RoPE's matrix gives back the position.",
        source="article", scale=_DERIVATION, evidence="cell: ch03-derivation",
        criterion=Exact(check_relativity_not_enough, what=_parts(
            "(x + y)θ relative and R(1,2) = R(2,1), to 1e-12", "2D RoPE's R(1,2) − R(2,1) ≥ 0.1",
            "(3, 7) recovered from 2D RoPE's matrix, to 1e-12")),
    ),
    Claim(
        id="03.quaternion",
        statement="Quaternion exponentials exp((x i + y j)θ) are not relative because quaternion "
                  "multiplication does not commute (ij − ji = 2k).",
        source="article", scale=_DERIVATION, evidence="cell: ch03-derivation",
        criterion=Exact(check_quaternion, what=_parts(
            "ij − ji = 2k, to 1e-12", "relativity error ≥ 0.1 for general displacements",
            "≤ 1e-12 for parallel ones")),
    ),
    Claim(
        id="03.skew-1d",
        statement="With R_n = exp(nB), relativity holds exactly when B is skew-symmetric (the article shows "
                  "sufficiency; for real positions it is also necessary).",
        source="article", scale=_DERIVATION, evidence="cell: ch03-derivation",
        criterion=Exact(check_skew_1d, what=_parts(
            "relativity error ≤ 1e-13 for a skew B, ≥ 0.1 for a random B",
            "n = 0 slope = Bᵀ + B, to 1e-8 (central difference)")),
    ),
    Claim(
        id="03.skew-integers",
        statement="On integer positions relativity only needs exp(B) orthogonal (R_n = O^n): a non-skew B with "
                  "exp(B) = I works on integers and fails at a fractional position.",
        source="article", scale=_DERIVATION, evidence="cell: ch03-derivation",
        criterion=Exact(check_integer_positions, what=_parts(
            "relativity error ≤ 1e-10 on integer pairs", "≥ 0.1 at m = 0.25", "|Bᵀ + B| ≥ 1")),
    ),
    Claim(
        id="03.commuting-generators",
        statement="With R = exp(x B1 + y B2), relativity holds when B1, B2 are skew and commute; a "
                  "non-commuting skew pair breaks it at first order, by about the BCH estimate.",
        source="article", scale=_DERIVATION, evidence="cell: ch03-derivation",
        criterion=Exact(check_commuting_generators, what=_parts(
            "commuting pair relative to 1e-14", "non-commuting error ≥ 1e-4 and within 3x of the BCH estimate",
            "order-xy term = [B1, B2]/2, to 1e-5 (finite difference)")),
        note="Within the ansatz and for real positions the conditions are also necessary (the order-xy term).",
    ),
    Claim(
        id="03.klein",
        statement="Outside the exp(x B1 + y B2) ansatz the conditions are not necessary: Eq. (ch03-klein) is "
                  "relative and invertible on the integer grid without commuting skew generators.",
        source="ours", scale="float64 identity, integer positions in [−9, 9]", evidence="cell: ch03-derivation",
        criterion=Exact(check_klein, what=_parts(
            "relativity on 5 random integer pairs, to 1e-12",
            "the skew commutant of R(1,0), R(0,1) is 2-dimensional and zero on the last three axes")),
    ),
    Claim(
        id="03.no-3x3",
        statement="There is no 3x3 solution (commutation forces B2 = 0); the 4x4 one has d = cf, e = −bf.",
        source="article", scale="symbolic (SymPy)", evidence="cell: ch03-derivation",
        criterion=Exact(check_no_3x3, what="number of SymPy solutions that differ from the article's"),
    ),
    Claim(
        id="03.rotated-basis",
        statement="The other 4x4 solutions are more complicated: each is the simplest one in a rotated basis, "
                  "at frequencies ω1 = √(1+b²+c²) and ω2 = |f|ω1.",
        source="article", scale="float64 identity, b, c, f = 0.6, −1.1, 0.8", evidence="cell: ch03-derivation",
        criterion=Exact(check_rotated_basis, what=_parts(
            "P orthogonal, the two frequencies, P B Pᵀ = ω B_block, to 1e-12", "equal scores, to 1e-11")),
        note="The article says only that other solutions exist and are more complicated; the rotated basis is "
             "ours.",
    ),
    Claim(
        id="03.final-form",
        statement="The simplest solution is block-diagonal (two 1D rotations, by xθ and yθ), orthogonal, of "
                  "unit determinant and relative.",
        source="article", scale="float64 identity, d = 64, random real positions in [−100, 100]",
        evidence="cell: ch03-derivation",
        criterion=Exact(check_final_form, what=_parts(
            "= matrix_exp of the generators", "RᵀR = I, det R = 1 and relativity, each to 1e-12")),
    ),
    Claim(
        id="03.two-halves",
        statement="Implementation: split each head in two halves and apply 1D RoPE with x to one and with y to "
                  "the other; layouts agree after a fixed permutation.",
        source="article", scale="float64 identity, d = 16, 32 and 64", evidence="cell: ch03-implementation",
        criterion=Exact(check_two_halves, what=_parts(
            "score fixed by the offset and = sum of two 1D scores", "fast = matrix path",
            "layouts agree after the permutation, each to 1e-12", "gradients to 1e-11")),
    ),
    Claim(
        id="03.matches-peer",
        statement="The default layout equals rotary-embedding-torch's axial rotary (get_axial_freqs).",
        source="ours", scale="float64 input, the peer's float32 frequency table",
        evidence="cell: ch03-implementation",
        criterion=Exact(check_peer_match, what="max |kexue − rotary-embedding-torch|"),
    ),
    Claim(
        id="03.promising",
        statement="Early results with 2D RoPE were promising, and members of EleutherAI found it better than "
                  "the position encodings they compared (the article gives no numbers).",
        source="article", scale="—", evidence="cell: ch03-experiment",
        criterion=NotTested("the article reports no setup or numbers to compare with; our small-ViT "
                            "comparisons are the claims below"),
    ),
    Claim(
        id="03.heo-imagenet",
        statement="On ImageNet-1k (ViT-S, DeiT-III recipe), axial 2D RoPE beats learned absolute positions at "
                  "224 px and 384 px (their top-1: 80.9 vs 80.4 and 80.0 vs 79.4).",
        source="paper: Heo et al. 2024", scale="—", evidence="cell: ch03-experiment",
        criterion=NotTested("ImageNet-scale ViT training (400 epochs) is far beyond any profile we ran; "
                            "their numbers are quoted, not reproduced"),
    ),
    *_experiment_claims(SMOKE),
    *_experiment_claims(BOOK),
    *_BENCH_CLAIMS,
]
