"""Function-preserving growth (chapter 06): ``kexue.growth``."""

from __future__ import annotations

import itertools

import pytest
import torch

from kexue.growth import (
    Expansion,
    contract_hidden,
    deepen,
    expand_hidden,
    growth_gains,
    perturb,
    symmetry_gap,
    widen,
)
from kexue.nn import MaskedLM, TransformerConfig, TransformerEncoder


def _cfg(**kw) -> TransformerConfig:
    base = dict(vocab_size=40, dim=16, depth=2, heads=2, ffn_dim=32, max_len=12, dropout=0.0,
                attention_dropout=0.0, layer_norm_eps=1e-5)
    base.update(kw)
    return TransformerConfig(**base)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    return ids, mask


TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize(
    "norm,position,heads,convention,activation",
    [c for c in itertools.product(["pre", "post"], ["learned", "rotary", "none"], ["size", "count"],
                                   ["isometric", "copy"], ["gelu", "relu"])
     if not (c[4] == "relu" and c[1] == "none")],
)
def test_widen_float64(norm, position, heads, convention, activation):
    _check_widen(norm, position, heads, convention, activation, torch.float64)


@pytest.mark.parametrize("norm,position,heads,convention", [("pre", "rotary", "size", "isometric"),
                                                            ("post", "learned", "size", "isometric"),
                                                            ("post", "rotary", "count", "copy")])
def test_widen_float32(norm, position, heads, convention):
    _check_widen(norm, position, heads, convention, "gelu", torch.float32)


def _check_widen(norm, position, heads, convention, activation, dtype):
    torch.manual_seed(0)
    small = MaskedLM(_cfg(norm=norm, position=position, activation=activation)).to(dtype).eval()
    big = widen(small, 2, heads=heads, convention=convention)
    assert big.config.dim == 32 and big.config.ffn_dim == 64
    assert big.config.heads == (4 if heads == "count" else 2)
    ids, mask = _batch()
    with torch.no_grad():
        diff = (big(ids, mask) - small(ids, mask))[mask].abs().max().item()
        hs = small.encoder(ids, mask, return_all=True)[1]
        hb = big.encoder(ids, mask, return_all=True)[1]
    assert diff <= TOL[dtype]
    for a, b in zip(hs, hb):
        assert (expand_hidden(a, 2, convention) - b)[mask].abs().max().item() <= TOL[dtype]
    assert next(big.parameters()).dtype == dtype


@pytest.mark.parametrize("factor", [2, 3])
def test_widen_encoder_any_factor_and_attention_fix(factor):
    torch.manual_seed(1)
    small = TransformerEncoder(_cfg(heads=2)).double().eval()
    ids, mask = _batch(1)
    for fix in ("weights", "config"):
        big = widen(small, factor, attention_fix=fix)
        with torch.no_grad():
            torch.testing.assert_close(big(ids, mask)[mask], expand_hidden(small(ids, mask), factor)[mask],
                                       atol=1e-10, rtol=0)
    assert widen(small, factor, attention_fix="config").config.attention_scale == pytest.approx(8 ** -0.5)


def test_isometric_convention_divides_layernorm_eps():
    small = MaskedLM(_cfg(norm="post", layer_norm_eps=1e-5))
    assert widen(small, 2).config.layer_norm_eps == pytest.approx(0.5e-5)
    assert widen(small, 2, convention="copy").config.layer_norm_eps == pytest.approx(1e-5)


def test_noise_keeps_function_but_breaks_symmetry():
    torch.manual_seed(2)
    small = MaskedLM(_cfg()).double().eval()
    big = widen(small, 2, noise=0.3, generator=torch.Generator().manual_seed(0))
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(big(ids, mask)[mask], small(ids, mask)[mask], atol=1e-10, rtol=0)
    assert symmetry_gap(widen(small, 2)) < 1e-12
    assert symmetry_gap(big) > 1e-3


