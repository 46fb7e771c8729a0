"""Tests for kexue.vmf (chapter 04: vMF-VAE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from kexue.vmf import (
    HypersphericalUniform,
    VonMisesFisher,
    bessel_ratio,
    implicit_dw_dkappa,
    log_bessel_iv,
    log_sphere_area,
    log_vmf_normalizer,
    mean_resultant_length,
    sample_w_grid,
    sample_w_wood,
    vmf_entropy,
    vmf_kl_uniform,
    w_log_density,
)

F64 = torch.float64


DIMS = [2, 3, 4, 16, 128, 1024]
KAPPAS = [1e-4, 1e-2, 1.0, 20.0, 1000.0, 1e5]


def _unit(d: int, seed: int = 0, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, d, generator=g, dtype=F64)
    return x / x.norm(dim=-1, keepdim=True)


def _naive_log_iv(v: float, x: torch.Tensor, terms: int = 200) -> torch.Tensor:
    """Formula-level reference: the power series of I_v in log space (moderate x only)."""
    k = torch.arange(terms, dtype=F64)
    logt = (2 * k + v) * torch.log(x[..., None] / 2) - torch.lgamma(k + 1) - torch.lgamma(k + v + 1)
    return torch.logsumexp(logt, dim=-1)


# ---------------------------------------------------------------- Bessel functions
@pytest.mark.parametrize("d", DIMS)
def test_log_bessel_and_ratio_match_scipy(d: int) -> None:
    v = d / 2 - 1
    x = torch.tensor(KAPPAS, dtype=F64)
    ive_v = special.ive(v, x.numpy())
    ok = ive_v > 0  # scipy underflows to 0 for large v, small x; we do not
    ref = np.log(ive_v[ok]) + x.numpy()[ok]
    got = log_bessel_iv(v, x).numpy()[ok]
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)
    ratio_ref = special.ive(v + 1, x.numpy()[ok]) / ive_v[ok]
    np.testing.assert_allclose(bessel_ratio(v, x).numpy()[ok], ratio_ref, rtol=1e-10)


def test_log_bessel_matches_naive_series_forward_and_gradient() -> None:
    x = torch.tensor([0.3, 2.0, 7.5, 25.0], dtype=F64, requires_grad=True)
    for v in [0.0, 0.5, 1.0, 7.0, 63.0]:
        fast = log_bessel_iv(v, x)
        naive = _naive_log_iv(v, x)
        torch.testing.assert_close(fast, naive, rtol=1e-11, atol=1e-11)
        g_fast, = torch.autograd.grad(fast.sum(), x)
        g_naive, = torch.autograd.grad(naive.sum(), x)
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-10, atol=1e-12)


def test_gradcheck_bessel_functions() -> None:
    x = torch.tensor([0.01, 0.7, 5.0, 300.0], dtype=F64, requires_grad=True)
    for v in [0.0, 1.5, 200.0]:
        assert torch.autograd.gradcheck(lambda t: log_bessel_iv(v, t), (x,))
        assert torch.autograd.gradcheck(lambda t: bessel_ratio(v, t), (x,))


def test_stability_grid_float64_and_float32() -> None:
    for dtype in (F64, torch.float32):
        kappa = torch.tensor(KAPPAS, dtype=dtype, requires_grad=True)
        for d in DIMS:
            a = mean_resultant_length(kappa, d)
            kl = vmf_kl_uniform(kappa, d)
            h = vmf_entropy(kappa, d)
            c = log_vmf_normalizer(kappa, d)
            for t in (a, kl, h, c):
                assert t.dtype == dtype and torch.isfinite(t).all(), (d, dtype, t)
            assert ((a > 0) & (a < 1)).all()
            assert (kl >= 0).all() and (kl[1:] >= kl[:-1]).all(), "KL must grow with kappa"
            (g,) = torch.autograd.grad((kl + a + c).sum(), kappa)
            assert torch.isfinite(g).all()


def test_small_and_large_kappa_limits() -> None:
    # KL ~ kappa^2 / (2d) as kappa -> 0, E[w] ~ kappa / d
    for d in [2, 4, 128]:
        k = torch.tensor(1e-3, dtype=F64)
        torch.testing.assert_close(vmf_kl_uniform(k, d), k**2 / (2 * d), rtol=1e-3, atol=0)
        torch.testing.assert_close(mean_resultant_length(k, d), k / d, rtol=1e-3, atol=0)
    # kappa = 0 is the uniform distribution
    assert vmf_kl_uniform(torch.tensor(0.0, dtype=F64), 5).item() == 0.0
    torch.testing.assert_close(
        log_vmf_normalizer(torch.tensor(0.0, dtype=F64), 5), torch.tensor(-log_sphere_area(5), dtype=F64)
    )


# ---------------------------------------------------------------- density, entropy, KL
@pytest.mark.parametrize("d,kappa", [(2, 0.5), (3, 1.0), (4, 20.0), (16, 10.0), (128, 100.0), (512, 300.0)])
def test_log_prob_and_entropy_match_scipy(d: int, kappa: float) -> None:
    mu = _unit(d, seed=d)
    ref = stats.vonmises_fisher(mu.numpy(), kappa)
    x = torch.tensor(ref.rvs(7, random_state=1), dtype=F64)
    q = VonMisesFisher(mu, torch.tensor(kappa, dtype=F64))
    np.testing.assert_allclose(q.log_prob(x).numpy(), ref.logpdf(x.numpy()), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(q.entropy().item(), ref.entropy(), rtol=1e-10, atol=1e-10)


def test_where_scipy_overflows_we_match_the_series() -> None:
    # scipy's logpdf uses log(ive(d/2-1, kappa)), which underflows to log(0) at d=512, kappa=3
    d, kappa = 512, 3.0
    mu = _unit(d)
    with np.errstate(divide="ignore"):
        assert not np.isfinite(stats.vonmises_fisher(mu.numpy(), kappa).logpdf(mu.numpy()))
    k = torch.tensor(kappa, dtype=F64)
    v = d / 2 - 1
    naive = v * torch.log(k) - d / 2 * math.log(2 * math.pi) - _naive_log_iv(v, k)
    torch.testing.assert_close(log_vmf_normalizer(k, d), naive, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(VonMisesFisher(mu, k).log_prob(mu), naive + k)


def test_batch_shapes_and_broadcasting() -> None:
    mu = _unit(5, batch=(4, 3))
    kappa = torch.tensor([1.0, 10.0, 100.0], dtype=F64)
    q = VonMisesFisher(mu, kappa)
    assert q.batch_shape == (4, 3) and q.event_shape == (5,)
    z = q.rsample((2,))
    assert z.shape == (2, 4, 3, 5)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2, 4, 3, dtype=F64))
    assert q.log_prob(z).shape == (2, 4, 3)
    assert q.mean.shape == (4, 3, 5) and q.entropy().shape == (3,) or q.entropy().shape == (4, 3)


def test_kl_article_value_and_digest_table() -> None:
    kl = torch.distributions.kl_divergence(
        VonMisesFisher(_unit(4), torch.tensor(20.0, dtype=F64)), HypersphericalUniform(4, dtype=F64)
    )
    assert abs(kl.item() - 3.25839) < 5e-6
    # independent check of the closed form: KL = -H + log|S^{d-1}| with scipy's entropy
    for d, k in [(3, 1.0), (16, 10.0), (64, 100.0), (128, 100.0)]:
        ref = -stats.vonmises_fisher(_unit(d).numpy(), k).entropy() + log_sphere_area(d)
        np.testing.assert_allclose(vmf_kl_uniform(torch.tensor(k, dtype=F64), d).item(), ref, rtol=1e-10)
    # d = 3 closed form: kappa coth kappa - 1 + log(kappa / sinh kappa)
    k = torch.tensor(10.0, dtype=F64)
    torch.testing.assert_close(vmf_kl_uniform(k, 3), k / torch.tanh(k) - 1 + torch.log(k / torch.sinh(k)))


def test_kl_matches_monte_carlo_and_does_not_depend_on_mu() -> None:
    torch.manual_seed(0)
    d, kappa = 16, torch.tensor(10.0, dtype=F64)
    prior = HypersphericalUniform(d, dtype=F64)
    exact = vmf_kl_uniform(kappa, d)
    for seed in range(3):
        q = VonMisesFisher(_unit(d, seed=seed), kappa)
        z = q.sample((20000,))
        mc = (q.log_prob(z) - prior.log_prob(z)).mean()
        # MC standard error: kappa * sd(w) / sqrt(n)
        se = kappa * math.sqrt(1 - 0.4876**2) / math.sqrt(20000)
        assert abs(mc - exact).item() < 5 * se
        torch.testing.assert_close(torch.distributions.kl_divergence(q, prior), exact)


def test_kl_derivative_is_kappa_times_var_w() -> None:
    kappa = torch.tensor([0.5, 10.0, 300.0], dtype=F64, requires_grad=True)
    for d in [3, 16, 256]:
        (g,) = torch.autograd.grad(vmf_kl_uniform(kappa, d).sum(), kappa)
        a = mean_resultant_length(kappa.detach(), d)
        var_w = 1 - a**2 - (d - 1) * a / kappa.detach()
        assert (var_w > 0).all()
        torch.testing.assert_close(g, kappa.detach() * var_w, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- the density of w and sampling
@pytest.mark.parametrize("d,kappa", [(2, 1.0), (4, 20.0), (16, 50.0), (128, 100.0)])
def test_w_density_normalised_and_mean_is_A(d: int, kappa: float) -> None:
    k = torch.tensor(kappa, dtype=F64)

    def f(w: float) -> float:
        return math.exp(w_log_density(torch.tensor(w, dtype=F64), k, d).item())

    # for d = 2 use w = cos(theta) to avoid the endpoint singularity
    if d == 2:
        mass = integrate.quad(lambda t: f(math.cos(t)) * math.sin(t), 0, math.pi)[0]
        mean = integrate.quad(lambda t: math.cos(t) * f(math.cos(t)) * math.sin(t), 0, math.pi)[0]
    else:
        mass = integrate.quad(f, -1, 1, points=[mean_resultant_length(k, d).item()], limit=200)[0]
        mean = integrate.quad(lambda w: w * f(w), -1, 1, points=[mean_resultant_length(k, d).item()], limit=200)[0]
    assert abs(mass - 1) < 1e-8
    assert abs(mean - mean_resultant_length(k, d).item()) < 1e-8


@pytest.mark.parametrize("d,kappa", [(2, 1.0), (3, 20.0), (4, 20.0), (16, 1.0), (128, 20.0), (1024, 1000.0)])
def test_wood_samples_match_scipy_ks(d: int, kappa: float) -> None:
    torch.manual_seed(1)
    n = 20000
    w, omw = sample_w_wood(torch.full((n,), kappa, dtype=F64), d)
    torch.testing.assert_close(1 - w, omw, rtol=1e-6, atol=1e-15)
    if d <= 128:  # two-sample KS against scipy's sampler
        ref = stats.vonmises_fisher(_unit(d).numpy(), kappa).rvs(n, random_state=2) @ _unit(d).numpy()
        assert stats.ks_2samp(w.numpy(), ref).pvalue > 0.01
    # one-sample KS against the exact CDF of eq. (8), tabulated in numpy with w = cos(theta)
    theta = np.linspace(np.pi, 0, 400001)
    logf = kappa * np.cos(theta) + (d - 2) * np.log(np.maximum(np.sin(theta), 1e-300))
    f = np.exp(logf - logf.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]))])
    cdf /= cdf[-1]
    assert stats.kstest(w.numpy(), lambda x: np.interp(x, np.cos(theta), cdf)).pvalue > 0.01
    a = mean_resultant_length(torch.tensor(kappa, dtype=F64), d).item()
    sd = math.sqrt(1 - a * a - (d - 1) * a / kappa)
    assert abs(w.mean().item() - a) < 5 * sd / math.sqrt(n)


def test_rsample_moments_and_unit_norm() -> None:
    torch.manual_seed(2)
    d, kappa = 6, 4.0
    mu = _unit(d, seed=3)
    q = VonMisesFisher(mu, kappa)
    z = q.rsample((40000,))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(40000, dtype=F64))
    a = mean_resultant_length(torch.tensor(kappa, dtype=F64), d)
    torch.testing.assert_close(z.mean(0), a * mu, atol=0.01, rtol=0)
    second = z.T @ z / z.shape[0]
    expect = a / kappa * torch.eye(d, dtype=F64) + (1 - d * a / kappa) * torch.outer(mu, mu)
    torch.testing.assert_close(second, expect, atol=0.01, rtol=0)
    # the orthogonal part is isotropic: no preferred direction in mu's complement
    assert q.sample((3,)).requires_grad is False


def test_log_prob_cache_and_concentration_gradient() -> None:
    mu = _unit(4)
    q = VonMisesFisher(mu, torch.tensor(3.0, dtype=F64))
    x = q.sample((5,))
    torch.testing.assert_close(q.log_prob(x), q.log_prob(x))
    k = torch.tensor(3.0, dtype=F64, requires_grad=True)
    qk = VonMisesFisher(mu, k)
    for _ in range(2):  # two backward passes must both work
        (g,) = torch.autograd.grad(qk.log_prob(x).sum(), k)
        a = mean_resultant_length(torch.tensor(3.0, dtype=F64), 4)
        torch.testing.assert_close(g, (x @ mu - a).sum())  # d/dkappa log p = <mu, x> - A_d


def test_float32_loc_keeps_dtype_and_large_kappa_stays_on_sphere() -> None:
    mu = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32)
    for kappa in [1e-4, 1e4, 1e5]:
        z = VonMisesFisher(mu, kappa).rsample((1000,))
        assert z.dtype == torch.float32 and torch.isfinite(z).all()
        torch.testing.assert_close(z.norm(dim=-1), torch.ones(1000), atol=1e-5, rtol=0)


def test_grid_sampler_bias_shrinks_and_trapezoid_is_better() -> None:
    torch.manual_seed(3)
    d, kappa = 4, 20.0
    a = mean_resultant_length(torch.tensor(kappa, dtype=F64), d).item()
    g = torch.Generator().manual_seed(0)
    # same uniforms for both rules: the difference is pure grid error
    coarse = sample_w_grid(200000, kappa, d, step=1e-2, rule="article", generator=g).mean().item()
    g.manual_seed(0)
    trap = sample_w_grid(200000, kappa, d, step=1e-2, rule="trapezoid", generator=g).mean().item()
    g.manual_seed(0)
    fine = sample_w_grid(200000, kappa, d, step=1e-5, rule="article", generator=g).mean().item()
    se = math.sqrt(1 - a * a - (d - 1) * a / kappa) / math.sqrt(200000)
    assert coarse < a - 10 * se  # the article's cumulative sum shifts every draw by about -step/2
    assert abs(fine - a) < 5 * se
    assert abs(trap - a) < 5 * se


@pytest.mark.parametrize("d,kappa", [(16, 10.0), (64, 100.0), (8, 3.0)])
def test_article_grid_shifts_draws_by_minus_half_a_step(d: int, kappa: float) -> None:
    # the cumulative sum includes the current point: it estimates F(x_i + h/2), so the inverse
    # returns F^{-1}(u) - h/2 whatever the density (its end cells are negligible for d >= 8)
    n = 400_000
    u = (torch.arange(n, dtype=F64) + 0.5) / n
    a = mean_resultant_length(torch.tensor(kappa, dtype=F64), d).item()
    for h in (1e-2, 1e-3):
        bias = sample_w_grid(0, kappa, d, step=h, u=u).mean().item() - a
        assert abs(bias / (-h / 2) - 1) < 5e-3, (h, bias)
        # a variant that includes only the points strictly before x_i is shifted the other way
        x = torch.arange(-1.0 + h, 1.0, h, dtype=F64)
        y = kappa * x + 0.5 * (d - 3) * torch.log1p(-x * x)
        f = torch.exp(y - y.max())
        left = torch.cumsum(f, 0) - f
        w = np.interp(u.numpy(), (left / left[-1]).numpy(), x.numpy())
        assert abs((w.mean() - a) / (h / 2) - 1) < 5e-3


def test_article_grid_at_d3_adds_the_missing_end_cells() -> None:
    # d = 3: f(w) = kappa e^{kappa w} / (2 sinh kappa) is finite at +-1, so the dropped end cells add
    # -(h/2) [f(1)(1 - A) - f(-1)(1 + A)] to the -h/2 shift
    kappa, h, n = 1.0, 1e-3, 1_000_000
    u = (torch.arange(n, dtype=F64) + 0.5) / n
    a = mean_resultant_length(torch.tensor(kappa, dtype=F64), 3).item()
    f_top, f_bottom = (kappa * math.exp(kappa * w) / (2 * math.sinh(kappa)) for w in (1.0, -1.0))
    predicted = -(h / 2) * (1 + f_top * (1 - a) - f_bottom * (1 + a))
    bias = sample_w_grid(0, kappa, 3, step=h, u=u).mean().item() - a
    assert abs(bias / predicted - 1) < 5e-3 and abs(bias / (-h / 2) - 1) > 0.5


# ---------------------------------------------------------------- SciPy's logpdf where ive underflows
def _mp_log_normalizer(d: int, kappa: float) -> float:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    v, k = mpmath.mpf(d) / 2 - 1, mpmath.mpf(kappa)
    return float(v * mpmath.log(k) - d * mpmath.log(2 * mpmath.pi) / 2 - mpmath.log(mpmath.besseli(v, k)))


@pytest.mark.parametrize("d,kappa", [(1024, 20.0), (1024, 100.0), (512, 1.0), (256, 0.1), (128, 1e-4)])
def test_log_prob_matches_mpmath_where_scipy_logpdf_is_infinite(d: int, kappa: float) -> None:
    mu, x = np.eye(d)[0], np.eye(d)[1]
    assert special.ive(d / 2 - 1, kappa) == 0.0  # where SciPy's log normaliser breaks
    with np.errstate(all="ignore"):
        assert stats.vonmises_fisher(mu, kappa).logpdf(x) == np.inf
    ref = _mp_log_normalizer(d, kappa)
    got = VonMisesFisher(torch.tensor(mu), kappa).log_prob(torch.tensor(x)).item()
    assert abs(got - ref) <= 1e-12 * abs(ref)
    torch.testing.assert_close(log_vmf_normalizer(kappa, d), torch.tensor(ref, dtype=F64), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- gradients
def test_pathwise_gradient_in_loc_is_exact() -> None:
    torch.manual_seed(4)
    d, kappa = 5, 3.0
    xi = torch.randn(d, dtype=F64) * 2
    xi.requires_grad_(True)
    a_vec = torch.randn(d, dtype=F64)
    mu = xi / xi.norm()
    z = VonMisesFisher(mu, kappa).rsample((100000,))
    (g,) = torch.autograd.grad((z @ a_vec).mean(), xi)
    A = mean_resultant_length(torch.tensor(kappa, dtype=F64), d)
    m = mu.detach()
    exact = A * (a_vec - (a_vec @ m) * m) / xi.detach().norm()
    torch.testing.assert_close(g, exact, atol=0.01, rtol=0)


@pytest.mark.parametrize("d,kappa", [(2, 1.0), (3, 20.0), (5, 2.0), (16, 50.0), (1024, 1e4)])
def test_implicit_gradient_in_concentration(d: int, kappa: float) -> None:
    torch.manual_seed(5)
    k = torch.tensor(kappa, dtype=F64, requires_grad=True)
    z = VonMisesFisher(_unit(d), k).rsample((20000,))
    w = z @ _unit(d)
    (g,) = torch.autograd.grad(w.mean(), k)
    A = mean_resultant_length(k.detach(), d).item()
    var_w = 1 - A * A - (d - 1) * A / kappa
    # d E[w] / d kappa = A'(kappa) = Var[w]; the per-sample dw/dkappa is positive
    assert torch.isfinite(g) and abs(g.item() - var_w) < 0.03 * var_w


@pytest.mark.parametrize("d,kappa", [(2, 1.0), (4, 20.0), (16, 5.0)])
def test_implicit_dw_dkappa_matches_cdf_finite_difference(d: int, kappa: float) -> None:
    def cdf(w: float, k: float) -> float:
        kt = torch.tensor(k, dtype=F64)
        t0 = math.acos(w)
        return integrate.quad(
            lambda t: math.exp(w_log_density(torch.tensor(math.cos(t), dtype=F64), kt, d).item()) * math.sin(t),
            t0, math.pi, epsabs=1e-13, epsrel=1e-12,
        )[0]

    A = mean_resultant_length(torch.tensor(kappa, dtype=F64), d).item()
    ws = torch.tensor([A - 0.2 * (1 - A), A - 0.01, A + 0.3 * (1 - A)], dtype=F64)
    got = implicit_dw_dkappa(ws, 1 - ws, torch.tensor(kappa, dtype=F64), d)
    h = 1e-4
    for w, g in zip(ws.tolist(), got.tolist()):
        dF = (cdf(w, kappa + h) - cdf(w, kappa - h)) / (2 * h)
        f = math.exp(w_log_density(torch.tensor(w, dtype=F64), torch.tensor(kappa, dtype=F64), d).item())
        assert abs(g - (-dF / f)) < 1e-5 * max(1.0, abs(g)), (w, g, -dF / f)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises() -> None:
    mu = _unit(3)
    with pytest.raises(ValueError, match="concentration"):
        VonMisesFisher(mu, -1.0)
    with pytest.raises(ValueError, match="unit-norm"):
        VonMisesFisher(mu * 1.1, 1.0)
    with pytest.raises(ValueError, match="d"):
        VonMisesFisher(torch.ones(1, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="dim"):
        HypersphericalUniform(1)
    with pytest.raises(ValueError, match="dim"):
        vmf_kl_uniform(1.0, 1)
    with pytest.raises(ValueError, match="concentration"):
        vmf_kl_uniform(torch.tensor(float("nan")), 4)
    with pytest.raises(TypeError, match="dim"):
        mean_resultant_length(1.0, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mismatch"):
        torch.distributions.kl_divergence(VonMisesFisher(mu, 1.0), HypersphericalUniform(4))
    with pytest.raises(ValueError, match="last dimension"):
        VonMisesFisher(mu, 1.0).log_prob(torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="rule"):
        sample_w_grid(10, 1.0, 3, rule="midpoint")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loc"):
        VonMisesFisher([1.0, 0.0], 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loc"):
        VonMisesFisher(torch.tensor([1, 0, 0]), 1.0)
    with pytest.raises(ValueError, match="w_sampler"):
        VonMisesFisher(mu, 1.0, w_sampler="inverse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="order v"):
        log_bessel_iv(-0.5, torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="concentration"):
        sample_w_grid(10, float("inf"), 3)
    with pytest.raises(TypeError, match="x"):
        bessel_ratio(1.0, torch.ones(2, dtype=torch.int64))


def test_uniform_distribution() -> None:
    u = HypersphericalUniform(7, dtype=F64)
    x = u.sample((5000,))
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(5000, dtype=F64))
    assert x.mean(0).abs().max() < 0.06
    torch.testing.assert_close(u.entropy().item(), -u.log_prob(x[0]).item())
    np.testing.assert_allclose(u.entropy().item(), stats.uniform_direction(7).entropy() if hasattr(
        stats.uniform_direction(7), "entropy") else log_sphere_area(7))


# ---------------------------------------------------------------- kappa -> 0: values and gradients
def _mp_reference(d: int, kappa: float) -> dict[str, float]:
    """A_d, A_d', KL, dKL/dkappa and log rho = log C + log|S| at kappa, by mpmath (50 digits)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    v, k = mpmath.mpf(d) / 2 - 1, mpmath.mpf(kappa)
    if k == 0:
        a, da, log_rho = mpmath.mpf(0), 1 / mpmath.mpf(d), mpmath.mpf(0)
    else:
        a = mpmath.besseli(v + 1, k) / mpmath.besseli(v, k)
        da = 1 - a * a - (d - 1) * a / k
        log_rho = mpmath.log(mpmath.besseli(v, k)) - v * mpmath.log(k / 2) + mpmath.loggamma(v + 1)
    return {"A": float(a), "dA": float(da), "KL": float(k * a - log_rho), "dKL": float(k * da),
            "log_rho": float(log_rho)}


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("kappa", [0.0, 1e-8, 1e-4])
@pytest.mark.parametrize("many", [False, True], ids=["scalar", "tensor"])
def test_small_kappa_values_and_gradients_match_mpmath(d: int, kappa: float, many: bool) -> None:
    # ``many`` takes the vectorised path (more elements than the Python-float fast path)
    ref = _mp_reference(d, kappa)
    k = torch.full((12,) if many else (), kappa, dtype=F64, requires_grad=True)
    area = log_sphere_area(d)
    got = {
        "A": mean_resultant_length(k, d),
        "KL": vmf_kl_uniform(k, d),
        "H": vmf_entropy(k, d),
        "C": log_vmf_normalizer(k, d),
    }
    want = {"A": ref["A"], "KL": ref["KL"], "H": area - ref["KL"], "C": -area - ref["log_rho"]}
    slope = {"A": ref["dA"], "KL": ref["dKL"], "H": -ref["dKL"], "C": -ref["A"]}
    for name, value in got.items():
        (grad,) = torch.autograd.grad(value.sum(), k)
        np.testing.assert_allclose(value.detach().numpy(), want[name], rtol=1e-12, atol=1e-300, err_msg=name)
        np.testing.assert_allclose(grad.numpy(), slope[name], rtol=1e-12, atol=1e-300, err_msg=name)


