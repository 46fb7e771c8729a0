import pytest
import torch

from kexue import checks
from kexue.nn import MaskedLM, TransformerConfig, TransformerEncoder, count_parameters
from kexue.utils import seed_everything

NORMS = ["pre", "post"]
POSITIONS = ["learned", "rotary", "none"]


def small_config(**overrides) -> TransformerConfig:
    base = dict(vocab_size=40, dim=32, depth=2, heads=4, ffn_dim=64, max_len=24, dropout=0.1, attention_dropout=0.1)
    base.update(overrides)
    return TransformerConfig(**base)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("position", POSITIONS)
def test_shapes_and_all_hidden(norm, position):
    seed_everything(0)
    config = small_config(norm=norm, position=position)
    encoder = TransformerEncoder(config).eval()
    ids = torch.randint(1, 40, (3, 11))
    hidden, layers = encoder(ids, return_all=True)
    assert hidden.shape == (3, 11, 32)
    assert len(layers) == config.depth + 1
    assert all(h.shape == (3, 11, 32) for h in layers)
    torch.testing.assert_close(layers[-1], hidden)
    logits = MaskedLM(config).eval()(ids)
    assert logits.shape == (3, 11, 40)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("position", POSITIONS)
def test_padding_does_not_change_real_positions(norm, position):
    seed_everything(1)
    model = MaskedLM(small_config(norm=norm, position=position)).eval().double()
    ids = torch.randint(1, 40, (2, 9))
    lengths = torch.tensor([9, 5])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    reference = model(ids, mask)
    # append extra padding, and change what sits in the padded slots
    padded = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], dim=1)
    padded[1, 5:] = torch.randint(1, 40, (10,))
    padded_mask = torch.cat([mask, torch.zeros(2, 6, dtype=torch.bool)], dim=1)
    out = model(padded, padded_mask)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[b, :n], reference[b, :n], rtol=1e-10, atol=1e-10)
    # each sample alone, unpadded, gives the same outputs as in the padded batch
    alone = model(ids[1:, :5])
    torch.testing.assert_close(alone[0], reference[1, :5], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("norm", NORMS)
def test_deterministic_under_seed(norm):
    def build_and_run():
        seed_everything(7)
        model = MaskedLM(small_config(norm=norm)).train()
        ids = torch.randint(1, 40, (2, 8))
        return model(ids)

    torch.testing.assert_close(build_and_run(), build_and_run(), rtol=0, atol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_dropout_active_in_train_off_in_eval(norm):
    seed_everything(3)
    model = TransformerEncoder(small_config(norm=norm, dropout=0.3, attention_dropout=0.3))
    ids = torch.randint(1, 40, (2, 8))
    model.train()
    assert not torch.allclose(model(ids), model(ids)), "two train-mode passes should differ (dropout)"
    model.eval()
    torch.testing.assert_close(model(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_gradients_reach_every_parameter(norm):
    seed_everything(4)
    model = MaskedLM(small_config(norm=norm))
    ids = torch.randint(1, 40, (2, 8))
    model(ids).logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_mlm_head_is_tied():
    model = MaskedLM(small_config())
    assert count_parameters(model) == count_parameters(model.encoder) + 32 * 32 + 32 + 2 * 32 + 40


def test_inputs_embeds_path_matches_ids():
    seed_everything(5)
    encoder = TransformerEncoder(small_config()).eval()
    ids = torch.randint(1, 40, (2, 6))
    torch.testing.assert_close(encoder(ids), encoder(inputs_embeds=encoder.token_embedding(ids)))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(norm="middle"), "norm"),
        (dict(position="sinusoid"), "position"),
        (dict(dim=30, heads=4), "divisible"),
        (dict(dropout=1.5), "dropout"),
        (dict(depth=0), "depth"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        small_config(**overrides)


def test_bad_inputs_raise():
    encoder = TransformerEncoder(small_config())
    with pytest.raises(ValueError, match="input_ids"):
        encoder(torch.rand(2, 5))
    with pytest.raises(ValueError, match="mask"):
        encoder(torch.randint(1, 40, (2, 5)), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_len"):
        encoder(torch.randint(1, 40, (1, 30)))
    with pytest.raises(ValueError, match="exactly one"):
        encoder()


# --------------------------------------------------------------------------- reliability


def _poison(x, mask):
    """``x`` with inf, NaN and -inf in its padded positions (the real ones untouched)."""
    bad = x.clone()
    pad = ~mask
    values = torch.tensor([float("inf"), float("nan"), float("-inf")], dtype=x.dtype)
    bad[pad] = values[torch.arange(int(pad.sum())) % 3][:, None].expand(-1, x.shape[-1])
    return bad


def _encoder_leak(encoder, x, mask):
    """Largest change of the real outputs and of the parameter gradients of a loss on the real
    outputs, when the padding of ``inputs_embeds`` holds inf/NaN instead of zeros (inf if not finite)."""

    def run(inputs):
        encoder.zero_grad(set_to_none=True)
        out = encoder(inputs_embeds=inputs, mask=mask)
        out[mask].square().sum().backward()
        return out[mask].detach(), [p.grad.clone() for p in encoder.parameters() if p.grad is not None]

    ref, ref_grads = run(x.masked_fill(~mask[..., None], 0.0))
    out, grads = run(_poison(x, mask))
    worst = 0.0
    for a, b in [(out, ref), *zip(grads, ref_grads)]:
        d = (a - b).abs()
        worst = max(worst, d.max().item() if torch.isfinite(d).all() else float("inf"))
    return worst


def _padded_embeds(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 9, 32, generator=g, dtype=torch.float64)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 5, 2])[:, None]
    return x, mask


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("position", POSITIONS)
def test_nonfinite_padding_never_reaches_real_tokens(norm, position):
    seed_everything(8)
    encoder = TransformerEncoder(small_config(norm=norm, position=position)).eval().double()
    x, mask = _padded_embeds()
    assert _encoder_leak(encoder, x, mask) < 1e-10


def test_nonfinite_padding_check_catches_multiplicative_zeroing(monkeypatch):
    """The check above fails when padding is zeroed by multiplication (0 * inf = NaN)."""
    seed_everything(8)
    encoder = TransformerEncoder(small_config()).eval().double()
    x, mask = _padded_embeds()

    def multiply(t, m):
        return t if m is None else t * m.reshape(*m.shape, *(1,) * (t.dim() - m.dim())).to(t.dtype)

    monkeypatch.setattr(checks, "zero_padding", multiply)
    assert _encoder_leak(encoder, x, mask) == float("inf")


def test_attention_ignores_nonfinite_padding():
    seed_everything(9)
    attention = TransformerEncoder(small_config(position="rotary")).double().eval().blocks[0].attention
    x, mask = _padded_embeds()
    out = attention(_poison(x, mask), mask)
    assert torch.isfinite(out).all()  # the padded rows are zeroed before the projections
    torch.testing.assert_close(out[mask], attention(x, mask)[mask], rtol=1e-12, atol=1e-12)


def test_mask_contract():
    seed_everything(10)
    encoder = TransformerEncoder(small_config()).eval()
    ids = torch.randint(1, 40, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    expected = encoder(ids, mask)
    # a tokenizer's int64 attention_mask is the same mask
    torch.testing.assert_close(encoder(ids, mask.long()), expected, rtol=0, atol=0)
    # Hugging Face's additive mask (0 = real, -1e4 = padding) used to be cast to bool: now refused
    additive = (~mask).float() * -1e4
    with pytest.raises(TypeError, match=r"additive attention mask.*mask == 0"):
        encoder(ids, additive)
    torch.testing.assert_close(encoder(ids, additive == 0), expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="mask"):
        encoder(ids, torch.full((2, 6), 0.5))
    with pytest.raises(ValueError, match="only 0 and 1"):
        encoder(ids, torch.full((2, 6), 2))
    with pytest.raises(ValueError, match="at least one real"):
        encoder(ids, torch.zeros(2, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        encoder(ids, [[1] * 6] * 2)


def test_token_ids_outside_the_vocabulary_raise():
    encoder = TransformerEncoder(small_config())
    for bad in (40, 1000, -1):
        ids = torch.randint(1, 40, (2, 5))
        ids[1, 3] = bad
        with pytest.raises(ValueError, match=r"input_ids must hold token ids in \[0, vocab_size=40\)"):
            encoder(ids)
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        encoder([[1, 2, 3]])
    assert encoder(torch.randint(1, 40, (2, 5), dtype=torch.int16)).shape == (2, 5, 32)


def test_positions_are_checked():
    rotary = TransformerEncoder(small_config(position="rotary")).eval()
    ids = torch.randint(1, 40, (2, 5))
    with pytest.raises(ValueError, match="positions"):
        rotary(ids, positions=torch.arange(4))
    with pytest.raises(ValueError, match="positions"):
        rotary(ids, positions=torch.arange(5).expand(3, 5))
    with pytest.raises(ValueError, match="positions must be finite"):
        rotary(ids, positions=torch.tensor([0.0, 1.0, float("nan"), 3.0, 4.0]))
    torch.testing.assert_close(rotary(ids, positions=torch.arange(5)), rotary(ids))
    learned = TransformerEncoder(small_config(position="learned"))
    with pytest.raises(ValueError, match="positions are only used with position='rotary'"):
        learned(ids, positions=torch.arange(5))


def test_empty_batch_and_empty_sequence():
    encoder = TransformerEncoder(small_config()).eval()
    assert encoder(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 32)
    assert encoder(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.bool)).shape == (0, 5, 32)
    with pytest.raises(ValueError, match="at least one token"):
        encoder(torch.zeros(2, 0, dtype=torch.long))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(attention_scale=float("nan")), "attention_scale"),
        (dict(attention_scale=-1.0), "attention_scale"),
        (dict(rope_base=float("inf")), "rope_base"),
        (dict(dropout=float("nan")), "dropout"),
        (dict(layer_norm_eps=float("nan")), "layer_norm_eps"),
        (dict(position="rotary", mixer="gmlp"), "mixer"),
        (dict(pad_token_id=40), "pad_token_id"),
        (dict(mixer_options=None), "mixer_options"),
    ],
)
def test_bad_numeric_config_raises(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        small_config(**overrides)


def test_causal_attention_sees_only_earlier_keys_and_needs_attention():
    """``causal=True``: changing later tokens never moves earlier outputs; without it they do;
    left padding stays finite; only the attention mixer can be causal."""
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=30, dim=16, depth=2, heads=2, ffn_dim=32, max_len=12,
                            dropout=0.0, attention_dropout=0.0, norm="pre", causal=True)
    enc = TransformerEncoder(cfg).double().eval()
    free = TransformerEncoder(TransformerConfig(**{**cfg.to_dict(), "causal": False})).double().eval()
    free.load_state_dict(enc.state_dict())
    ids = torch.randint(1, 30, (2, 8))
    later = ids.clone()
    later[:, 5:] = 3
    with torch.no_grad():
        torch.testing.assert_close(enc(later)[:, :5], enc(ids)[:, :5], rtol=0, atol=0)
        assert (free(later)[:, :5] - free(ids)[:, :5]).abs().max() > 1e-6
        left_padded = torch.tensor([[False, False, True, True, True, True, True, True]] * 2)
        out = enc(ids, left_padded)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="causal"):
        TransformerConfig(mixer="fnet", causal=True)
    with pytest.raises(TypeError, match="causal must be a bool"):
        TransformerConfig(causal=1)
