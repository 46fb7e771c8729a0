"""Tests for chapter 04's experiment (kexue.experiments.ch04_vmf)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kexue.data import load_fashion_mnist
from kexue.experiments.ch04_vmf import (
    CONFIGS,
    LATENTS,
    VAE,
    VAEData,
    active_units,
    elbo_loss,
    iw_nll,
    kl_monte_carlo,
    load_data,
    log_importance_weights,
    make_optimizer,
    mutual_information,
    run,
    shuffled_reconstruction,
    train_vae,
)
from kexue.experiments.loop import fit
from kexue.utils import seed_everything
from kexue.vmf import HypersphericalUniform, VonMisesFisher, vmf_kl_uniform

PIXELS = {"digits": 64, "fashion_mnist": 784}




@pytest.mark.parametrize("latent", LATENTS)
@pytest.mark.parametrize("name", ["smoke", "book", "full"])
def test_each_profile_builds_and_takes_one_fit_step(name: str, latent: str) -> None:
    seed_everything(6)
    cfg = dataclasses.replace(CONFIGS[name], latent=latent)
    n_pixels = PIXELS[cfg.dataset]
    model = VAE(n_pixels, cfg)
    x = (torch.rand(4, n_pixels) > 0.5).float()  # a tiny batch shaped like the profile's data
    before = [p.detach().clone() for p in model.parameters()]
    hist = fit(model, lambda step: x, elbo_loss, steps=1, optimizer=make_optimizer(model),
               schedule="constant", progress=False)
    assert len(hist.losses) == 1 and torch.isfinite(torch.tensor(hist.losses[0]))
    assert hist.lrs == [cfg.lr]
    changed = [not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before)]
    assert all(changed), "every parameter takes part in the loss"
    nll, kl = model(x)
    assert nll.shape == kl.shape == (4,) and (nll > 0).all()
    if latent == "vmf":
        torch.testing.assert_close(kl, torch.full_like(kl, vmf_kl_uniform(cfg.kappa, cfg.dim).item()))
    else:
        assert (kl > 0).all()


def test_profiles_are_the_documented_settings() -> None:
    smoke, book, full = CONFIGS["smoke"], CONFIGS["book"], CONFIGS["full"]
    assert (smoke.dataset, smoke.dim, smoke.kappa, smoke.epochs) == ("digits", 3, 20.0, 30)
    assert (full.dataset, full.dim, full.kappa, full.decoder_hidden, full.epochs) == (
        "fashion_mnist", 16, 50.0, 1024, 50)
    assert dataclasses.replace(book, epochs=full.epochs) == full and book.epochs < full.epochs
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.epochs = 1  # type: ignore[misc]


def test_decoder_is_autoregressive() -> None:
    torch.manual_seed(7)
    model = VAE(64, CONFIGS["smoke"])
    x = torch.rand(1, 64, requires_grad=True)
    z = torch.randn(1, 3)
    logits = model.decoder(x, z)
    for i in [0, 10, 63]:
        (g,) = torch.autograd.grad(logits[0, i], x, retain_graph=True)
        assert (g[0, i:] == 0).all(), "pixel i must not see pixels >= i"
        assert i == 0 or (g[0, :i] != 0).any(), "pixel i should see earlier pixels"


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="latent"):
        VAE(64, dataclasses.replace(CONFIGS["smoke"], latent="laplace"))
    with pytest.raises(ValueError, match="dataset"):
        load_data(dataclasses.replace(CONFIGS["smoke"], dataset="mnist"))


def test_load_data_digits_split() -> None:
    data = load_data(CONFIGS["smoke"])
    val = CONFIGS["smoke"].val_size
    assert data.x_train.shape == (1500 - val, 64) and data.x_val.shape == (val, 64)
    assert data.x_test.shape == (297, 64) and data.side == 8
    # the validation images are training images, none of them kept for training
    rows = lambda x: {tuple(r.tolist()) for r in x}  # noqa: E731
    whole = load_data(dataclasses.replace(CONFIGS["smoke"], val_size=0))
    assert whole.x_train.shape == (1500, 64) and whole.x_val.shape == (0, 64)
    assert rows(data.x_val) <= rows(whole.x_train)
    assert sorted(map(tuple, torch.cat([data.x_train, data.x_val]).tolist())) == sorted(
        map(tuple, whole.x_train.tolist()))
    with pytest.raises(ValueError, match="val_size"):
        load_data(dataclasses.replace(CONFIGS["smoke"], val_size=1500))
    assert set(data.x_train.unique().tolist()) == {0.0, 1.0}
    assert data.y_test.shape == (297,)
    again = load_data(CONFIGS["smoke"])
    assert torch.equal(data.x_test, again.x_test), "the split is fixed"


def _reference_train(model: VAE, x_train: torch.Tensor, x_test: torch.Tensor, seed: int) -> dict[str, list]:
    """The chapter's recipe written out by hand: Adam, constant lr, reshuffle per epoch."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    hist: dict[str, list] = {"nll": [], "kl": [], "au": [], "train_loss": []}
    n = x_train.shape[0]
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            xb = x_train[perm[i : i + cfg.batch_size]]
            nll, kl = model(xb)
            loss = (nll + kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
        model.eval()
        with torch.no_grad():
            nll, kl = model(x_test)
        hist["train_loss"].append(total / n)
        hist["nll"].append(nll.mean().item())
        hist["kl"].append(kl.mean().item())
        hist["au"].append(active_units(model, x_test))
    return hist


@pytest.mark.parametrize("latent", LATENTS)
def test_train_vae_through_fit_matches_the_hand_written_loop(latent: str) -> None:
    cfg = dataclasses.replace(CONFIGS["smoke"], latent=latent, epochs=2, batch_size=48, decoder_hidden=64)
    gen = torch.Generator().manual_seed(0)
    x_train = (torch.rand(100, 64, generator=gen) > 0.5).float()  # 100 = 2 full batches + 4
    x_test = (torch.rand(30, 64, generator=gen) > 0.5).float()
    seed_everything(3)
    ref = _reference_train(VAE(64, cfg), x_train, x_test, seed=3)
    seed_everything(3)
    got = train_vae(VAE(64, cfg), x_train, x_test, seed=3, progress=False)
    for key in ("nll", "kl", "au"):
        assert got[key] == ref[key], key
    torch.testing.assert_close(torch.tensor(got["train_loss"]), torch.tensor(ref["train_loss"]), rtol=1e-6, atol=0)
    assert got["seconds"] > 0


def test_run_returns_the_chapter_metrics() -> None:
    cfg = dataclasses.replace(CONFIGS["smoke"], epochs=2, decoder_hidden=64)
    full = load_data(cfg)
    data = VAEData(full.x_train[:256], full.x_test[:64], full.y_test[:64], full.side, full.x_val[:64])
    result = run(cfg, seed=1, data=data, device="cpu", progress=False)
    m = result.metrics
    for latent in LATENTS:
        names = ("test_recon", "test_recon_epoch1", "test_recon_min", "test_recon_min_epoch", "test_kl",
                 "test_kl_last", "best_epoch", "val_neg_elbo", "active_units", "kl_mc", "kl_mc_se", "iw_nll", "neg_elbo", "mutual_info", "mutual_info_se",
                 "recon_own_z", "recon_shuffled_z")
        assert {f"{latent}_{k}" for k in names} <= set(m)
        r = result.artifacts["runs"][latent]
        assert len(r["nll"]) == len(r["kl"]) == len(r["au"]) == len(r["train_loss"]) == cfg.epochs
        assert m[f"{latent}_test_recon"] == r["nll"][-1]
        chosen = int(m[f"{latent}_best_epoch"]) - 1
        assert m[f"{latent}_val_neg_elbo"] == min(r["val_neg_elbo"]) == r["val_neg_elbo"][chosen]
        assert m[f"{latent}_test_kl"] == r["kl"][chosen] and m[f"{latent}_test_kl_last"] == r["kl"][-1]
        assert m[f"{latent}_test_recon_min"] == min(r["nll"])
        assert r["nll"][int(m[f"{latent}_test_recon_min_epoch"]) - 1] == min(r["nll"])
        assert abs(m[f"{latent}_kl_mc"] - m[f"{latent}_test_kl"]) < 5 * m[f"{latent}_kl_mc_se"]
        assert m[f"{latent}_iw_nll"] <= m[f"{latent}_neg_elbo"] + 0.5
        assert 0 <= m[f"{latent}_mutual_info"] <= math.log(64) + 1e-6
    kl_const = vmf_kl_uniform(cfg.kappa, cfg.dim).item()
    assert m["vmf_kl_constant"] == pytest.approx(kl_const)
    assert result.artifacts["runs"]["vmf"]["kl"] == pytest.approx([kl_const] * cfg.epochs, rel=1e-6)
    assert m["gauss_collapsed"] == float(m["gauss_test_kl"] < 0.1)
    assert set(result.data) == {"digits_train", "digits_test", "digits_val"}
    assert result.data["digits_train"]["size"] == 256 and result.data["digits_val"]["size"] == 64
    assert not result.artifacts["models"]["vmf"].training
    again = run(cfg, seed=1, data=data, device="cpu", progress=False)
    assert again.metrics == m, "a run is a function of (cfg, seed)"


def test_train_vae_keeps_the_weights_of_the_best_validation_epoch() -> None:
    """The returned model is the one after the epoch with the lowest validation -ELBO, not the last."""
    cfg = dataclasses.replace(CONFIGS["smoke"], latent="gauss", epochs=6, decoder_hidden=32, lr=2e-2)
    gen = torch.Generator().manual_seed(0)
    x_train = (torch.rand(64, 64, generator=gen) > 0.5).float()  # few images, a high lr: it overfits
    x_val = (torch.rand(32, 64, generator=gen) > 0.5).float()
    seen: list[dict[str, torch.Tensor]] = []
    seed_everything(0)
    model = VAE(64, cfg)
    forward = model.forward

    def spy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not model.training and x is x_val:  # an evaluation on the validation set
            seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return forward(x)

    model.forward = spy  # type: ignore[method-assign]
    r = train_vae(model, x_train, x_val[:8], x_val=x_val, seed=0, progress=False)
    assert len(r["val_neg_elbo"]) == len(seen) == cfg.epochs
    best = r["best_epoch"]
    assert r["val_neg_elbo"][best - 1] == min(r["val_neg_elbo"])
    assert best < cfg.epochs, "this setting should overfit, or the test proves nothing"
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[best - 1][k]), k
    assert any(not torch.equal(v, seen[-1][k]) for k, v in model.state_dict().items())
    # without validation data the last epoch is kept
    assert train_vae(VAE(64, cfg), x_train, x_val[:8], seed=0, progress=False)["best_epoch"] == cfg.epochs