def test_small_kappa_float32_is_finite_with_the_right_slope() -> None:
    k = torch.tensor([0.0, 1e-8, 1e-4], dtype=torch.float32, requires_grad=True)
    for d in [2, 16, 1024]:
        for f, slope0 in [(mean_resultant_length, 1.0 / d), (vmf_kl_uniform, 0.0), (vmf_entropy, 0.0)]:
            out = f(k, d)
            (g,) = torch.autograd.grad(out.sum(), k)
            assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(g).all()
            assert abs(g[0].item() - slope0) < 1e-6, (f.__name__, d, g)


def test_bessel_series_and_recurrence_agree_at_the_cut() -> None:
    # the series is used below x = 2 sqrt(v+1), the Debye + recurrence above: both must agree there
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    for v in [0.0, 0.5, 7.0, 63.0, 511.0]:
        cut = 2 * math.sqrt(v + 1)
        x = torch.tensor([cut * (1 - 1e-9), cut, cut * (1 + 1e-9), 1e-3, 1e-300, 0.0], dtype=F64)
        for name, got in [("log_iv", log_bessel_iv(v, x[:-1])), ("ratio", bessel_ratio(v, x))]:
            xs = x if name == "ratio" else x[:-1]
            if name == "log_iv":
                ref = [float(mpmath.log(mpmath.besseli(v, mpmath.mpf(t)))) for t in xs.tolist()]
            else:
                ref = [float(mpmath.besseli(v + 1, mpmath.mpf(t)) / mpmath.besseli(v, mpmath.mpf(t)))
                       if t > 0 else 0.0 for t in xs.tolist()]
            np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=0, err_msg=f"{name} v={v}")


