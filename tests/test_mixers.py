"""Tests for kexue.mixers (book chapter 05): every fast path against a naive formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kexue import mixers
from kexue.mixers import MIXERS, dft_matrix
from kexue.nn import TransformerConfig, TransformerEncoder
from kexue.utils import seed_everything

NAMES = sorted(MIXERS)


DIM, SEQ_LEN = 8, 10


def build(name: str, dim: int = DIM, seq_len: int = SEQ_LEN, **options) -> mixers.TokenMixer:
    """A float64 mixer with every parameter moved away from its special initial value."""
    seed_everything(0)
    if name in ("synthesizer_random", "synthesizer_dense", "external_attention", "attention") and "heads" not in options:
        options["heads"] = 2
    module = MIXERS[name](dim, seq_len, **options).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))  # e.g. gMLP's W ~ 1e-6 and b = 1 would hide mistakes
    return module


# --------------------------------------------------------------------------- naive references
# Written from the chapter's formulas with explicit sums, independent of the module's code.


def _lin(x, layer):
    return x @ layer.weight.T + layer.bias


def _softmax_naive(z, dim):
    e = torch.exp(z - z.max())
    return e / e.sum(dim=dim, keepdim=True)


def naive(m: mixers.TokenMixer, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    b, n, d = x.shape
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask.bool()
    allowed = real[:, None, :].expand(b, n, n).clone()  # allowed[b, i, j]: query i may read key j
    if m.causal:
        allowed &= torch.ones(n, n, dtype=torch.bool).tril()
    name = m.key
    out = torch.zeros_like(x)
    if name in ("attention", "synthesizer_random", "synthesizer_dense"):
        h = m.heads
        dh = d // h
        if name == "attention":
            att = m.attention
            q, k, v = _lin(x, att.query), _lin(x, att.key), _lin(x, att.value)
        else:
            v = _lin(x, m.value)
        o = torch.zeros_like(x)
        for bi in range(b):
            for hi in range(h):
                sl = slice(hi * dh, (hi + 1) * dh)
                if name == "attention":
                    logits = q[bi, :, sl] @ k[bi, :, sl].T * m.scale
                elif name == "synthesizer_random":
                    logits = m.logits[hi, :n, :n]
                else:
                    hid = torch.relu(_lin(x[bi], m.hidden_layer))
                    logits = _lin(hid, m.logit_layer).reshape(n, h, m.seq_len)[:, hi, :n]
                e = torch.exp(logits - logits.max()) * allowed[bi]
                a = e / e.sum(-1, keepdim=True)
                o[bi, :, sl] = a @ v[bi, :, sl]
        return _lin(o, m.attention.output if name == "attention" else m.output)
    if name == "mixer":
        v = x * real[..., None]
        act = (lambda t: t) if m.activation == "identity" else F.gelu
        for bi in range(b):
            for c in range(d):  # the same token MLP for every channel
                hid = act(m.w1[:, :n] @ v[bi, :, c] + m.b1)
                out[bi, :, c] = m.w2[:n] @ hid + m.b2[:n]
        return out
    if name == "resmlp":
        w = m.weight[:n, :n].tril() if m.causal else m.weight[:n, :n]
        v = (x * m.alpha + m.beta) * real[..., None]
        return (w @ v + m.bias[:n, None]) * m.gamma
    if name == "gmlp":
        w = m.weight[:n, :n].tril() if m.causal else m.weight[:n, :n]
        z = F.gelu(_lin(x, m.proj_in))
        z1, z2 = z[..., : m.hidden], z[..., m.hidden:]
        mu = z2.mean(-1, keepdim=True)
        var = ((z2 - mu) ** 2).mean(-1, keepdim=True)
        z2n = (z2 - mu) / torch.sqrt(var + m.norm.eps) * m.norm.weight + m.norm.bias
        gate = w @ (z2n * real[..., None]) + m.bias[:n, None]
        return _lin(z1 * gate, m.proj_out)
    if name == "fnet":
        j = torch.arange(n, dtype=torch.float64)
        c_n, s_n = torch.cos(2 * math.pi * j[:, None] * j / n), torch.sin(2 * math.pi * j[:, None] * j / n)
        k = torch.arange(d, dtype=torch.float64)
        c_d, s_d = torch.cos(2 * math.pi * k[:, None] * k / d), torch.sin(2 * math.pi * k[:, None] * k / d)
        v = x * real[..., None]
        return c_n.to(x.dtype) @ v @ c_d.to(x.dtype) - s_n.to(x.dtype) @ v @ s_d.to(x.dtype)
    if name == "external_attention":
        h, S = m.heads, m.slots
        dh = d // h
        q = _lin(x, m.query)
        o = torch.zeros_like(x)
        for bi in range(b):
            for hi in range(h):
                sl = slice(hi * dh, (hi + 1) * dh)
                logits = q[bi, :, sl] @ m.memory_key[hi].T  # (n, S)
                if m.normalisation == "row":
                    alpha = _softmax_naive(logits, -1)
                else:
                    alpha_hat = torch.zeros_like(logits)
                    for jj in range(S):  # softmax over the real tokens of column j
                        col = torch.exp(logits[:, jj]) * real[bi]
                        alpha_hat[:, jj] = col / col.sum()
                    alpha = alpha_hat / (m.eps + alpha_hat.sum(-1, keepdim=True))
                o[bi, :, sl] = alpha @ m.memory_value[hi]
        return _lin(o, m.output)
    if name == "aft_simple":
        q, k, v = _lin(x, m.query), _lin(x, m.key_proj), _lin(x, m.value)
        y = torch.zeros_like(x)
        for bi in range(b):
            for t in range(n):
                keep = allowed[bi, t]
                w = torch.exp(k[bi]) * keep[:, None]  # (n, d)
                y[bi, t] = torch.sigmoid(q[bi, t]) * (w * v[bi]).sum(0) / w.sum(0)
        return _lin(y, m.output)
    raise AssertionError(name)


def _inputs(b=3, n=7, d=DIM, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1 % b, 5:] = False
    mask[2 % b, 2:] = False
    return x, mask


def _causal_ok(name):
    cls = MIXERS[name]
    return cls.supports_causal and name != "external_attention"


CASES = [(name, {}) for name in NAMES] + [
    ("mixer", {"activation": "identity"}),
    ("external_attention", {"normalisation": "row"}),
    ("external_attention", {"normalisation": "row", "causal": True}),
] + [(name, {"causal": True}) for name in NAMES if _causal_ok(name)]
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o in CASES]


# --------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 7, SEQ_LEN])
def test_shape_preserved(name, n):
    m = build(name)
    x = torch.randn(2, n, DIM, dtype=torch.float64)
    assert m(x).shape == (2, n, DIM)
    assert m(x, torch.ones(2, n, dtype=torch.bool)).shape == (2, n, DIM)


def test_registry_names_match_keys():
    assert set(MIXERS) == {"attention", "synthesizer_random", "synthesizer_dense", "mixer", "resmlp", "gmlp",
                           "fnet", "external_attention", "aft_simple"}
    for name, cls in MIXERS.items():
        assert cls.key == name and issubclass(cls, mixers.TokenMixer)


# --------------------------------------------------------------------------- fast path vs naive


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("use_mask", [False, True])
def test_forward_and_gradient_match_naive(name, options, use_mask):
    m = build(name, **options)
    x, mask = _inputs()
    mask = mask if use_mask else None
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    fast, slow = m(x1, mask), naive(m, x2, mask)
    real = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
    torch.testing.assert_close(fast[real], slow[real], rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(fast) * real[..., None]  # loss on the real tokens only
    params = [p for p in m.parameters() if p.requires_grad]
    g_fast = torch.autograd.grad((fast * weight).sum(), [x1, *params], allow_unused=True)
    g_slow = torch.autograd.grad((slow * weight).sum(), [x2, *params], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_fast)
    for gf, gs in zip(g_fast, g_slow):
        if gf is None or gs is None:
            assert (gf is None or gf.abs().max() == 0) and (gs is None or gs.abs().max() == 0)
            continue
        torch.testing.assert_close(gf, gs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_module_reference_matches_forward(name, options):
    m = build(name, **options)
    x, mask = _inputs()
    torch.testing.assert_close(m(x, mask), m.forward_reference(x, mask), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- O = A V


MATRIX_CASES = [(n, o) for n, o in CASES
                if MIXERS[n].has_token_matrix and (n != "mixer" or o.get("activation") == "identity")]


@pytest.mark.parametrize("name,options", MATRIX_CASES, ids=[f"{n}-{o}" for n, o in MATRIX_CASES])
def test_token_matrix_reproduces_forward(name, options):
    m = build(name, **options)
    x, mask = _inputs()
    a = m.token_matrix(x, mask)
    assert a.shape[0] == x.shape[0] and a.shape[-2:] == (x.shape[1], x.shape[1])
    if a.dim() == 4:  # several heads, or AFT's matrix per channel
        v = m.values(x, mask)
        mixed = a @ (v if v.dim() == 4 else v[:, None])
    else:
        mixed = a @ m.values(x, mask)
    torch.testing.assert_close(m.readout(x, mixed), m(x, mask), rtol=1e-10, atol=1e-10)


def test_mixer_with_gelu_has_no_token_matrix():
    m = build("mixer")
    with pytest.raises(TypeError, match="activation='identity'"):
        m.token_matrix(torch.randn(1, 4, DIM, dtype=torch.float64))


def test_mixer_identity_is_rank_limited_fixed_attention():
    m = build("mixer", activation="identity", hidden=3)
    x, _ = _inputs()
    a = m.token_matrix(x)
    torch.testing.assert_close(a[0], a[1])  # one matrix for every sample
    torch.testing.assert_close(a[0], m.w2[:7] @ m.w1[:, :7])
    assert torch.linalg.matrix_rank(a[0]).item() <= 3


def test_synthesizer_random_matrix_is_input_independent_and_stochastic():
    m = build("synthesizer_random")
    x, _ = _inputs()
    a = m.token_matrix(x)  # (b, h, n, n)
    torch.testing.assert_close(a[0], a[2])
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    frozen = MIXERS["synthesizer_random"](DIM, SEQ_LEN, trainable=False)
    assert not frozen.logits.requires_grad


def test_synthesizer_dense_matrix_depends_on_input():
    m = build("synthesizer_dense")
    x, _ = _inputs()
    a = m.token_matrix(x)
    assert (a[0] - a[1]).abs().max() > 1e-3


def test_resmlp_equals_its_matrix():
    m = build("resmlp")
    x, _ = _inputs()
    n = x.shape[1]
    a = m.token_matrix(x)
    torch.testing.assert_close(a[1], m.weight[:n, :n])
    expected = (m.weight[:n, :n] @ (x * m.alpha + m.beta) + m.bias[:n, None]) * m.gamma
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


def test_gmlp_is_identity_gate_at_initialisation():
    seed_everything(0)
    m = MIXERS["gmlp"](DIM, SEQ_LEN).double()
    x, _ = _inputs()
    z1 = F.gelu(m.proj_in(x))[..., : m.hidden]
    torch.testing.assert_close(m(x), m.proj_out(z1), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- FNet identities


@pytest.mark.parametrize("n,d", [(7, 8), (16, 5), (1, 3)])
def test_fnet_equals_explicit_dft_and_cos_sin(n, d):
    m = MIXERS["fnet"](d, n)
    x = torch.randn(2, n, d, dtype=torch.float64)
    f_n, f_d = dft_matrix(n), dft_matrix(d)
    via_matrices = (f_n @ x.to(torch.complex128) @ f_d).real
    j, k = torch.arange(n, dtype=torch.float64), torch.arange(d, dtype=torch.float64)
    c_n, s_n = torch.cos(2 * math.pi * j[:, None] * j / n), torch.sin(2 * math.pi * j[:, None] * j / n)
    c_d, s_d = torch.cos(2 * math.pi * k[:, None] * k / d), torch.sin(2 * math.pi * k[:, None] * k / d)
    torch.testing.assert_close(m(x), via_matrices, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m(x), c_n @ x @ c_d - s_n @ x @ s_d, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.token_matrix(x)[0], f_n)


def test_dft_matrix_is_exp_of_scaled_positions_and_su_literal_is_not():
    n = 12
    q = math.sqrt(2 * math.pi / n) * torch.arange(n, dtype=torch.float64)[:, None]
    torch.testing.assert_close(dft_matrix(n), torch.exp(-1j * (q @ q.T)), rtol=1e-12, atol=1e-12)
    p = torch.arange(n, dtype=torch.float64)[:, None]
    literal = torch.exp(1j * (p @ p.T))  # the post's eq. (3)-(4) without the 2 pi / n factor
    assert (literal - dft_matrix(n)).abs().max() > 0.5
    torch.testing.assert_close(dft_matrix(n) @ dft_matrix(n).conj().T / n, torch.eye(n, dtype=torch.complex128))


def test_fnet_conjugate_conventions():
    x = torch.randn(6, 5, dtype=torch.float64).to(torch.complex128)
    f_n, f_d = dft_matrix(6), dft_matrix(5)
    torch.testing.assert_close((f_n.conj() @ x @ f_d.conj()).real, (f_n @ x @ f_d).real)
    assert ((f_n.conj() @ x @ f_d).real - (f_n @ x @ f_d).real).abs().max() > 1e-3


def test_dft_matrix_rejects_bad_arguments():
    with pytest.raises(ValueError, match="m must be a positive int"):
        dft_matrix(0)
    with pytest.raises(TypeError, match="complex"):
        dft_matrix(4, dtype=torch.float64)


# --------------------------------------------------------------------------- External Attention


def test_external_attention_double_normalisation_formula():
    m = build("external_attention", heads=1, slots=5)
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    alpha = m.slot_matrix(x)
    logits = m.query(x) @ m.memory_key[0].T
    hat = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)  # over tokens
    expected = hat / (m.eps + hat.sum(dim=-1, keepdim=True))  # then over slots
    torch.testing.assert_close(alpha, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(2, 6, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_external_attention_double_couples_tokens_row_does_not():
    x = torch.randn(1, 6, DIM, dtype=torch.float64)
    y = x.clone()
    y[0, 3] += 1.0
    double, row = build("external_attention"), build("external_attention", normalisation="row")
    assert (double(x)[0, 0] - double(y)[0, 0]).abs().max() > 1e-6
    torch.testing.assert_close(row(x)[0, 0], row(y)[0, 0])


# --------------------------------------------------------------------------- masking and causality


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_padding_content_is_ignored(name, options):
    m = build(name, **options)
    x, mask = _inputs()
    y = x.clone()
    y[~mask] = 100.0 * torch.randn_like(y[~mask])
    torch.testing.assert_close(m(x, mask)[mask], m(y, mask)[mask], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_padding_amount(name):
    """``padding == "exact"``: padded to 9 equals unpadded 5; FNet ("content") differs."""
    m = build(name)
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    padded = torch.cat([x, torch.randn(2, 4, DIM, dtype=torch.float64)], dim=1)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[:, :5] = True
    diff = (m(padded, mask)[:, :5] - m(x)).abs().max().item()
    if m.padding == "exact":
        assert diff < 1e-10
    else:
        assert m.padding == "content" and diff > 1e-3


@pytest.mark.parametrize("name,options", [c for c in CASES if c[1].get("causal")],
                         ids=[i for c, i in zip(CASES, CASE_IDS) if c[1].get("causal")])
def test_causal_ignores_the_future(name, options):
    m = build(name, **options)
    x, _ = _inputs(b=2, n=8)
    y = x.clone()
    y[:, 5:] = torch.randn_like(y[:, 5:])
    torch.testing.assert_close(m(x)[:, :5], m(y)[:, :5], rtol=1e-10, atol=1e-10)
    assert (m(x)[:, 5:] - m(y)[:, 5:]).abs().max() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_non_causal_mixers_see_the_future_or_refuse_causal(name):
    m = build(name)
    x, _ = _inputs(b=2, n=8)
    y = x.clone()
    y[:, 5:] += 1.0
    if name != "external_attention" or m.normalisation == "double":
        assert (m(x)[:, :5] - m(y)[:, :5]).abs().max() > 1e-8
    if not MIXERS[name].supports_causal or name == "external_attention":
        with pytest.raises(ValueError, match="causal"):
            MIXERS[name](DIM, SEQ_LEN, causal=True)


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariance_flag(name):
    m = build(name)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    diff = (m(x[:, perm]) - m(x)[:, perm]).abs().max().item()
    assert (diff < 1e-10) == m.permutation_equivariant


# --------------------------------------------------------------------------- through kexue.nn


def _encoder(name, **options):
    seed_everything(0)
    config = TransformerConfig(vocab_size=30, dim=16, depth=2, heads=2, ffn_dim=32, max_len=12, dropout=0.0,
                               attention_dropout=0.0, norm="pre", position="learned", mixer=name,
                               mixer_options=options)
    return TransformerEncoder(config).double().eval()


@pytest.mark.parametrize("name", NAMES)
def test_encoder_builds_each_mixer_and_masks(name):
    enc = _encoder(name)
    if name != "attention":
        assert all(isinstance(block.attention, MIXERS[name]) for block in enc.blocks)
    ids = torch.randint(1, 30, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    out = enc(ids, mask)
    assert out.shape == (3, 10, 16) and out.dtype == torch.float64
    ids2 = ids.clone()
    ids2[1, 6:] = torch.randint(1, 30, (4,))
    torch.testing.assert_close(enc(ids2, mask)[1, :6], out[1, :6], rtol=1e-10, atol=1e-10)
    out.sum().backward()
    assert all(p.grad is not None for p in enc.blocks[0].attention.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", [n for n in NAMES if _causal_ok(n) and n != "attention"])
def test_encoder_causal_mixer(name):
    enc = _encoder(name, causal=True)
    ids = torch.randint(1, 30, (2, 9))
    ids2 = ids.clone()
    ids2[:, 6:] = (ids2[:, 6:] + 3) % 29 + 1
    torch.testing.assert_close(enc(ids)[:, :6], enc(ids2)[:, :6], rtol=1e-10, atol=1e-10)


def test_encoder_rejects_unknown_mixer():
    with pytest.raises(ValueError, match="mixer"):
        _encoder("conv")


# --------------------------------------------------------------------------- dtypes and bad input


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_preserved(name, dtype):
    seed_everything(0)
    m = MIXERS[name](DIM, SEQ_LEN).to(dtype)
    x = torch.randn(2, 6, DIM).to(dtype)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    out = m(x, mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    if m.has_token_matrix:
        a = m.token_matrix(x)
        assert a.dtype == (mixers.complex_dtype_for(dtype) if name == "fnet" else dtype)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises(name):
    m = build(name)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq, 8\)"):
        m(torch.randn(2, 5, DIM + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.randn(5, DIM, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(2, 5, DIM, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m([[0.0] * DIM])
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match="mask must have shape"):
        m(x, torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(m(x, torch.ones(2, 5)), m(x, torch.ones(2, 5, dtype=torch.bool)))  # 0/1 float
    with pytest.raises(TypeError, match="mask must be bool or integer"):
        m(x, torch.full((2, 5), 0.5))
    with pytest.raises(ValueError, match="only 0 and 1"):
        m(x, torch.full((2, 5), 2))
    empty = torch.ones(2, 5, dtype=torch.bool)
    empty[1] = False
    with pytest.raises(ValueError, match="at least one real"):
        m(x, empty)
    torch.testing.assert_close(m(x, torch.ones(2, 5, dtype=torch.long)), m(x))  # 0/1 integers are fine
    if m.fixed_length:
        with pytest.raises(ValueError, match="seq_len=10"):
            m(torch.randn(1, SEQ_LEN + 1, DIM, dtype=torch.float64))
    else:
        assert m(torch.randn(1, SEQ_LEN + 5, DIM, dtype=torch.float64)).shape == (1, SEQ_LEN + 5, DIM)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="dim must be a positive int"):
        MIXERS["fnet"](0, 4)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        MIXERS["resmlp"](4, 2.5)
    with pytest.raises(ValueError, match="divisible by heads"):
        MIXERS["synthesizer_random"](6, 4, heads=4)
    with pytest.raises(ValueError, match="normalisation"):
        MIXERS["external_attention"](4, 4, normalisation="col")
    with pytest.raises(ValueError, match="activation"):
        MIXERS["mixer"](4, 4, activation="relu")
    with pytest.raises(TypeError, match="causal must be a bool"):
        MIXERS["aft_simple"](4, 4, causal=1)


# --------------------------------------------------------------------------- non-finite padding


def _poisoned(x, mask):
    """``x`` with inf, NaN and -inf in its padded positions, and ``x`` with zeros there."""
    pad = ~mask
    values = torch.tensor([float("inf"), float("nan"), float("-inf")], dtype=x.dtype)
    bad = x.clone()
    bad[pad] = values[torch.arange(int(pad.sum())) % 3][:, None].expand(-1, x.shape[-1])
    return bad, x.masked_fill(pad[..., None], 0.0)


def _leak(m, x, mask):
    """Largest change at real tokens (forward and forward_reference) when the padding holds inf/NaN
    instead of zeros; ``inf`` if a real output is not finite."""
    bad, zero = _poisoned(x, mask)
    ref = m(zero, mask)[mask]
    worst = 0.0
    for out in (m(bad, mask), m.forward_reference(bad, mask)):
        d = (out[mask] - ref).abs()
        worst = max(worst, d.max().item() if torch.isfinite(d).all() else float("inf"))
    return worst


def _multiplicative_zeroing(x, mask):
    """The old, broken zeroing: ``x * mask`` turns a padded inf or NaN into NaN."""
    return x if mask is None else x * mask.reshape(*mask.shape, *(1,) * (x.dim() - mask.dim())).to(x.dtype)


@pytest.mark.parametrize("name,options", CASES, ids=CASE_IDS)
def test_nonfinite_padding_never_reaches_real_tokens(name, options):
    m = build(name, **options)
    x, mask = _inputs()
    assert _leak(m, x, mask) < 1e-10
    if m.has_token_matrix:  # the O = A V view is as blind to the padding
        bad, zero = _poisoned(x, mask)
        a, v = m.token_matrix(bad, mask), m.values(bad, mask)
        mixed = a @ (v if v.dim() == a.dim() else v[:, None])
        torch.testing.assert_close(m.readout(bad, mixed)[mask], m(zero, mask)[mask], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "external_attention"])
def test_nonfinite_padding_check_catches_multiplicative_zeroing(name, monkeypatch):
    """The check above fails when padding is zeroed by multiplication (0 * inf = NaN).

    External Attention is left out: its values are a learned memory and its padded
    logits are replaced by masked_fill, so no zeroing is needed there at all.
    """
    m = build(name)
    x, mask = _inputs()
    monkeypatch.setattr(mixers.checks, "zero_padding", _multiplicative_zeroing)
    assert _leak(m, x, mask) == float("inf")


@pytest.mark.parametrize("name", NAMES)
def test_mask_contract_refuses_additive_and_fractional_masks(name):
    m = build(name)
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    additive = torch.zeros(2, 5)
    additive[1, 3:] = -1e4  # Hugging Face's extended mask: 0 = real, -1e4 = padding
    with pytest.raises(TypeError, match=r"additive attention mask.*mask == 0"):
        m(x, additive)
    with pytest.raises(ValueError, match="mask"):
        m(x, (additive == 0).long() * -5)
    with pytest.raises(TypeError, match="mask"):
        m(x, torch.full((2, 5), 0.5))
    with pytest.raises(TypeError, match=r"mask == 0"):
        m(x, torch.zeros(2, 5))  # all zeros: an additive mask without padding, or no real token
    torch.testing.assert_close(m(x, additive == 0), m(x, (additive == 0).long()))
    torch.testing.assert_close(m(x, additive == 0), m(x, (additive == 0).float()))  # a 0/1 float mask


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_empty_output(name):
    m = build(name)
    x = torch.randn(0, 5, DIM, dtype=torch.float64)
    assert m(x).shape == (0, 5, DIM)
    assert m(x, torch.ones(0, 5, dtype=torch.bool)).shape == (0, 5, DIM)


def test_input_dtype_must_match_the_parameters():
    m = build("gmlp")  # float64
    with pytest.raises(TypeError, match=r"x is torch.float32 but the module's parameters are torch.float64"):
        m(torch.randn(2, 5, DIM))
    assert MIXERS["fnet"](DIM, SEQ_LEN)(torch.randn(2, 5, DIM, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MIXERS["attention"](8, 4, scale=float("nan")), "scale"),
        (lambda: MIXERS["synthesizer_random"](8, 4, init_std=float("inf")), "init_std"),
        (lambda: MIXERS["synthesizer_random"](8, 4, trainable="no"), "trainable"),
        (lambda: MIXERS["mixer"](8, 4, expansion=float("inf")), "expansion"),
        (lambda: MIXERS["resmlp"](8, 4, init_values=float("nan")), "init_values"),
        (lambda: MIXERS["gmlp"](8, 4, init_std=float("nan")), "init_std"),
        (lambda: MIXERS["external_attention"](8, 4, eps=-1.0), "eps"),
    ],
)
def test_non_finite_construction_parameters_raise(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# --------------------------------------------------------------------------- outside the registry


@pytest.mark.parametrize("causal", [False, True])
def test_depthwise_conv_is_a_banded_toeplitz_matrix(causal):
    seed_everything(0)
    conv = mixers.DepthwiseConvMixing(4, SEQ_LEN, kernel=3, causal=causal).double()
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    out = torch.zeros_like(x)
    left = 2 if causal else 1
    for i in range(7):  # loop-level formula of Eq. ch05-conv
        for t in range(3):
            j = i + t - left
            if 0 <= j < 7:
                out[:, i] += conv.weight[:, t] * x[:, j]
    torch.testing.assert_close(conv(x), out + conv.bias, rtol=1e-12, atol=1e-12)
    a = conv.token_matrix(x)
    torch.testing.assert_close(conv.readout(x, a @ conv.values(x)), conv(x))
    assert a.shape == (2, 4, 7, 7)
    if causal:
        assert not a.triu(1).any()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    torch.testing.assert_close(conv(x, mask)[1, :5], conv(x[1:, :5])[0])


def test_depthwise_conv_rejects_even_centred_kernel():
    with pytest.raises(ValueError):
        mixers.DepthwiseConvMixing(4, SEQ_LEN, kernel=2)
    mixers.DepthwiseConvMixing(4, SEQ_LEN, kernel=2, causal=True)


def test_amlp_reduces_to_gmlp_and_matches_its_reference():
    seed_everything(0)
    amlp = mixers.TinyAttentionGatingUnit(DIM, SEQ_LEN, attn_dim=4).double()
    with torch.no_grad():
        for p in amlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    torch.testing.assert_close(amlp(x, mask), amlp.forward_reference(x, mask))
    torch.testing.assert_close(amlp(x, mask)[1, :5], amlp(x[1:, :5])[0])
    gmlp = MIXERS["gmlp"](DIM, SEQ_LEN).double()
    gmlp.load_state_dict(amlp.state_dict(), strict=False)
    assert (amlp(x) - gmlp(x)).abs().max() > 1e-3
    with torch.no_grad():
        amlp.attn_out.weight.zero_()
        amlp.attn_out.bias.zero_()
    torch.testing.assert_close(amlp(x), gmlp(x))


def test_amlp_causal_ignores_the_future():
    seed_everything(0)
    amlp = mixers.TinyAttentionGatingUnit(DIM, SEQ_LEN, attn_dim=4, causal=True).double()
    with torch.no_grad():
        for p in amlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, 7, DIM, dtype=torch.float64)
    y = x.clone()
    y[:, 4:] += 1.0
    torch.testing.assert_close(amlp(x)[:, :4], amlp(y)[:, :4])
    assert (amlp(x)[:, 4:] - amlp(y)[:, 4:]).abs().max() > 1e-3
