"""Chapter 05 (token mixers): the claims the chapter tests, with the checks behind them.

Derivation claims are :class:`~kexue.experiments.claims.Exact` float64
recomputations through ``kexue.mixers`` and ``kexue.experiments.ch05_mixers``
(the chapter's cells under ``ch05-checks`` and ``ch05-gives-up`` show them in
full). Where the post says something is zero or impossible, the check measures
that quantity (or counts counterexamples), so the computed verdict is
``refuted`` when the statement is wrong.

Timing claims read the benchmark record ``benchmarks/mixers`` (median forward
times with interquartile ranges); the trained-model claims read the chapter's
book run ``ch05_mixers_book`` (3 seeds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

import kexue.mixers as km
from kexue.experiments import ch05_mixers as ch05
from kexue.experiments.claims import Claim, Difference, Exact, FromRecord, NotTested
from kexue.utils import seed_everything

__all__ = ["CLAIMS", "BOOK", "BENCH", "FIXED", "POST_MIXERS"]

BOOK = "ch05_mixers_book"
BENCH = "benchmarks/mixers"
#: mixers whose token matrix does not depend on the input (FNet's is the DFT)
FIXED = ("synthesizer_random", "mixer", "resmlp", "gmlp", "fnet")
#: the registry's mixers the post discusses, other than attention and FNet
POST_MIXERS = ("synthesizer_random", "synthesizer_dense", "mixer", "resmlp", "gmlp", "external_attention")
_TOL = 1e-10  # float64 identities on inputs of size O(1)
_BOOK_SCALE = ("book profile: 15,000 MSRA train sentences cut to 64 characters, width 64, depth 2, "
               "every encoder with attention's parameter count, 3 seeds")
_BENCH_SCALE = "benchmark: one forward pass, width 64, batch 2, 1 CPU thread, 21 rounds"
_PROBE_SCALE = "float64, random instances (width 8, n = 9)"


# --------------------------------------------------------------------------- helpers


def _randomised(name: str, dim: int = 8, seq_len: int = 12, **options: Any) -> torch.nn.Module:
    """``MIXERS[name]`` in float64 with every parameter moved away from its initial value."""
    seed_everything(0)
    m = km.MIXERS[name](dim, seq_len, **options).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _inputs(batch: int = 3, n: int = 9, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 input and a mask with one padded sample."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n, dim, dtype=torch.float64, generator=g)
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[min(1, batch - 1), n - 3:] = False
    return x, mask


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------- exact checks


def check_o_equals_av() -> tuple[float, float]:
    """``readout(A V) == forward`` for every mixer with a token matrix, plus Synthesizer-Dense's
    matrix read off ``forward`` by autograd against Eq. ``ch05-synth-dense``."""
    x, mask = _inputs()
    multi_head = ("attention", "synthesizer_random", "synthesizer_dense")
    cases = [(n, {"heads": 2} if n in multi_head else {})
             for n, c in km.MIXERS.items() if c.has_token_matrix and n != "mixer"]
    cases.append(("mixer", {"activation": "identity"}))
    err = 0.0
    for name, options in cases:
        m = _randomised(name, **options)
        for mk in (None, mask):
            a, v = m.token_matrix(x, mk), m.values(x, mk)
            mixed = a @ (v if a.dim() == v.dim() else v[:, None])
            err = max(err, _gap(m.readout(x, mixed), m(x, mk)))
    small = x[:2, :5]
    syn = _randomised("synthesizer_dense", heads=2)
    a_jac, residual = ch05.value_jacobian_matrix(syn, small)
    err = max(err, residual, _gap(a_jac, ch05.synthesizer_dense_matrix(syn, small)))
    return err, _TOL


def check_synth_random_fixed() -> tuple[float, float]:
    """Synthesizer-Random: the same row-stochastic matrix for every sample (Dense: not)."""
    x, _ = _inputs()
    a = _randomised("synthesizer_random").token_matrix(x)
    err = max(_gap(a[0], a[2]), _gap(a.sum(-1), torch.ones_like(a.sum(-1))))
    dense = _randomised("synthesizer_dense").token_matrix(x)
    if _gap(dense[0], dense[2]) < 1e-3:  # the contrast the claim draws must hold too
        err = math.inf
    return err, _TOL


def check_mixer_layers() -> tuple[float, float]:
    """MLP-Mixer without GELU is the one matrix ``W2 W1`` of rank <= D_S; with GELU it is not linear."""
    x, _ = _inputs()
    n = x.shape[1]
    lin = _randomised("mixer", activation="identity", hidden=3)
    a = lin.token_matrix(x)
    err = _gap(a[0], lin.w2[:n] @ lin.w1[:, :n])
    if torch.linalg.matrix_rank(a[0]).item() > 3:
        err = math.inf
    gelu = _randomised("mixer")
    zero = gelu(torch.zeros_like(x))
    if _gap(gelu(2 * x) - zero, 2 * (gelu(x) - zero)) < 1e-3:  # GELU version must not be linear
        err = math.inf
    return err, _TOL


def check_resmlp() -> tuple[float, float]:
    """ResMLP's token mixing is ``(A Aff(X) + b) diag(gamma)``, its token matrix the weight block."""
    x, _ = _inputs()
    res = _randomised("resmlp")
    n = x.shape[1]
    expected = (res.weight[:n, :n] @ (x * res.alpha + res.beta) + res.bias[:n, None]) * res.gamma
    return max(_gap(res(x), expected), _gap(res.token_matrix(x)[0], res.weight[:n, :n])), _TOL