def test_log_bessel_iv_at_zero_is_the_limit() -> None:
    x = torch.zeros(2, dtype=F64, requires_grad=True)
    zero = log_bessel_iv(0.0, x)  # log I_0(0) = 0, slope R_0(0) = 0
    (g,) = torch.autograd.grad(zero.sum(), x)
    assert zero.tolist() == [0.0, 0.0] and g.tolist() == [0.0, 0.0]
    assert log_bessel_iv(1.5, x.detach()).tolist() == [-math.inf, -math.inf]  # I_v(0) = 0 for v > 0
    r = bessel_ratio(3.0, x)
    (g,) = torch.autograd.grad(r.sum(), x)
    assert r.tolist() == [0.0, 0.0]
    torch.testing.assert_close(g, torch.full((2,), 1 / 8, dtype=F64))  # R_v'(0) = 1/(2v+2)


def test_python_float_fast_path_matches_the_tensor_path() -> None:
    from kexue.vmf import _bessel_parts_scalar, _bessel_parts_tensor

    x = torch.tensor([0.0, 1e-9, 1e-3, 0.5, 1.99, 2.0, 2.01, 13.0, 300.0, 1e5], dtype=F64)
    for v in [0.0, 0.5, 1.0, 7.0, 63.0, 99.5, 511.0]:
        tensor = torch.stack(_bessel_parts_tensor(v, x), dim=-1)
        scalar = torch.tensor([_bessel_parts_scalar(v, t) for t in x.tolist()], dtype=F64)
        torch.testing.assert_close(scalar, tensor, rtol=1e-12, atol=0)  # libm vs torch rounding
    # and the public functions give the same values and gradients whichever path they take
    for d in [2, 5, 128]:
        one = torch.tensor([3.0], dtype=F64, requires_grad=True)
        many = torch.full((20,), 3.0, dtype=F64, requires_grad=True)
        for f in (mean_resultant_length, vmf_kl_uniform, log_vmf_normalizer):
            (g1,) = torch.autograd.grad(f(one, d).sum(), one)
            (gm,) = torch.autograd.grad(f(many, d).sum(), many)
            torch.testing.assert_close(f(one, d).expand(20), f(many, d), rtol=1e-12, atol=0)
            torch.testing.assert_close(g1.expand(20), gm, rtol=1e-12, atol=0)


