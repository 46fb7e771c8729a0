"""Chapter 04's experiment: a Gaussian VAE against a vMF-VAE with an autoregressive decoder.

Book section ``ch04-experiment`` (and ``ch04-full`` for the recorded ``full``
run). Both models share an MLP encoder and a MADE decoder (a masked MLP in
which the logit of pixel ``i`` sees pixels ``< i`` in raster order, plus the
code ``z``) with a Bernoulli likelihood on binarised pixels, and minimise the
negative ELBO, eq. ``ch04-elbo``: the reconstruction term ``-log p(x|z)``,
``z ~ q(z|x)``, plus the KL to the prior. The Gaussian VAE has ``z`` in ``R^d``
with a standard normal prior; the vMF-VAE has ``z`` on ``S^{d-1}``, a uniform
prior and a fixed concentration, so its KL is the constant of eq.
``ch04-kl-formula``.

After training, the test set is scored in ways that do not take the model's
word for it: a Monte Carlo estimate of the KL from the posterior's own samples
(:func:`kl_monte_carlo`), an importance-weighted bound on the NLL
(:func:`log_importance_weights`, Burda et al. 2016), an estimate of the mutual
information ``I(x; z)`` under the test set's empirical distribution
(:func:`mutual_information`) and the reconstruction term with the codes
shuffled across the test images (:func:`shuffled_reconstruction`).

Profiles: ``smoke`` trains on the sklearn 8x8 digits (``d = 3``, so the codes
can be plotted on the sphere); ``book`` and ``full`` on Fashion-MNIST
(``d = 16``, ``kappa = 50``), ``book`` for fewer epochs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from kexue import checks
from kexue.data import load_digits, load_fashion_mnist
from kexue.experiments.config import Profiles
from kexue.experiments.loop import fit
from kexue.experiments.records import RunResult, fingerprint
from kexue.utils import get_device, seed_everything
from kexue.vmf import HypersphericalUniform, VonMisesFisher, vmf_kl_uniform

__all__ = [
    "VAEConfig",
    "CONFIGS",
    "LATENTS",
    "COLLAPSE_KL",
    "VAEData",
    "load_data",
    "MaskedLinear",
    "ARDecoder",
    "VAE",
    "active_units",
    "Estimate",
    "KLCheck",
    "kl_monte_carlo",
    "log_importance_weights",
    "iw_nll",
    "mutual_information",
    "shuffled_reconstruction",
    "make_optimizer",
    "elbo_loss",
    "train_vae",
    "run",
]

DATASETS = ("digits", "fashion_mnist")
#: the two variants every run trains, in this order
LATENTS = ("gauss", "vmf")
#: a Gaussian VAE whose final test KL (nats) is below this counts as collapsed
COLLAPSE_KL = 0.1
#: the digits split: the first 1,500 of a fixed permutation train, the other 297 test
DIGITS_TRAIN = 1500
DIGITS_SPLIT_SEED = 0
#: the seed of the fixed permutation that picks the validation images out of the training set
VAL_SPLIT_SEED = 1


@dataclass(frozen=True)
class VAEConfig:
    """One setting of the experiment (both variants are trained with it)."""

    dataset: str = "digits"  # "digits" (sklearn 8x8) or "fashion_mnist" (28x28)
    latent: str = "vmf"  # "vmf" or "gauss"; run() trains both
    dim: int = 3  # latent dimension d (the sphere is S^{d-1} for vMF)
    kappa: float = 20.0  # fixed vMF concentration
    hidden: int = 256  # encoder width
    decoder_hidden: int = 512  # width of the masked (autoregressive) decoder
    decoder_layers: int = 2  # hidden layers of the masked decoder
    epochs: int = 30  # passes over the training set
    batch_size: int = 128
    lr: float = 2e-3  # Adam, constant
    threshold: float = 0.5  # binarisation threshold for pixels
    iw_samples: int = 500  # k of the importance-weighted NLL bound on the test set
    eval_samples: int = 100  # posterior draws per test image for the KL and I(x; z) estimates
    val_size: int = 200  # training images held out; the epoch with the lowest validation -ELBO is scored


_FASHION = VAEConfig(
    dataset="fashion_mnist", dim=16, kappa=50.0, hidden=512, decoder_hidden=1024, decoder_layers=2,
    epochs=50, batch_size=100, lr=1e-3, iw_samples=100, eval_samples=10, val_size=5000,
)

CONFIGS = Profiles(
    smoke=VAEConfig(),
    # the full architecture and data for 8 of its 50 epochs: a few minutes per seed on one CPU thread
    book=dataclasses.replace(_FASHION, epochs=8),
    full=_FASHION,
)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
class VAEData(NamedTuple):
    """Binarised images as rows of pixels, test labels and the image side length."""

    x_train: Tensor  # (n_train, side * side), values 0/1
    x_test: Tensor  # (n_test, side * side)
    y_test: Tensor  # (n_test,) class labels, for colouring the codes
    side: int
    x_val: Tensor  # (val_size, side * side): held out of the training images, picks the epoch


def load_data(cfg: VAEConfig) -> VAEData:
    """The dataset of ``cfg``, binarised at ``cfg.threshold``.

    Digits: a fixed split of the 1,797 images (1,500 train, 297 test).
    Fashion-MNIST: its own 60,000 / 10,000 split. Then ``cfg.val_size`` of the
    training images, chosen by a fixed permutation, become the validation set
    (``x_val``) and leave ``x_train``; the test set is never used to choose.
    """
    checks.choice("dataset", cfg.dataset, DATASETS)
    checks.nonnegative_int("val_size", cfg.val_size)
    if cfg.dataset == "digits":
        images, labels = load_digits()
        x_all = (images.reshape(len(images), -1) > cfg.threshold).float()
        perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
        tr, te = perm[:DIGITS_TRAIN], perm[DIGITS_TRAIN:]
        x_tr, x_te, y_te, side = x_all[tr], x_all[te], labels[te], 8
    else:
        xtr, _ = load_fashion_mnist("train")
        xte, y_te = load_fashion_mnist("test")
        binarise = lambda x: (x.reshape(len(x), -1) > cfg.threshold).float()  # noqa: E731
        x_tr, x_te, side = binarise(xtr), binarise(xte), 28
    if cfg.val_size >= len(x_tr):
        raise ValueError(f"val_size must be below the {len(x_tr)} training images, got {cfg.val_size}")
    order = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val, keep = order[: cfg.val_size], order[cfg.val_size :].sort().values
    return VAEData(x_tr[keep], x_te, y_te, side, x_tr[val])


def _rows_fingerprint(x: Tensor) -> dict[str, Any]:
    bits = np.packbits(x.detach().cpu().numpy().astype(np.uint8), axis=1)
    return fingerprint([row.tobytes().hex() for row in bits])


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class ARDecoder(nn.Module):
    """MADE decoder: pixel i's logit sees pixels < i (raster order) and the latent z."""

    def __init__(self, n_pixels: int, latent: int, hidden: int, layers: int) -> None:
        super().__init__()
        deg_in = torch.arange(1, n_pixels + 1)
        g = torch.Generator().manual_seed(0)
        degs = [deg_in]
        for _ in range(layers):
            degs.append(torch.randint(1, n_pixels, (hidden,), generator=g))
        self.layers = nn.ModuleList()
        self.cond = nn.ModuleList()
        for i in range(layers):
            mask = (degs[i + 1][:, None] >= degs[i][None, :]).float()
            self.layers.append(MaskedLinear(degs[i].numel(), hidden, mask))
            self.cond.append(nn.Linear(latent, hidden))
        mask = (deg_in[:, None] > degs[-1][None, :]).float()
        self.out = MaskedLinear(hidden, n_pixels, mask)
        self.out_cond = nn.Linear(latent, n_pixels)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        h = x
        for lin, cond in zip(self.layers, self.cond):
            h = torch.relu(lin(h) + cond(z))
        return self.out(h) + self.out_cond(z)

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        x = torch.zeros(z.shape[0], self.out.out_features, dtype=z.dtype, device=z.device)
        for i in range(x.shape[1]):  # ancestral sampling is sequential by definition
            p = torch.sigmoid(self.forward(x, z)[:, i])
            x[:, i] = torch.bernoulli(p)
        return x