def _cos_sin(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    angle = 2 * math.pi * torch.outer(torch.arange(m), torch.arange(m)).double() / m
    return torch.cos(angle), torch.sin(angle)


def check_fnet() -> tuple[float, float]:
    """FNet's ``fft2`` path = ``Re(F_n X F_d)`` = ``C X C - S X S``, values and gradients."""
    x, _ = _inputs()
    fnet = km.MIXERS["fnet"](8, 12)
    n, d = x.shape[1], x.shape[2]
    f_n, f_d = km.dft_matrix(n), km.dft_matrix(d)
    (c_n, s_n), (c_d, s_d) = _cos_sin(n), _cos_sin(d)
    err = max(_gap(fnet(x), (f_n @ x.to(f_n.dtype) @ f_d).real), _gap(fnet(x), c_n @ x @ c_d - s_n @ x @ s_d))
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w = torch.randn_like(x)
    (g_fast,) = torch.autograd.grad((fnet(x1) * w).sum(), x1)
    (g_slow,) = torch.autograd.grad(((c_n @ x2 @ c_d - s_n @ x2 @ s_d) * w).sum(), x2)
    return max(err, _gap(g_fast, g_slow)), _TOL


def check_fnet_literal() -> tuple[float, float]:
    """The post's literal ``exp(i Q K^T)``, ``Q = K = (0, ..., n-1)^T``, against the DFT matrix."""
    n = 9
    p = torch.arange(n, dtype=torch.float64)[:, None]
    return _gap(torch.exp(1j * (p @ p.T)), km.dft_matrix(n)), _TOL


def check_fnet_scaled() -> tuple[float, float]:
    """``F_n = exp(-i Q K^T)`` with ``Q = K = sqrt(2 pi / n) (0, ..., n-1)^T`` (Eq. ``ch05-fnet-exp``)."""
    err = 0.0
    for n in (5, 9, 16):
        q = math.sqrt(2 * math.pi / n) * torch.arange(n, dtype=torch.float64)[:, None]
        err = max(err, _gap(km.dft_matrix(n), torch.exp(-1j * (q @ q.T))))
    return err, _TOL


def check_ea_two_layers() -> tuple[float, float]:
    """External Attention = softmax over tokens, l1 over slots, between two linear layers."""
    x, _ = _inputs()
    ea = _randomised("external_attention", heads=1, slots=5)
    scores = (x @ ea.query.weight.T + ea.query.bias) @ ea.memory_key[0].T
    hat = scores.exp() / scores.exp().sum(dim=1, keepdim=True)  # softmax over the n tokens
    alpha = hat / (ea.eps + hat.sum(dim=-1, keepdim=True))  # then l1 over the S slots
    out = (alpha @ ea.memory_value[0]) @ ea.output.weight.T + ea.output.bias
    return max(_gap(ea.slot_matrix(x), alpha), _gap(ea(x), out)), _TOL


def check_ea_isolation() -> tuple[float, float]:
    """How far output token 0 of External Attention (double normalisation) moves when token 3 moves."""
    x, _ = _inputs()
    y = x.clone()
    y[:, 3] += 1.0
    ea = _randomised("external_attention")
    return _gap(ea(x)[:, 0], ea(y)[:, 0]), _TOL


def check_ea_through_normalisers() -> tuple[float, float]:
    """dO_0/dx_3 of External Attention = the chain rule through its S column normalisers; rank <= S."""
    x, _ = _inputs()
    ea = _randomised("external_attention", heads=1, slots=5)
    cross = ch05.ea_cross_jacobian(ea, x[0], i=0, j=3)
    err = _gap(cross["direct"], cross["through_z"])
    if torch.linalg.matrix_rank(cross["direct"]).item() > ea.slots or cross["direct"].abs().max() < 1e-6:
        err = math.inf
    return err, _TOL


def check_mixer_causal_counterexample() -> tuple[float, float]:
    """Counterexamples to "MLP-Mixer's token MLP cannot be causal": a MADE-masked token MLP whose
    outputs depend on no later input (exactly 0) but on earlier ones (> 1e-3)."""
    x, _ = _inputs()
    seed_everything(0)
    made = ch05.MadeTokenMLP(x.shape[1], hidden=6, masked=True).double()
    future, past = ch05.future_dependence(made, x)
    found = float(future == 0.0 and past > 1e-3)
    return found, 0.0


def check_amlp() -> tuple[float, float]:
    """aMLP = gMLP's gate + a tiny attention (Eq. ``ch05-amlp``), and = gMLP when ``W_p = 0``."""
    x, _ = _inputs()
    n = x.shape[1]
    seed_everything(0)
    amlp = km.TinyAttentionGatingUnit(8, 12, attn_dim=4).double()
    with torch.no_grad():
        for p in amlp.parameters():
            p.add_(0.3 * torch.randn_like(p))
    gmlp = km.MIXERS["gmlp"](8, 12).double()
    gmlp.load_state_dict(amlp.state_dict(), strict=False)
    z1, z2 = F.gelu(amlp.proj_in(x)).chunk(2, dim=-1)
    q, k, v = (x @ amlp.qkv.weight.T + amlp.qkv.bias).chunk(3, dim=-1)
    tiny = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v  # sqrt(attn_dim) = 2
    gate = amlp.weight[:n, :n] @ amlp.norm(z2) + amlp.bias[:n, None] + amlp.attn_out(tiny)
    err = _gap(amlp(x), amlp.proj_out(z1 * gate))
    if _gap(amlp(x), gmlp(x)) < 1e-3:  # the attention term must matter
        err = math.inf
    with torch.no_grad():
        amlp.attn_out.weight.zero_()
        amlp.attn_out.bias.zero_()
    return max(err, _gap(amlp(x), gmlp(x))), _TOL


def check_conv_toeplitz() -> tuple[float, float]:
    """A depthwise convolution (centred and causal) = one banded Toeplitz matrix per channel."""
    x, _ = _inputs()
    n = x.shape[1]
    err = 0.0
    for causal in (False, True):
        seed_everything(0)
        conv = km.DepthwiseConvMixing(8, 12, kernel=3, causal=causal).double()
        tap = torch.arange(n)[None, :] - torch.arange(n)[:, None] + (2 if causal else 1)  # j - i + l
        inside = (tap >= 0) & (tap < 3)
        toeplitz = conv.weight[:, tap.clamp(0, 2)] * inside  # (d, n, n)
        expected = torch.einsum("cij,bjc->bic", toeplitz, x) + conv.bias
        err = max(err, _gap(conv(x), expected), _gap(conv.token_matrix(x)[0], toeplitz))
    return err, _TOL


def check_variable_length_counterexamples() -> tuple[float, float]:
    """Counterexamples to "only FNet handles variable length": mixers of the post other than FNet
    that run on a longer input than they were built for *and* ignore padding exactly."""
    found = sum(1 for name in POST_MIXERS
                if (r := ch05.probe(name))["longer_input"] and r["padding"] == "exact")
    return float(found), 0.0


# --------------------------------------------------------------------------- record functions


def _times(rec: Mapping[str, Any], name: str) -> dict[int, Mapping[str, float]]:
    return {r["seq_len"]: r for r in rec["scaling"]["times"][name] if r.get("ms") is not None}


def _slope(rec: Mapping[str, Any], name: str, n1: int, n2: int) -> tuple[float, float, float]:
    """log-log slope of median time from ``n1`` to ``n2``, bracketed by the quartiles
    (fast quartile at ``n2`` over slow at ``n1``, and the reverse)."""
    t = _times(rec, name)
    a, b = t[n1], t[n2]
    span = math.log(n2 / n1)
    return (math.log(b["ms"] / a["ms"]) / span, math.log(b["q1_ms"] / a["q3_ms"]) / span,
            math.log(b["q3_ms"] / a["q1_ms"]) / span)


def _exponent_gap(rec: Mapping[str, Any], other: str, n1: int = 256, n2: int = 8192) -> tuple[float, float, float]:
    """Attention's log-log slope minus ``other``'s over ``n1..n2``, bracketed by the quartiles."""
    at, ot = _times(rec, "attention"), _times(rec, other)
    span = math.log(n2 / n1)

    def gap(a1: float, a2: float, o1: float, o2: float) -> float:
        return math.log((a2 / o2) / (a1 / o1)) / span

    mid = gap(at[n1]["ms"], at[n2]["ms"], ot[n1]["ms"], ot[n2]["ms"])
    lo = gap(at[n1]["q3_ms"], at[n2]["q1_ms"], ot[n1]["q1_ms"], ot[n2]["q3_ms"])
    hi = gap(at[n1]["q1_ms"], at[n2]["q3_ms"], ot[n1]["q3_ms"], ot[n2]["q1_ms"])
    return mid, lo, hi


def _repeats(rec: Mapping[str, Any]) -> int:
    return int(rec["meta"]["repeats"])


def mlp_slope(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """The smaller of ResMLP's and gMLP's slopes over n = 256..2048, with its quartile bracket."""
    slopes = [_slope(rec, name, 256, 2048) for name in ("resmlp", "gmlp")]
    worst = min(slopes)
    return worst[0], worst[1], worst[2], _repeats(rec)


def attention_slope(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """Attention's slope over n = 256..8192, with its quartile bracket."""
    return (*_slope(rec, "attention", 256, 8192), _repeats(rec))


def exponent_gap_fn(other: str):
    """``fn(record)``: attention's slope minus ``other``'s over n = 256..8192, quartile bracket."""

    def fn(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
        return (*_exponent_gap(rec, other), _repeats(rec))

    fn.__name__ = f"exponent_gap_{other}"
    return fn


def peer_difference(rec: Mapping[str, Any]) -> tuple[float, None, None, int]:
    """Largest output difference between our modules and lucidrains' on copied weights."""
    rows = [rec["peers"][k] for k in ("mixer_token_mlp", "gmlp_block")]
    if not all(r.get("equal") for r in rows):
        return math.inf, None, None, 1
    return max(float(r["max_abs_diff"]) for r in rows), None, None, 1


def _seed_range(values: list[float]) -> tuple[float, float, float, int]:
    return statistics.fmean(values), min(values), max(values), len(values)


def fnet_padding_shift(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """FNet tagger's largest logit change without padding: mean over seeds, [smallest, largest] seed."""
    return _seed_range([float(m["msra_max_logit_change_fnet"]) for m in rec["per_seed"]])


def exact_padding_shift(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """Per seed, the largest logit change over every tagger whose mixer ignores padding exactly."""
    names = [n for n in rec["config"]["mixers"] if km.MIXERS[n].padding == "exact"]
    per = [max(float(m[f"msra_max_logit_change_{n}"]) for n in names) for m in rec["per_seed"]]
    return _seed_range(per)


def worst_digits(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """Per seed, the lowest digits accuracy over every mixer: mean, [smallest, largest seed]."""
    names = rec["config"]["mixers"]
    return _seed_range([min(float(m[f"digits_accuracy_{n}"]) for n in names) for m in rec["per_seed"]])


# --------------------------------------------------------------------------- the claims

_LABELS = {"synthesizer_random": "Synthesizer-Random", "mixer": "MLP-Mixer", "resmlp": "ResMLP",
           "gmlp": "gMLP", "fnet": "FNet"}

CLAIMS: list[Claim] = [
    Claim(
        id="05.o-equals-av",
        statement="The post's lens: each mixer computes O = AV for an n×n token matrix A; every kexue mixer "
                  "with a token matrix reproduces its forward pass as readout(A V), with and without padding.",
        source="article",
        scale=_PROBE_SCALE,
        evidence="cell: ch05-checks",
        criterion=Exact(check_o_equals_av, what="max |readout(A V) − forward| and |autograd A − Eq. "
                                                "ch05-synth-dense| (Synthesizer-Dense)"),
        note="MLP-Mixer only without its GELU; External Attention's matrix is token-to-slot (n×S), so it has "
             "no token matrix. For Synthesizer-Dense the matrix is read off forward by autograd.",
    ),
    Claim(
        id="05.synth-random-fixed",
        statement="Synthesizer-Random's matrix does not depend on the sample (one row-stochastic matrix); "
                  "Synthesizer-Dense's does.",
        source="article",
        scale=_PROBE_SCALE,
        evidence="cell: ch05-checks",
        criterion=Exact(check_synth_random_fixed, what="max |A(sample 0) − A(sample 2)|, |row sum − 1| "
                                                       "(∞ if Dense's rows do not vary)"),
    ),
    Claim(
        id="05.mixer-synth-random",
        statement="MLP-Mixer is Synthesizer-Random without the softmax, layer by layer: without GELU its token "
                  "MLP is one fixed matrix W2W1 of rank ≤ D_S; with GELU no single matrix exists.",
        source="article",
        scale=_PROBE_SCALE,
        evidence="cell: ch05-checks",
        criterion=Exact(check_mixer_layers, what="max |A − W2W1| (∞ if rank > D_S or the GELU layer is linear)"),
        note="The post says 'A = B' for the whole MLP; it holds per linear layer only (qualified by us).",
    ),
    Claim(
        id="05.resmlp-fixed-a",
        statement="ResMLP's token mixing is literally a learned fixed A: (A Aff(X) + b) diag(γ).",
        source="article",
        scale=_PROBE_SCALE,
        evidence="cell: ch05-checks",
        criterion=Exact(check_resmlp, what="max |forward − (A Aff(X) + b) diag(γ)|"),
    ),
    Claim(
        id="05.fnet-dft",
        statement="FNet = Re(F_n X F_d) = C X C − S X S, in values and gradients.",
        source="article",
        scale=_PROBE_SCALE,
        evidence="cell: ch05-checks",
        criterion=Exact(check_fnet, what="max |fft2 path − explicit matrices| (values, gradients)"),
    ),
    Claim(
        id="05.fnet-exp-literal",
        statement="FNet's matrix is A = exp(iQKᵀ) with Q = K = (0, 1, …, n−1)ᵀ (the post's derivation "
                  "as written).",
        source="article",
        scale="float64, n = 9",
        evidence="cell: ch05-checks",
        criterion=Exact(check_fnet_literal, what="max |exp(iQKᵀ) − F_n|"),
        note="Exact only with the factor √(2π/n) on Q and K and a minus sign (next claim).",
    ),
    Claim(
        id="05.fnet-exp-scaled",
        statement="F_n = exp(−iQKᵀ) with Q = K = √(2π/n)(0, 1, …, n−1)ᵀ.",
        source="ours",
        scale="float64, n = 5, 9, 16",
        evidence="cell: ch05-checks",
        criterion=Exact(check_fnet_scaled, what="max |F_n − exp(−iQKᵀ)|"),
    ),
    Claim(
        id="05.ea-two-layers",
        statement="External Attention is two linear layers with a double normalisation: softmax over the "
                  "tokens, then ℓ1 over the S slots.",
        source="article",
        scale=_PROBE_SCALE,
        evidence="cell: ch05-checks",
        criterion=Exact(check_ea_two_layers, what="max |module − written formula| (slot matrix, output)"),
    ),
    Claim(
        id="05.ea-isolation",
        statement="External Attention encodes each position in isolation: output token i does not depend "
                  "on the other tokens.",
        source="article",
        scale=_PROBE_SCALE,
        evidence="cell: ch05-checks",
        criterion=Exact(check_ea_isolation, what="max change of output token 0 when token 3 moves by 1"),
        note="Exact for a row softmax over slots; the published double normalisation couples tokens "
             "(next claim says how).",
    ),
    Claim(
        id="05.ea-through-normalisers",
        statement="Under the double normalisation, External Attention's tokens interact only through the S "
                  "column normalisers: the cross-token Jacobian is the chain rule through them (rank ≤ S).",
        source="ours",
        scale="float64, one head, S = 5, d = 8",
        evidence="cell: ch05-checks",
        criterion=Exact(check_ea_through_normalisers,
                        what="max |dO_0/dx_3 − chain rule through z| (∞ if rank > S or no coupling)"),
    ),
    Claim(
        id="05.mixer-not-causal",
        statement="MLP-Mixer's token MLP cannot be made causal.",
        source="article",
        scale="float64, L = 9, 6 hidden units",
        evidence="cell: ch05-gives-up",
        criterion=Exact(check_mixer_causal_counterexample,
                        what="counterexamples found (a MADE-masked token MLP with zero dependence on later "
                             "inputs and non-zero on earlier ones)"),
        note="Refuted for the architecture by MADE masks (Eq. ch05-made); kexue's MixerTokenMLP itself "
             "refuses causal=True.",
    ),
    Claim(
        id="05.amlp",
        statement="aMLP is gMLP with a tiny attention added in the gate (the post's Eq. 6), and equals gMLP "
                  "when the attention's output map is zero.",
        source="article",
        scale="float64, attention width 4 (not trained)",
        evidence="cell: ch05-checks",
        criterion=Exact(check_amlp, what="max |module − written formula|, |W_p = 0 module − gMLP| "
                                         "(∞ if the attention term does not matter)"),
    ),
    Claim(
        id="05.conv-toeplitz",
        statement="A depthwise convolution over tokens is one banded Toeplitz matrix per channel (centred "
                  "and causal).",
        source="ours",
        scale="float64, kernel 3",
        evidence="cell: ch05-checks",
        criterion=Exact(check_conv_toeplitz, what="max |forward − Toeplitz A X − b|"),
    ),
    Claim(
        id="05.conv-pretraining",
        statement="Pre-trained convolutions are competitive with pre-trained Transformers.",
        source="paper: Tay et al. 2021",
        scale="—",
        evidence="cell: ch05-checks",
        criterion=NotTested("no pre-training here; the chapter only checks the convolution's matrix"),
    ),
    Claim(
        id="05.only-fnet-variable-length",
        statement="Of these mixers only FNet handles inputs of another length.",
        source="article",
        scale="float64 probe of each mixer (built for n = 10, run at 14 and padded 5 → 9)",
        evidence="cell: ch05-gives-up",
        criterion=Exact(check_variable_length_counterexamples,
                        what="counterexamples among the post's other mixers (run longer and ignore padding "
                             "exactly)"),
        note="External Attention takes any length exactly (so does AFT, which postdates the post); "
             "Synthesizer, MLP-Mixer, ResMLP and gMLP refuse longer inputs; FNet runs but padding changes it.",
    ),
    Claim(
        id="05.fnet-padding-trained",
        statement="A trained FNet tagger's outputs change when a sentence is fed without its training padding "
                  "(max logit change ≥ 10⁻³ for every seed).",
        source="ours",
        scale=_BOOK_SCALE + ", first 32 test sentences",
        evidence=BOOK,
        criterion=FromRecord(BOOK, fnet_padding_shift,
                             what="FNet's max |logit change| (mean over seeds, [smallest, largest seed])",
                             at_least=1e-3),
    ),
    Claim(
        id="05.exact-padding-trained",
        statement="Trained taggers whose mixer ignores padding exactly give the same logits with or without "
                  "padding (to float32 rounding, ≤ 10⁻⁴) for every seed.",
        source="ours",
        scale=_BOOK_SCALE + ", first 32 test sentences",
        evidence=BOOK,
        criterion=FromRecord(BOOK, exact_padding_shift,
                             what="largest |logit change| over the exact-padding mixers (mean over seeds, "
                                  "[smallest, largest seed])",
                             at_most=1e-4),
    ),
    Claim(
        id="05.mlps-quadratic",
        statement="The MLPs did not escape the quadratic cost: ResMLP's and gMLP's forward time grows with a "
                  "log-log slope ≥ 1.5 in n.",
        source="article",
        scale=_BENCH_SCALE + ", n = 256 → 2048",
        evidence=BENCH,
        criterion=FromRecord(BENCH, mlp_slope,
                             what="smaller of ResMLP's and gMLP's slopes, n = 256 → 2048 (bracket from the "
                                  "quartiles of both times)",
                             at_least=1.5),
        note="In FLOPs they are n×n by construction; the slope of a linear-time mixer is ≈ 1.",
    ),
    Claim(
        id="05.attention-quadratic",
        statement="Attention's forward time grows quadratically: log-log slope ≥ 1.5 in n.",
        source="article",
        scale=_BENCH_SCALE + ", n = 256 → 8192",
        evidence=BENCH,
        criterion=FromRecord(BENCH, attention_slope,
                             what="attention's slope, n = 256 → 8192 (bracket from the quartiles of both "
                                  "times)",
                             at_least=1.5),
    ),
    *[
        Claim(
            id=f"05.{key}-subquadratic",
            statement=f"{label} is O({order}) against attention's O(n²): attention's time exponent exceeds "
                      f"{label}'s by ≥ 0.5 (n² against {order} predicts ≈ {pred}).",
            source=source,
            scale=_BENCH_SCALE + ", n = 256 → 8192",
            evidence=BENCH,
            criterion=FromRecord(BENCH, exponent_gap_fn(name),
                                 what=f"attention's slope − {label}'s, n = 256 → 8192 (bracket from the "
                                      "quartiles of all four times)",
                                 at_least=0.5),
        )
        for key, name, label, order, pred, source in (
            ("fnet", "fnet", "FNet", "n log n", "0.9", "article"),
            ("ea", "external_attention", "External Attention", "n", "1", "article"),
            ("aft", "aft_simple", "AFT-simple", "n", "1", "paper: Zhai et al. 2021"),
        )
    ],
    Claim(
        id="05.peers-equal",
        statement="kexue's MLP-Mixer token MLP and gMLP block give the same outputs as lucidrains' "
                  "mlp-mixer-pytorch and g-mlp-pytorch on copied weights.",
        source="ours",
        scale="benchmark record: n = 256, width 128, batch 8, float32",
        evidence=BENCH,
        criterion=FromRecord(BENCH, peer_difference, what="largest max |ours − peer|", at_most=1e-5),
        one_run="output equality on copied weights is deterministic: one comparison is enough",
        note="timm is not installed, so it is not compared.",
    ),
    Claim(
        id="05.digits-all-learn",
        statement="Every mixer learns the digits task: every mixer's test accuracy is ≥ 0.5 (chance 0.1) "
                  "for every seed.",
        source="ours",
        scale="book profile: 1,300 training digits as 16 patches, width 64, depth 2, equal parameter counts, "
              "40 epochs, 3 seeds",
        evidence=BOOK,
        criterion=FromRecord(BOOK, worst_digits,
                             what="lowest accuracy over the mixers, per seed (mean, [smallest, largest seed])",
                             at_least=0.5),
    ),
    *[
        Claim(
            id=f"05.fixed-fits-msra-{name.replace('_', '-')}",
            statement=f"A fixed mixer fits a single task: {_LABELS[name]} scores no more than 5 entity-F1 points below "
                      "attention on MSRA tagging, at equal parameter count.",
            source="article",
            scale=_BOOK_SCALE,
            evidence=BOOK,
            criterion=Difference(BOOK, f"msra_f1_{name}", "msra_f1_attention", at_least=-5, scale=100,
                                 unit=" F1 points"),
            note="'Fits' read by us as within 5 F1 points of attention. Every encoder has attention's "
                 "parameter count (to within one feed-forward unit per block): the feed-forward width makes "
                 "up for the mixer's own parameters, from 0 (FNet) to 58k (Synthesizer-Dense).",
        )
        for name in FIXED
    ],
    Claim(
        id="05.transfer-worse",
        statement="Attention whose matrix is a parameter (Synthesizer-Random style) transfers worse than "
                  "standard attention after pre-training.",
        source="article",
        scale="—",
        evidence="cell: ch05-article-numbers",
        criterion=NotTested("no pre-training of the mixers here; every model is trained on one task only"),
    ),
]