def test_bessel_gradients_are_once_differentiable_not_silently_wrong() -> None:
    k = torch.tensor(2.0, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(vmf_kl_uniform(k, 4), k, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g, k)


# ---------------------------------------------------------------- loc's unit-norm check
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_unit_norm_check_refuses_norm_1_8_in_every_dtype(dtype: torch.dtype) -> None:
    for d in [3, 16, 1024]:
        mu = _unit(d, seed=d).to(dtype)  # rounded to dtype: accepted
        VonMisesFisher(mu, 1.0)
        low = torch.nn.functional.normalize(torch.randn(d, dtype=torch.float32), dim=0).to(dtype)
        VonMisesFisher(low, 1.0)  # normalised in float32 then rounded
        for bad in (1.8, 0.5, 1.1):
            with pytest.raises(ValueError, match="unit-norm"):
                VonMisesFisher((mu.double() * bad).to(dtype), 1.0)
    # the replaced tolerance, 10 sqrt(eps), is the broken variant: 0.88 in bfloat16 let 1.8 through
    from kexue.vmf import _unit_tolerance

    old_tolerance = 10 * math.sqrt(torch.finfo(dtype).eps)
    assert _unit_tolerance(dtype) <= 0.07  # a few units in the last place of dtype at most
    if dtype == torch.bfloat16:
        assert 1.8 - 1.0 < old_tolerance  # the old check accepted a norm of 1.8
    with pytest.raises(ValueError, match="unit-norm"):
        VonMisesFisher(torch.tensor([float("nan"), 0.0, 0.0], dtype=dtype), 1.0)


# ---------------------------------------------------------------- concentration checks
BAD_KAPPAS = [
    (-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), (True, TypeError),
    ("1", TypeError), (torch.tensor(-0.5), ValueError), (torch.tensor([1.0, float("nan")]), ValueError),
    (torch.tensor([1.0, float("inf")]), ValueError), (torch.tensor([2, 3]), TypeError),
]


@pytest.mark.parametrize("bad,error", BAD_KAPPAS)
def test_every_entry_point_refuses_a_bad_concentration_by_name(bad: object, error: type) -> None:
    mu = _unit(4)
    calls = [
        lambda: VonMisesFisher(mu, bad),
        lambda: mean_resultant_length(bad, 4),
        lambda: log_vmf_normalizer(bad, 4),
        lambda: vmf_kl_uniform(bad, 4),
        lambda: vmf_entropy(bad, 4),
        lambda: sample_w_wood(bad, 4, (3,)),
        lambda: w_log_density(torch.zeros(3, dtype=F64), bad, 4),
    ]
    if not torch.is_tensor(bad):
        calls.append(lambda: sample_w_grid(3, bad, 4))
    for call in calls:
        with pytest.raises(error, match="concentration"):
            call()


def test_zero_and_numpy_concentrations_are_accepted() -> None:
    mu = _unit(4)
    torch.manual_seed(0)
    z = VonMisesFisher(mu, 0.0).sample((20000,))
    assert abs((z @ mu).mean().item()) < 5 / math.sqrt(4 * 20000)  # uniform: E[w] = 0, sd 1/sqrt(d)
    assert vmf_kl_uniform(np.float32(0.0), 4).item() == 0.0
    torch.testing.assert_close(mean_resultant_length(np.float64(2.0), 4), mean_resultant_length(2.0, 4))
    assert sample_w_grid(10, 0.0, 4).shape == (10,)


# ---------------------------------------------------------------- the grid sampler's limit
def test_grid_sampler_refuses_kappa_it_cannot_resolve_and_states_the_limit() -> None:
    from kexue.vmf import _grid_concentration_limit

    limit = _grid_concentration_limit(4, 1e-5, "article")
    assert 1e4 < limit < 1e5
    with pytest.raises(ValueError, match=r"concentration=1e\+08 .* resolves concentration <= 3\.06e\+04"):
        sample_w_grid(10, 1e8, 4)
    with pytest.raises(ValueError, match="too large"):
        VonMisesFisher(_unit(4), 1e8, w_sampler="grid").sample((3,))
    # at the limit one standard deviation of w (Gamma approximation, exact as kappa grows) is 4 cells
    a = mean_resultant_length(torch.tensor(limit, dtype=F64), 4).item()
    sd = math.sqrt(1.5) / limit
    assert abs((1 - a) - 1.5 / limit) < 1e-3 * (1.5 / limit) and abs(sd / 1e-5 - 4) < 1e-9
    # the trapezoid rule tabulates theta, so it resolves kappa = 1e8 at this step: accurate there
    n = 200_000
    u = (torch.arange(n, dtype=F64) + 0.5) / n
    w = sample_w_grid(0, 1e8, 4, rule="trapezoid", u=u)
    one_minus_a = 1 - mean_resultant_length(torch.tensor(1e8, dtype=F64), 4).item()
    assert abs((1 - w).mean().item() / one_minus_a - 1) < 0.01


def test_grid_sampler_without_the_limit_is_badly_biased(monkeypatch: pytest.MonkeyPatch) -> None:
    # the broken variant the check prevents: at kappa = 1e8 the article grid piles w into its last cell
    import kexue.vmf as vmf_module

    monkeypatch.setattr(vmf_module, "_grid_concentration_limit", lambda *a, **k: math.inf)
    u = (torch.arange(10_000, dtype=F64) + 0.5) / 10_000
    w = sample_w_grid(0, 1e8, 4, u=u)
    one_minus_a = 1 - mean_resultant_length(torch.tensor(1e8, dtype=F64), 4).item()
    assert (1 - w).mean().item() > 100 * one_minus_a


# ---------------------------------------------------------------- Wood's sampler: fast paths
def _wood_accept_naive(w: float, u: float, kappa: float, d: int) -> bool:
    """Wood (1994) step 2 as printed: accept if kappa w + (d-1) log(1 - x0 w) - c >= log u."""
    b = (-2 * kappa + math.sqrt(4 * kappa**2 + (d - 1) ** 2)) / (d - 1)
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (d - 1) * math.log(1 - x0**2)
    return kappa * w + (d - 1) * math.log(1 - x0 * w) - c >= math.log(u)


@pytest.mark.parametrize("d,kappa", [(2, 1.0), (4, 20.0), (16, 3.0), (128, 20.0)])
def test_wood_acceptance_test_matches_the_printed_formula(d: int, kappa: float) -> None:
    from kexue.vmf import _wood_proposals

    gen_state = torch.get_rng_state()
    w, omw, ok = _wood_proposals(torch.tensor(kappa, dtype=F64), d, 4000)
    torch.set_rng_state(gen_state)  # replay the same gammas and uniforms
    alpha = torch.full((8000,), (d - 1) / 2, dtype=F64)
    torch._standard_gamma(alpha)
    u = torch.rand(4000, dtype=F64)
    naive = [_wood_accept_naive(wi, ui, kappa, d) for wi, ui in zip(w.tolist(), u.tolist())]
    # identical decisions except where the two formulas differ by rounding at the boundary
    assert sum(a != b for a, b in zip(naive, ok.tolist())) <= 1
    assert 0.5 < ok.double().mean().item() <= 1.0
    torch.testing.assert_close(omw, 1 - w, rtol=1e-9, atol=1e-15)


def test_wood_shared_sampler_needs_at_most_two_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    # the first round is sized for all draws at rate 1, the second by the acceptance rate seen
    import kexue.vmf as vmf_module

    calls = []
    proposals = vmf_module._wood_proposals
    monkeypatch.setattr(vmf_module, "_wood_proposals", lambda *a: calls.append(1) or proposals(*a))
    torch.manual_seed(11)
    rounds = []
    for d in (2, 16, 1024):
        for kappa in (1e-4, 1.0, 20.0, 1e3, 1e5):
            for n in (1, 10, 1000, 100_000):
                calls.clear()
                sample_w_wood(torch.tensor(kappa, dtype=F64), d, (n,))
                rounds.append(len(calls))
    assert max(rounds) <= 2 and min(rounds) == 1, rounds


@pytest.mark.parametrize("d", [2, 4, 16, 128])
def test_wood_shared_and_per_draw_paths_both_match_the_exact_cdf(d: int) -> None:
    torch.manual_seed(7)
    kappa = 5.0
    shared, _ = sample_w_wood(torch.tensor(kappa, dtype=F64), d, (20000,))
    per_draw, _ = sample_w_wood(torch.full((20000,), kappa, dtype=F64), d)
    theta = np.linspace(np.pi, 0, 200001)
    logf = kappa * np.cos(theta) + (d - 2) * np.log(np.maximum(np.sin(theta), 1e-300))
    f = np.exp(logf - logf.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]))])
    cdf /= cdf[-1]
    for w in (shared, per_draw):
        assert stats.kstest(w.numpy(), lambda x: np.interp(x, np.cos(theta), cdf)).pvalue > 0.01
    assert stats.ks_2samp(shared.numpy(), per_draw.numpy()).pvalue > 0.01