def test_fashion_mnist_missing_names_the_package(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


# ---------------------------------------------------------------- the evaluation checks
def _trained_enough(latent: str, seed: int = 0, steps: int = 20) -> tuple[VAE, torch.Tensor]:
    """A small model of the smoke setting (a few steps, so its codes differ across images)."""
    seed_everything(seed)
    cfg = dataclasses.replace(CONFIGS["smoke"], latent=latent, decoder_hidden=64)
    data = load_data(cfg)
    model = VAE(64, cfg)
    x = data.x_train[:512]
    fit(model, lambda step: x[128 * (step % 4) : 128 * (step % 4 + 1)], elbo_loss, steps=steps,
        optimizer=make_optimizer(model), schedule="constant", progress=False)
    return model.eval(), data.x_test[:100]


@pytest.mark.parametrize("latent", LATENTS)
def test_kl_monte_carlo_agrees_with_the_reported_kl(latent: str) -> None:
    model, x = _trained_enough(latent)
    check = kl_monte_carlo(model, x, samples=200)
    assert check.agrees(), check
    q = model.posterior(x)
    reference = torch.distributions.kl_divergence(q, model.prior()).double().mean().item()
    assert check.reported == pytest.approx(reference, rel=1e-5)
    assert 0 < check.se < 0.05


def test_kl_monte_carlo_fails_when_the_model_reports_the_wrong_constant() -> None:
    model, x = _trained_enough("vmf")
    cfg = model.cfg
    # the s-vae-pytorch slip: the KL of the next dimension up
    model.vmf_kl = vmf_kl_uniform(cfg.kappa, cfg.dim + 1).item()
    check = kl_monte_carlo(model, x, samples=200)
    assert not check.agrees(), check
    # the circular check the chapter used to make cannot see it: the curve is still a constant
    nll, kl = model(x)
    assert torch.allclose(kl, torch.full_like(kl, model.vmf_kl))


def test_kl_monte_carlo_fails_when_log_prob_is_off_by_a_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _trained_enough("vmf")
    good = VonMisesFisher.log_prob
    monkeypatch.setattr(VonMisesFisher, "log_prob", lambda self, value: good(self, value) + 0.1)
    check = kl_monte_carlo(model, x, samples=200)
    assert not check.agrees(), check


def test_kl_monte_carlo_fails_when_the_sampler_uses_another_concentration(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _trained_enough("vmf")
    good = VAE.posterior

    def posterior(self: VAE, xb: torch.Tensor) -> VonMisesFisher:
        q = good(self, xb)
        wrong = VonMisesFisher(q.loc, 0.8 * self.cfg.kappa)
        q.sample = wrong.sample  # draws at 0.8 kappa, scored at kappa
        return q

    monkeypatch.setattr(VAE, "posterior", posterior)
    assert not kl_monte_carlo(model, x, samples=200).agrees()


def test_mutual_information_is_zero_for_a_constant_encoder_and_capped_by_the_kl() -> None:
    torch.manual_seed(0)
    d, kappa, n = 3, 20.0, 64
    mu = torch.nn.functional.normalize(torch.randn(d), dim=0)
    constant = VonMisesFisher(mu.expand(n, d), kappa)
    # the same KL as any vMF posterior of this kappa, and no information
    kl = torch.distributions.kl_divergence(constant, HypersphericalUniform(d))
    torch.testing.assert_close(kl, torch.full((n,), vmf_kl_uniform(kappa, d).item()))
    none = mutual_information(constant, samples=20)
    assert abs(none.value) < 1e-5 and none.se < 1e-5
    spread = VonMisesFisher(torch.nn.functional.normalize(torch.randn(n, d), dim=-1), kappa)
    mi = mutual_information(spread, samples=200)
    assert 0.5 < mi.value < min(math.log(n), vmf_kl_uniform(kappa, d).item()) - 4 * mi.se, mi
    far = VonMisesFisher(torch.eye(d)[torch.arange(n) % d], 1e4)  # three far-apart codes: I = log 3
    assert abs(mutual_information(far, samples=20).value - math.log(d)) < 1e-3


def test_shuffled_codes_make_no_difference_to_a_decoder_that_ignores_z() -> None:
    model, x = _trained_enough("vmf", steps=200)
    own, shuffled = shuffled_reconstruction(model, x, torch.Generator().manual_seed(0))
    assert shuffled.mean() > own.mean() + 1.0, "the trained decoder uses its code"
    with torch.no_grad():
        for lin in [*model.decoder.cond, model.decoder.out_cond]:
            lin.weight.zero_()
    own, shuffled = shuffled_reconstruction(model, x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(own, shuffled)


def test_iw_bound_is_the_exact_nll_when_the_posterior_is_the_prior() -> None:
    # encoder output 0 (q = N(0, I) = p(z)) and a decoder that ignores z: every weight is p(x)
    model, x = _trained_enough("gauss")
    with torch.no_grad():
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.zero_()
        for lin in [*model.decoder.cond, model.decoder.out_cond]:
            lin.weight.zero_()
        exact = model.reconstruction(x, torch.zeros(x.shape[0], model.cfg.dim)).double()
    log_w = log_importance_weights(model, x, 7, max_rows=150)  # several chunks
    assert log_w.shape == (7, x.shape[0])
    for k in (1, 3, 7):
        torch.testing.assert_close(iw_nll(log_w, k), exact, rtol=1e-6, atol=1e-4)
    with pytest.raises(ValueError, match="exceeds"):
        iw_nll(log_w, 8)


def test_iw_bound_tightens_with_k_on_a_trained_model() -> None:
    model, x = _trained_enough("vmf")
    seed_everything(1)
    log_w = log_importance_weights(model, x, 200)
    one, many = iw_nll(log_w, 1).mean().item(), iw_nll(log_w).mean().item()
    assert many < one, (one, many)
    torch.testing.assert_close(iw_nll(log_w, 1), -log_w[0])