class VAE(nn.Module):
    """Encoder MLP + Gaussian or vMF posterior + MADE decoder, Bernoulli likelihood."""

    def __init__(self, n_pixels: int, cfg: VAEConfig) -> None:
        super().__init__()
        checks.choice("latent", cfg.latent, ("vmf", "gauss"))
        checks.int_at_least("dim", cfg.dim, 2)
        self.cfg = cfg
        out = cfg.dim if cfg.latent == "vmf" else 2 * cfg.dim
        self.encoder = nn.Sequential(nn.Linear(n_pixels, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, out))
        self.decoder = ARDecoder(n_pixels, cfg.dim, cfg.decoder_hidden, cfg.decoder_layers)
        # the vMF KL is a constant (eq. ch04-kl-formula): computed once
        self.vmf_kl: float | None = None
        if cfg.latent == "vmf":
            self.vmf_kl = vmf_kl_uniform(torch.tensor(cfg.kappa, dtype=torch.float64), cfg.dim).item()

    def posterior(self, x: Tensor) -> Distribution:
        h = self.encoder(x)
        if self.cfg.latent == "vmf":
            return VonMisesFisher(nn.functional.normalize(h, dim=-1), self.cfg.kappa)
        mu, logvar = h.chunk(2, dim=-1)
        return torch.distributions.Independent(torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), 1)

    def prior(self) -> Distribution:
        """``p(z)``: uniform on ``S^{d-1}`` (vMF) or the standard normal on ``R^d`` (Gaussian)."""
        device = self.decoder.out.weight.device
        if self.cfg.latent == "vmf":
            return HypersphericalUniform(self.cfg.dim, device=device)
        zeros = torch.zeros(self.cfg.dim, device=device)
        return torch.distributions.Independent(torch.distributions.Normal(zeros, torch.ones_like(zeros)), 1)

    def reconstruction(self, x: Tensor, z: Tensor) -> Tensor:
        """``-log p(x|z)`` in nats per example (Bernoulli pixels); ``z`` may carry leading sample dims."""
        x = x.expand(z.shape[:-1] + x.shape[-1:])
        logits = self.decoder(x, z)
        return nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)

    def kl(self, q: Distribution) -> Tensor:
        """Per-example KL to the prior: the vMF constant, or the Gaussian closed form."""
        if self.cfg.latent == "vmf":
            return torch.full(q.batch_shape, self.vmf_kl, dtype=q.loc.dtype, device=q.loc.device)
        base = q.base_dist
        return 0.5 * (base.loc**2 + base.scale**2 - 1.0 - 2.0 * torch.log(base.scale)).sum(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example ``(-log p(x|z) with one z ~ q(z|x), KL)`` in nats; their sum is eq. ch04-elbo.

        The first term is the one-sample reconstruction term, not the NLL ``-log p(x)``.
        """
        q = self.posterior(x)
        return self.reconstruction(x, q.rsample()), self.kl(q)

    def code(self, x: Tensor) -> Tensor:
        """The posterior's mean direction (vMF) or mean (Gaussian)."""
        q = self.posterior(x)
        return q.loc if self.cfg.latent == "vmf" else q.base_dist.loc

    def prior_sample(self, n: int) -> Tensor:
        device = self.decoder.out.weight.device
        if self.cfg.latent == "vmf":
            return HypersphericalUniform(self.cfg.dim, device=device).sample((n,))
        return torch.randn(n, self.cfg.dim, device=device)


def active_units(model: VAE, x: Tensor, threshold: float = 0.01) -> int:
    """Number of latent coordinates whose posterior mean/direction varies across data (Burda et al.)."""
    with torch.no_grad():
        codes = model.code(x)
    return int((codes.var(0) > threshold).sum())


class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error."""

    value: float
    se: float


def _mean_and_se(terms: Tensor) -> tuple[float, float]:
    """Mean of ``terms`` (draws x images) and its standard error for fixed images.

    The images are fixed, so only the variance across draws of each image counts:
    ``se^2 = sum_i var_i / (draws n^2)``.
    """
    draws, n = terms.shape
    se = math.sqrt(terms.var(0).sum().item() / (draws * n * n)) if draws > 1 else math.inf
    return terms.mean().item(), se


class KLCheck(NamedTuple):
    """A Monte Carlo estimate of ``E_x E_{q(z|x)}[log q(z|x) - log p(z)]`` next to the KL
    the model reports (and trains with) for the same images."""

    estimate: float  # nats, the mean over images and draws
    se: float  # its standard error (within-image variance only: the images are fixed)
    reported: float  # the mean of ``model.kl(q)`` over the same images

    def agrees(self, n_se: float = 4.0) -> bool:
        """True if the reported KL lies within ``n_se`` standard errors of the estimate."""
        return abs(self.estimate - self.reported) <= n_se * self.se


@torch.no_grad()
def kl_monte_carlo(model: VAE, x: Tensor, samples: int = 100) -> KLCheck:
    """Estimate the KL of eq. ch04-elbo from the posterior's own draws, without ``model.kl``.

    ``log q`` is the posterior's ``log_prob`` at each of its ``samples`` draws per image,
    ``log p`` the prior's. A KL formula that returns the wrong constant, a ``log_prob`` off
    by a constant, or a sampler that draws from another law than ``log_prob`` scores all
    show up as a gap of many standard errors.
    """
    checks.positive_int("samples", samples)
    q = model.posterior(x)
    z = q.sample((samples,))  # (samples, n, d)
    diff = (q.log_prob(z) - model.prior().log_prob(z)).double()
    return KLCheck(*_mean_and_se(diff), model.kl(q).double().mean().item())


@torch.no_grad()
def log_importance_weights(model: VAE, x: Tensor, k: int, *, max_rows: int = 2**14) -> Tensor:
    """``log p(x|z_j) + log p(z_j) - log q(z_j|x)`` for ``k`` draws ``z_j ~ q(z|x)``: shape ``(k, n)``, float64.

    The decoder runs on at most ``max_rows`` (image, draw) pairs at a time.
    """
    checks.positive_int("k", k)
    checks.positive_int("max_rows", max_rows)
    q, prior = model.posterior(x), model.prior()
    z = q.sample((k,))
    out = torch.empty(k, x.shape[0], dtype=torch.float64, device=x.device)
    step = max(1, max_rows // x.shape[0])
    for i in range(0, k, step):
        zi = z[i : i + step]
        log_w = -model.reconstruction(x, zi) + prior.log_prob(zi) - q.log_prob(zi)
        out[i : i + step] = log_w.double()
    return out


def iw_nll(log_w: Tensor, k: int | None = None) -> Tensor:
    """The importance-weighted bound ``-log (1/k) sum_j w_j`` per example, from the first ``k`` rows.

    ``E[iw_nll] >= -log p(x)`` for every ``k``, decreasing in ``k`` (Burda et al. 2016);
    ``k = 1`` is the one-sample negative ELBO.
    """
    k = log_w.shape[0] if k is None else checks.positive_int("k", k)
    if k > log_w.shape[0]:
        raise ValueError(f"k={k} exceeds the {log_w.shape[0]} draws in log_w")
    return -(torch.logsumexp(log_w[:k], 0) - math.log(k))


@torch.no_grad()
def mutual_information(q: Distribution, samples: int = 10, *, max_elements: int = 2**24) -> Estimate:
    """``I(x; z)`` in nats under the empirical distribution of the ``n`` images behind ``q``.

    ``q`` is a posterior with batch shape ``(n,)`` (one row per image). With the aggregate
    posterior ``q(z) = (1/n) sum_j q(z|x_j)``, the estimate is the mean over images ``i``
    and draws ``z ~ q(z|x_i)`` of ``log q(z|x_i) - log q(z)`` (Hoffman and Johnson 2016).
    It is at most ``log n``, at most the mean KL to any prior in expectation, and exactly 0
    when every row of ``q`` is the same distribution. Returns the estimate and its
    standard error (over the draws, the images held fixed).
    """
    checks.positive_int("samples", samples)
    n = q.batch_shape[0]
    z = q.sample((samples,))  # (samples, n, d)
    own = q.log_prob(z).double()
    flat = z.reshape(-1, z.shape[-1])
    agg = torch.empty(flat.shape[0], dtype=torch.float64, device=z.device)
    step = max(1, max_elements // (n * z.shape[-1]))
    for i in range(0, flat.shape[0], step):
        cross = q.log_prob(flat[i : i + step].unsqueeze(1)).double()  # (chunk, n): log q(z | x_j)
        agg[i : i + step] = torch.logsumexp(cross, 1) - math.log(n)
    return Estimate(*_mean_and_se(own - agg.view(own.shape)))


@torch.no_grad()
def shuffled_reconstruction(model: VAE, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(-log p(x_i|z_i), -log p(x_i|z_pi(i)))`` per example, ``z_i ~ q(z|x_i)``.

    ``pi`` is a random permutation without fixed points (a random cycle), so every image
    is decoded from another image's code. A decoder that ignores ``z`` scores both alike.
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError("shuffling codes needs at least 2 examples")
    z = model.posterior(x).sample()
    order = torch.randperm(n, generator=generator).to(x.device)
    source = torch.empty_like(order)
    source[order] = order.roll(-1)  # image order[i] takes the code of image order[i + 1]
    return model.reconstruction(x, z), model.reconstruction(x, z[source])


# ---------------------------------------------------------------------------
# Training and the chapter's run
# ---------------------------------------------------------------------------
def make_optimizer(model: VAE) -> torch.optim.Adam:
    """Adam over all parameters at ``cfg.lr`` (held constant by :func:`train_vae`)."""
    return torch.optim.Adam(model.parameters(), lr=model.cfg.lr)


def elbo_loss(model: VAE, x: Tensor) -> Tensor:
    """The batch mean of NLL + KL (the negative ELBO, eq. ch04-elbo)."""
    nll, kl = model(x)
    return (nll + kl).mean()


def train_vae(
    model: VAE,
    x_train: Tensor,
    x_test: Tensor,
    *,
    x_val: Tensor | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train with :func:`~kexue.experiments.loop.fit`: Adam at a constant ``cfg.lr``,
    ``cfg.epochs`` passes over ``x_train`` in a fresh random order each (the last
    batch of a pass may be smaller). After every pass the test set is evaluated,
    and so is ``x_val`` when given.

    Returns the per-epoch curves ``nll`` (the test mean of the one-sample
    reconstruction term ``-log p(x|z)``, ``z ~ q(z|x)``: not the NLL ``-log p(x)``;
    the key keeps its recorded name), ``kl`` (the test mean of ``model.kl``, nats),
    ``au`` (active units on the test set), ``val_neg_elbo`` (the one-sample
    negative ELBO, eq. ch04-elbo, on ``x_val``; empty without it), ``train_loss``
    (the pass's mean negative ELBO), ``best_epoch`` (1-based: the pass with the
    lowest ``val_neg_elbo``, or the last pass without ``x_val``) and ``seconds``.

    ``model`` is left with the weights it had after ``best_epoch`` (early
    stopping chosen on validation data, never on the test set). The batch order
    comes from ``seed``; the sampling noise from the global torch generator, which
    the caller seeds.
    """
    cfg = model.cfg
    n = x_train.shape[0]
    per_epoch = math.ceil(n / cfg.batch_size)
    g = torch.Generator().manual_seed(seed)
    perms: list[Tensor] = []  # drawn in epoch order, so batch_at(step) is a function of step

    def batch_at(step: int) -> Tensor:
        epoch, i = divmod(step, per_epoch)
        while len(perms) <= epoch:
            perms.append(torch.randperm(n, generator=g))
        return x_train[perms[epoch][i * cfg.batch_size : (i + 1) * cfg.batch_size].to(x_train.device)]

    use_val = x_val is not None and len(x_val) > 0
    best: dict[str, Any] = {"loss": math.inf, "epoch": 0, "state": None}
    evals = 0

    def evaluate(m: VAE) -> dict[str, float]:
        nonlocal evals
        evals += 1
        nll, kl = m(x_test)
        out = {"nll": nll.mean().item(), "kl": kl.mean().item(), "au": active_units(m, x_test)}
        if use_val:
            out["val_neg_elbo"] = elbo_loss(m, x_val).item()
            if out["val_neg_elbo"] < best["loss"]:
                state = {k: v.detach().clone() for k, v in m.state_dict().items()}
                best.update(loss=out["val_neg_elbo"], epoch=evals, state=state)
        return out

    hist = fit(
        model, batch_at, elbo_loss, steps=cfg.epochs * per_epoch, optimizer=make_optimizer(model),
        schedule="constant", evaluate=evaluate, eval_every=per_epoch, progress=progress,
        desc=f"{cfg.latent} VAE",
    )
    sizes = np.array([min(cfg.batch_size, n - i * cfg.batch_size) for i in range(per_epoch)], dtype=float)
    losses = np.array(hist.losses, dtype=float).reshape(cfg.epochs, per_epoch)
    _, nll = hist.eval_series("nll")
    _, kl = hist.eval_series("kl")
    _, au = hist.eval_series("au")
    val = hist.eval_series("val_neg_elbo")[1] if use_val else []
    if use_val:
        model.load_state_dict(best["state"])
    return {
        "seconds": hist.seconds,
        "nll": nll,
        "kl": kl,
        "au": [int(a) for a in au],
        "val_neg_elbo": list(val),
        "best_epoch": best["epoch"] if use_val else len(nll),
        "train_loss": (losses @ sizes / n).tolist(),
    }


def run(
    cfg: VAEConfig,
    seed: int = 0,
    *,
    data: VAEData | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Train the Gaussian VAE and the vMF-VAE of ``cfg`` (one seed) and evaluate them.

    Each model is scored as it was after ``v_best_epoch``, the epoch with the
    lowest validation negative ELBO (``v_val_neg_elbo``, on ``data.x_val``; the
    last epoch when ``cfg.val_size`` is 0).

    ``metrics`` per variant ``v`` in :data:`LATENTS`, on the test set, in nats:
    ``v_test_recon`` (the one-sample reconstruction term after the last epoch),
    ``v_test_recon_epoch1``, ``v_test_recon_min`` and ``v_test_recon_min_epoch``
    (the lowest value of the curve and its 1-based epoch: selected on the test
    set, so optimistic), ``v_test_kl_last`` (the KL after the last epoch); at the
    chosen epoch: ``v_test_kl``, ``v_active_units``,
    ``v_kl_mc`` and ``v_kl_mc_se`` (:func:`kl_monte_carlo` with
    ``cfg.eval_samples`` draws), ``v_iw_nll`` (:func:`iw_nll` with
    ``cfg.iw_samples`` draws) and ``v_neg_elbo`` (the same with one draw),
    ``v_mutual_info`` and ``v_mutual_info_se`` (:func:`mutual_information`), ``v_recon_own_z`` and
    ``v_recon_shuffled_z`` (:func:`shuffled_reconstruction`). Plus
    ``vmf_kl_constant`` and ``gauss_collapsed`` (1 if the Gaussian test KL ended
    below :data:`COLLAPSE_KL` at the chosen epoch). ``artifacts``: ``runs``
    (per variant the curves of :func:`train_vae`), ``models`` (trained, on the
    CPU) and ``data`` (the :class:`VAEData` used). ``data`` defaults to
    :func:`load_data`; ``device`` to :func:`kexue.utils.get_device`.
    """
    checks.nonnegative_int("seed", seed)
    data = load_data(cfg) if data is None else data
    device = get_device() if device is None else torch.device(device)
    x_tr, x_te, x_val = data.x_train.to(device), data.x_test.to(device), data.x_val.to(device)
    runs: dict[str, dict[str, Any]] = {}
    models: dict[str, VAE] = {}
    metrics: dict[str, float] = {}
    for latent in LATENTS:
        seed_everything(seed)
        model = VAE(x_tr.shape[1], dataclasses.replace(cfg, latent=latent)).to(device)
        runs[latent] = train_vae(model, x_tr, x_te, x_val=x_val, seed=seed, progress=progress)
        model.eval()
        r = runs[latent]
        best = int(np.argmin(r["nll"]))
        chosen = r["best_epoch"] - 1
        kl_mc = kl_monte_carlo(model, x_te, cfg.eval_samples)
        log_w = log_importance_weights(model, x_te, cfg.iw_samples)
        own, shuffled = shuffled_reconstruction(model, x_te, torch.Generator().manual_seed(seed))
        info = mutual_information(model.posterior(x_te), cfg.eval_samples)
        metrics.update({
            f"{latent}_test_recon": r["nll"][-1],
            f"{latent}_test_recon_epoch1": r["nll"][0],
            f"{latent}_test_recon_min": r["nll"][best],
            f"{latent}_test_recon_min_epoch": float(best + 1),
            f"{latent}_best_epoch": float(r["best_epoch"]),
            f"{latent}_test_kl": r["kl"][chosen],
            f"{latent}_test_kl_last": r["kl"][-1],
            f"{latent}_active_units": float(r["au"][chosen]),
            f"{latent}_kl_mc": kl_mc.estimate,
            f"{latent}_kl_mc_se": kl_mc.se,
            f"{latent}_iw_nll": iw_nll(log_w).mean().item(),
            f"{latent}_neg_elbo": iw_nll(log_w, 1).mean().item(),
            f"{latent}_mutual_info": info.value,
            f"{latent}_mutual_info_se": info.se,
            f"{latent}_recon_own_z": own.mean().item(),
            f"{latent}_recon_shuffled_z": shuffled.mean().item(),
        })
        if r["val_neg_elbo"]:
            metrics[f"{latent}_val_neg_elbo"] = r["val_neg_elbo"][chosen]
        models[latent] = model.cpu()
    metrics["vmf_kl_constant"] = models["vmf"].vmf_kl
    metrics["gauss_collapsed"] = float(metrics["gauss_test_kl"] < COLLAPSE_KL)
    return RunResult(
        metrics=metrics,
        artifacts={"runs": runs, "models": models, "data": data},
        data={
            f"{cfg.dataset}_train": _rows_fingerprint(data.x_train),
            f"{cfg.dataset}_test": _rows_fingerprint(data.x_test),
            f"{cfg.dataset}_val": _rows_fingerprint(data.x_val),
        },
    )