def test_wood_per_draw_concentrations_each_get_their_own_law() -> None:
    torch.manual_seed(8)
    kappas = torch.tensor([0.0, 1.0, 50.0, 1e4], dtype=F64)
    w, omw = sample_w_wood(kappas, 8, (5000,))
    assert w.shape == (5000, 4) and torch.isfinite(w).all()
    a = mean_resultant_length(kappas, 8)
    var = torch.tensor([1 / 8, 0, 0, 0], dtype=F64)
    var[1:] = 1 - a[1:] ** 2 - 7 * a[1:] / kappas[1:]
    assert ((w.mean(0) - a).abs() < 5 * var.sqrt() / math.sqrt(5000)).all()
    assert sample_w_wood(torch.tensor(3.0, dtype=F64), 8, (0,))[0].shape == (0,)


# ---------------------------------------------------------------- placing w on the sphere: fast path
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("d", [2, 3, 16])
@pytest.mark.parametrize("batched", [False, True])
def test_in_place_householder_matches_the_out_of_place_formula(dtype: torch.dtype, d: int, batched: bool) -> None:
    from kexue.vmf import _place_on_sphere

    loc = _unit(d, seed=d, batch=(3,) if batched else ()).to(dtype)
    loc[..., 0] = -loc[..., 0].abs()  # a negative first coordinate takes the other reflection
    if batched:
        loc[1] = torch.eye(d, dtype=dtype)[0]  # mu = e_1 exactly
    shape = torch.Size((500, 3) if batched else (500,))
    w, omw = sample_w_wood(torch.tensor(4.0, dtype=F64), d, shape)
    torch.manual_seed(0)
    fast = _place_on_sphere(w, omw, loc, shape)
    torch.manual_seed(0)
    ref = _place_on_sphere(w, omw, loc.clone().requires_grad_(), shape)  # the out-of-place path
    assert ref.requires_grad and not fast.requires_grad
    tol = {"rtol": 0, "atol": 1e-6 if dtype == torch.float32 else 1e-14}
    torch.testing.assert_close(fast, ref.detach(), **tol)
    torch.testing.assert_close(fast.norm(dim=-1), torch.ones(shape, dtype=dtype), **tol)
    torch.testing.assert_close((fast * loc).sum(-1), w.to(dtype), **tol)  # <mu, z> = w