def test_noiseless_training_stays_in_the_small_models_image():
    """The digest's surprise: without noise or dropout the grown model never leaves T(theta)."""
    torch.manual_seed(3)
    small = MaskedLM(_cfg(activation="relu", position="learned")).double()
    big = widen(small, 2)
    ids, mask = _batch()
    opt = torch.optim.SGD(big.parameters(), lr=0.1)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(big(ids, mask)[mask], ids[mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert symmetry_gap(big) < 1e-10


def test_sgd_on_grown_model_equals_small_model_with_rescaled_lr():
    """Eq. ch06-sgd: per-tensor learning rate eta / gain reproduces the grown trajectory."""
    torch.manual_seed(4)
    small = MaskedLM(_cfg(activation="relu", position="learned")).double()
    big = widen(small, 2)
    gains = growth_gains(small, 2)
    ids, mask = _batch()
    lr = 0.05
    groups = [{"params": [p], "lr": lr / gains[n]} for n, p in small.named_parameters()]
    opt_s = torch.optim.SGD(groups)
    opt_b = torch.optim.SGD(big.parameters(), lr=lr)
    for _ in range(4):
        for model, opt in ((small, opt_s), (big, opt_b)):
            loss = torch.nn.functional.cross_entropy(model(ids, mask)[mask], ids[mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        torch.testing.assert_close(big(ids, mask)[mask], small(ids, mask)[mask], atol=1e-9, rtol=0)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_deepen_inserts_identity_blocks(norm):
    torch.manual_seed(5)
    eps = 0.0 if norm == "post" else 1e-5
    small = MaskedLM(_cfg(norm=norm, layer_norm_eps=eps)).double().eval()
    deep = deepen(small, 2, generator=torch.Generator().manual_seed(0))
    assert deep.config.depth == 4
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(deep(ids, mask)[mask], small(ids, mask)[mask], atol=1e-10, rtol=0)
    shallow = deepen(small, positions=[0, 2])
    assert shallow.config.depth == 4


def test_deepen_post_ln_with_eps_is_approximate():
    torch.manual_seed(6)
    small = MaskedLM(_cfg(norm="post", layer_norm_eps=1e-2)).double().eval()
    deep = deepen(small, 2)
    ids, mask = _batch()
    with torch.no_grad():
        err = (deep(ids, mask) - small(ids, mask))[mask].abs().max().item()
    assert 1e-10 < err < 1.0, "post-LN identity blocks are exact only for eps = 0"


def test_expansion_maps_are_inverse():
    h = torch.randn(4, 6, dtype=torch.float64)
    for conv in ("isometric", "copy"):
        torch.testing.assert_close(contract_hidden(expand_hidden(h, 3, conv), 3, conv), h)
    e = expand_hidden(h, 2)
    torch.testing.assert_close(e.norm(dim=-1), h.norm(dim=-1))  # the article's isometry
    assert torch.equal(e[:, 0], e[:, 1])


@pytest.mark.parametrize("bad", [1, 0, 2.0, "2", True])
def test_bad_factor(bad):
    with pytest.raises(ValueError, match="factor"):
        widen(MaskedLM(_cfg()), bad)


def test_bad_options_and_models():
    m = MaskedLM(_cfg())
    with pytest.raises(ValueError, match="heads"):
        widen(m, 2, heads="both")
    with pytest.raises(ValueError, match="convention"):
        widen(m, 2, convention="other")
    with pytest.raises(ValueError):
        widen(torch.nn.Linear(3, 3), 2)
    with pytest.raises(ValueError, match="noise"):
        widen(m, 2, noise=-1.0)
    with pytest.raises(ValueError, match="positions"):
        deepen(m, positions=[5])
    with pytest.raises(ValueError):
        widen(MaskedLM(_cfg(mixer="fnet")), 2)


def test_perturb_changes_weights_and_is_not_exact():
    torch.manual_seed(8)
    m = MaskedLM(_cfg()).double().eval()
    big = widen(m, 2, convention="copy")
    before = [p.detach().clone() for p in big.parameters()]
    perturb(big, 0.1, torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, big.parameters()))
    ids, mask = _batch()
    with torch.no_grad():
        assert (big(ids, mask) - m(ids, mask))[mask].abs().max().item() > 1e-6
    with pytest.raises(ValueError, match="noise"):
        perturb(m, -0.1)


def test_widen_hf_bert_minilm_keeps_sentence_embeddings():
    transformers = pytest.importorskip("transformers")
    from kexue.growth import widen_hf_bert

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)
    torch.manual_seed(7)
    small = transformers.BertModel(cfg).double().eval()
    big = widen_hf_bert(small, 2).eval()
    ids, mask = _batch()
    with torch.no_grad():
        a = small(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        b = big(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(b[mask], expand_hidden(a, 2)[mask], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="BertModel"):
        widen_hf_bert(torch.nn.Linear(2, 2), 2)


def test_expansion_validates():
    with pytest.raises(ValueError):
        Expansion(())
    with pytest.raises(ValueError, match="group"):
        Expansion((1.0,), group=0)
    with pytest.raises(ValueError, match="convention"):
        symmetry_gap(widen(MaskedLM(_cfg()), 2), 2, convention="other")


# ---------------------------------------------------------------------------- requires_grad survives growth


def _partly_frozen(depth: int = 2) -> MaskedLM:
    torch.manual_seed(9)
    model = MaskedLM(_cfg(depth=depth)).double()
    model.encoder.token_embedding.weight.requires_grad_(False)
    for p in model.encoder.blocks[0].attention.parameters():
        p.requires_grad_(False)
    return model


def _widen_keeps_flags(grow) -> bool:
    small = _partly_frozen()
    flags = {n: p.requires_grad for n, p in small.named_parameters()}
    big = grow(small)
    return {n: p.requires_grad for n, p in big.named_parameters()} == flags and any(not f for f in flags.values())


def test_widen_carries_each_parameters_requires_grad():
    assert _widen_keeps_flags(lambda m: widen(m, 2))
    g = torch.Generator().manual_seed(0)
    assert _widen_keeps_flags(lambda m: widen(m, 3, heads="count", noise=0.1, generator=g))

    def unfreezing(m):  # the old widen: a fresh model, every parameter trainable
        big = widen(m, 2)
        for p in big.parameters():
            p.requires_grad_(True)
        return big

    assert not _widen_keeps_flags(unfreezing), "the check must fail on a widen that unfreezes"
    # a frozen parameter of the grown model receives no gradient and is not updated
    big = widen(_partly_frozen(), 2)
    ids, mask = _batch()
    torch.nn.functional.cross_entropy(big(ids, mask)[mask], ids[mask]).backward()
    assert big.encoder.token_embedding.weight.grad is None
    assert big.encoder.blocks[1].attention.query.weight.grad is not None


def test_widen_hf_bert_carries_requires_grad():
    transformers = pytest.importorskip("transformers")
    from kexue.growth import widen_hf_bert

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    small = transformers.BertModel(cfg)
    small.embeddings.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in small.named_parameters()}
    assert {n: p.requires_grad for n, p in widen_hf_bert(small, 2).named_parameters()} == flags


def test_deepen_keeps_copied_flags_and_makes_new_blocks_trainable():
    small = _partly_frozen(depth=2)
    deep = deepen(small, 2)  # layout: block 0, new, block 1, new
    flags = {n: p.requires_grad for n, p in deep.named_parameters()}
    assert not flags["encoder.token_embedding.weight"]
    assert not any(f for n, f in flags.items() if n.startswith("encoder.blocks.0.attention."))
    assert all(f for n, f in flags.items() if n.startswith("encoder.blocks.0.ffn."))
    new_blocks = ("encoder.blocks.1.", "encoder.blocks.3.")
    assert all(f for n, f in flags.items() if n.startswith(new_blocks))  # new blocks: trainable
    assert all(f for n, f in flags.items() if n.startswith("encoder.blocks.2."))  # copy of block 1
    frozen_all = _partly_frozen(depth=1).requires_grad_(False)
    deep = deepen(frozen_all, positions=[1])
    assert all(p.requires_grad for p in deep.encoder.blocks[1].parameters())
    assert not any(p.requires_grad for p in deep.encoder.blocks[0].parameters())
    assert all(not p.requires_grad for p in frozen_all.parameters()), "the source model is not changed"
