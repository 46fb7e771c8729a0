import pytest
import torch

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