def test_tangent_direction_is_isotropic_in_mus_complement() -> None:
    torch.manual_seed(9)
    d = 5
    mu = _unit(d, seed=11)
    z = VonMisesFisher(mu, 3.0).sample((100_000,))
    t = z - (z @ mu)[:, None] * mu
    t = t / t.norm(dim=-1, keepdim=True)
    # uniform on the unit sphere of a (d-1)-dim subspace: E[t t^T] = (I - mu mu^T) / (d - 1)
    expect = (torch.eye(d, dtype=F64) - torch.outer(mu, mu)) / (d - 1)
    torch.testing.assert_close(t.T @ t / t.shape[0], expect, atol=6e-3, rtol=0)
    torch.testing.assert_close(t.mean(0), torch.zeros(d, dtype=F64), atol=1e-2, rtol=0)


# ---------------------------------------------------------------- log_prob fast path
def test_log_prob_fast_path_matches_the_formula() -> None:
    for dtype in (torch.float32, F64):
        mu = _unit(16, seed=1).to(dtype)
        x = _unit(16, seed=2, batch=(7, 5)).to(dtype)
        kappa = 12.5
        fast = VonMisesFisher(mu, kappa).log_prob(x)
        ref = log_vmf_normalizer(torch.tensor(kappa, dtype=F64), 16) + kappa * (x.double() * mu.double()).sum(-1)
        assert fast.dtype == dtype and fast.shape == (7, 5)
        torch.testing.assert_close(fast, ref.to(dtype))
        q = VonMisesFisher(mu, torch.tensor(kappa, dtype=dtype))  # a tensor kappa, same fast path
        torch.testing.assert_close(q.log_prob(x), fast)
        torch.testing.assert_close(q.log_prob(x.double()), ref.to(torch.promote_types(dtype, F64)))
    # value that requires grad: the in-place update keeps the gradient kappa * mu
    x = _unit(4, seed=3, batch=(3,)).requires_grad_()
    (g,) = torch.autograd.grad(VonMisesFisher(_unit(4), 2.0).log_prob(x).sum(), x)
    torch.testing.assert_close(g, 2.0 * _unit(4).expand(3, 4))
