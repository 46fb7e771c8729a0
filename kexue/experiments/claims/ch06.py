"""Chapter 06 (growing a Transformer without changing its function): the claims and their checks.

Most claims of the chapter are exact identities. Each has a small float64
recomputation here (``check_*``, each well under a second, returning
``(error, tolerance)``) that goes through :mod:`kexue.growth`; the chapter's
asserting cells (the claims' evidence) show the same checks in full. Two of the
article's formulas are errata: their checks measure the error of the article's
formula, so their computed verdict is ``refuted``. The compute comparison of
section 10 is judged on the book record ``ch06_growth_book``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from kexue.experiments.claims import Bound, Claim, Difference, Exact, FromRecord, NotTested
import kexue.experiments.ch06_growth as _experiments_ch06_growth
import kexue.growth as _growth
import kexue.nn as _nn
import kexue.rope as _rope

__all__ = [
    "CLAIMS",
    "BOOK",
    "check_isometry",
    "check_layer_norm_eps",
    "check_layer_norm_article",
    "check_gelu_ffn",
    "check_ffn_bias_article",
    "check_attention_scale",
    "check_rope_placement",
    "check_rope_saddle",
    "check_whole_model",
    "check_hf_bert",
    "check_gpt",
    "check_sgd_rate",
    "check_adam_rule",
    "check_noise",
    "check_deepen",
    "worst_start_gap",
]

BOOK = "ch06_growth_book"
F64 = torch.float64
TOL = 1e-12  # float64 identities on inputs of order one
MODEL_TOL = 1e-10  # float64 identities through a whole model


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the global RNG for model construction without disturbing the caller's stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randn(*shape: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=F64)


def _config(**overrides: Any):
    TransformerConfig = _nn.TransformerConfig

    base = dict(vocab_size=60, dim=16, depth=2, heads=2, ffn_dim=64, max_len=12, dropout=0.0,
                attention_dropout=0.0, layer_norm_eps=1e-5)
    return TransformerConfig(**{**base, **overrides})


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (4, 12), generator=g)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, 7:], mask[3, 4:] = False, False
    return ids, mask


def _mlm_loss(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(ids, mask)[mask], ids[mask])


# ----------------------------------------------------------------------------- sections 1-5
def check_isometry() -> tuple[float, float]:
    """Eqs. (ch06-embed), (ch06-linear): ``A A^T = I``, norms kept, ``x~ W~ + b~ = (x W + b) A`` for k = 2, 3, 4."""
    Expansion = _growth.Expansion

    g = torch.Generator().manual_seed(0)
    x, W, b = _randn(5, 6, g=g), _randn(6, 4, g=g), _randn(4, g=g)
    err = 0.0
    for k in (2, 3, 4):
        A = Expansion.repeat(k, k**-0.5)
        dense = A.expand(torch.eye(6, dtype=F64))
        W_k = A.expand(A.expand_dual(W, dim=0), dim=1)
        out = A.expand(x) @ W_k + A.expand(b)
        err = max(err, (dense @ dense.T - torch.eye(6, dtype=F64)).abs().max().item(),
                  (A.expand(x).norm(dim=-1) - x.norm(dim=-1)).abs().max().item(),
                  (out - A.expand(x @ W + b)).abs().max().item())
        if k == 2:  # the article's Eq. (6): repeat, weight / k, bias / sqrt(k)
            closed = W.repeat_interleave(2, 0).repeat_interleave(2, 1) / 2
            err = max(err, (W_k - closed).abs().max().item(),
                      (A.expand(b) - b.repeat_interleave(2) / math.sqrt(2)).abs().max().item())
    return err, TOL


def _layer_norm_error(grown_eps: Callable[[float, int], float]) -> float:
    """Grown LayerNorm (gamma, beta / sqrt(2), eps from ``grown_eps``) against the grown small output."""
    Expansion = _growth.Expansion

    g = torch.Generator().manual_seed(0)
    xs = 0.01 * _randn(4, 6, g=g)  # small activations: eps matters
    gamma, beta, eps, k = _randn(6, g=g), _randn(6, g=g), 1e-5, 2
    A = Expansion.repeat(k, k**-0.5)
    target = A.expand(F.layer_norm(xs, (6,), gamma, beta, eps))
    grown = F.layer_norm(A.expand(xs), (6 * k,), A.expand(gamma), A.expand(beta), grown_eps(eps, k))
    return (grown - target).abs().max().item()


def check_layer_norm_eps() -> tuple[float, float]:
    """Eq. (ch06-ln-eps): gamma, beta / sqrt(k) and eps / k make LayerNorm lossless."""
    return _layer_norm_error(lambda eps, k: eps / k), TOL


def check_layer_norm_article() -> tuple[float, float]:
    """The article's table: gamma, beta / sqrt(k) with eps kept (1e-5, activations of size 0.01)."""
    return _layer_norm_error(lambda eps, k: eps), TOL


def _ffn_error(b2_rule: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """GELU FFN grown by Eq. (ch06-ffn), with the second bias grown by ``b2_rule``."""
    Expansion = _growth.Expansion

    g = torch.Generator().manual_seed(0)
    x = _randn(5, 6, g=g)
    W1, b1, W2, b2 = _randn(6, 8, g=g), _randn(8, g=g), _randn(8, 6, g=g), _randn(6, g=g)
    A, C = Expansion.repeat(2, 2**-0.5), Expansion.repeat(2, 1.0)
    hidden = F.gelu(A.expand(x) @ C.expand(A.expand_dual(W1, 0), 1) + C.expand(b1))
    out = hidden @ A.expand(C.expand_dual(W2, 0), 1) + b2_rule(b2)
    return (out - A.expand(F.gelu(x @ W1 + b1) @ W2 + b2)).abs().max().item()


def check_gelu_ffn() -> tuple[float, float]:
    """Eq. (ch06-ffn): plain copies into GELU, the whole factor in the second layer, bias b / sqrt(2)."""
    return _ffn_error(lambda b: b.repeat_interleave(2) / math.sqrt(2)), TOL


def check_ffn_bias_article() -> tuple[float, float]:
    """The article's summary table: the second FFN bias repeated and divided by 2."""
    return _ffn_error(lambda b: b.repeat_interleave(2) / 2), TOL


def check_attention_scale() -> tuple[float, float]:
    """Eq. (ch06-attn-scale): queries and keys times 2^(1/4) keep the logits when the head size doubles."""
    Expansion = _growth.Expansion

    def attention(x, Wq, Wk, Wv, heads, scale):
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(0, 1) for t in (x @ Wq, x @ Wk, x @ Wv))
        return (torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v).transpose(0, 1).flatten(1)

    g = torch.Generator().manual_seed(0)
    x = _randn(5, 6, g=g)
    Wq, Wk, Wv = (_randn(6, 6, g=g) for _ in range(3))
    A = Expansion.repeat(2, 2**-0.5)

    def grow(W, c=1.0):
        return c * A.expand(A.expand_dual(W, 0), 1)

    small = attention(x, Wq, Wk, Wv, heads=2, scale=3**-0.5)
    big = attention(A.expand(x), grow(Wq, 2**0.25), grow(Wk, 2**0.25), grow(Wv), heads=2, scale=6**-0.5)
    return (big - A.expand(small)).abs().max().item(), TOL


# ----------------------------------------------------------------------------- section 6
def check_rope_placement() -> tuple[float, float]:
    """Eq. (ch06-rope): pair i of a head written into pair k i keeps every score under standard RoPE."""
    Expansion = _growth.Expansion
    apply_rope = _rope.apply_rope
    rope_frequencies = _rope.rope_frequencies

    g = torch.Generator().manual_seed(0)
    q, k = _randn(5, 8, g=g), _randn(5, 8, g=g)
    pos = torch.arange(5)
    scores = apply_rope(q, pos) @ apply_rope(k, pos).T
    place = Expansion((1.0, 0.0), group=2)
    big = apply_rope(place.expand(q), pos) @ apply_rope(place.expand(k), pos).T
    theta = rope_frequencies(16, dtype=F64)[::2] - rope_frequencies(8, dtype=F64)
    return max((big - scores).abs().max().item(), theta.abs().max().item()), TOL


def check_rope_saddle() -> tuple[float, float]:
    """Eq. (ch06-rope-saddle): without noise the empty RoPE rows stay exactly zero under SGD and AdamW.

    Returns the largest entry of the empty query and key rows after 3 steps of
    each optimiser (tolerance 0), or infinity if, with ``widen(noise=0.1)``, the
    empty *key* rows do not move by more than 1e-4 under AdamW (noise must seed them).
    """
    unused_rope_rows = _experiments_ch06_growth.unused_rope_rows
    widen = _growth.widen
    MaskedLM = _nn.MaskedLM

    ids, mask = _batch()
    with _seeded(0):
        small = MaskedLM(_config(position="rotary")).double()
    worst, key_moved = 0.0, 0.0
    for opt_name, noise in (("SGD", 0.0), ("AdamW", 0.0), ("AdamW", 0.1)):
        grown = widen(small, 2, noise=noise, generator=torch.Generator().manual_seed(0))
        before = unused_rope_rows(grown, 2)
        opt = (torch.optim.SGD(grown.parameters(), lr=0.1) if opt_name == "SGD"
               else torch.optim.AdamW(grown.parameters(), lr=1e-2, weight_decay=0.01))
        for _ in range(3):
            opt.zero_grad()
            _mlm_loss(grown, ids, mask).backward()
            opt.step()
        after = unused_rope_rows(grown, 2)
        if noise == 0:
            worst = max(worst, *(after[n].abs().max().item() for n in after))
        else:
            key_moved = (after["key"] - before["key"]).abs().max().item()
    return (worst if key_moved > 1e-4 else math.inf), 0.0


# ----------------------------------------------------------------------------- sections 7-8
def check_whole_model() -> tuple[float, float]:
    """``widen`` keeps a MaskedLM's logits: pre/post-LN x learned/rotary/no positions x heads x conventions."""
    widen = _growth.widen
    MaskedLM = _nn.MaskedLM

    ids, mask = _batch()
    worst = 0.0
    for norm in ("pre", "post"):
        for position in ("learned", "rotary", "none"):
            with _seeded(0):
                small = MaskedLM(_config(norm=norm, position=position)).double().eval()
            with torch.no_grad():
                ref = small(ids, mask)
                for heads in ("size", "count"):
                    for convention in ("isometric", "copy"):
                        big = widen(small, 2, heads=heads, convention=convention).eval()
                        worst = max(worst, (big(ids, mask) - ref)[mask].abs().max().item())
    return worst, MODEL_TOL


def check_hf_bert() -> tuple[float, float]:
    """``widen_hf_bert`` keeps a (random, tiny) Hugging Face ``BertModel``'s hidden states, both head options."""
    with warnings.catch_warnings():  # tqdm.auto warns that ipywidgets is absent; we show no bars
        warnings.filterwarnings("ignore", message="IProgress not found")
        import transformers

    expand_hidden = _growth.expand_hidden
    widen_hf_bert = _growth.widen_hf_bert

    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)
    ids, mask = _batch()
    with _seeded(0):
        small = transformers.BertModel(cfg).double().eval()
    worst = 0.0
    with torch.no_grad():
        ref = small(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        for heads in ("size", "count"):
            big = widen_hf_bert(small, 2, heads=heads).eval()
            out = big(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            worst = max(worst, (out - expand_hidden(ref, 2))[mask].abs().max().item())
    return worst, MODEL_TOL


def check_gpt() -> tuple[float, float]:
    """A causal, pre-LN ``kexue.nn`` decoder with a tied output embedding keeps its logits under ``widen``.

    Infinity if the grown model is not causal.
    """
    widen = _growth.widen
    MaskedLM = _nn.MaskedLM

    ids, _ = _batch()
    tokens = ids[:, :10]
    worst = 0.0
    for position in ("learned", "rotary"):
        with _seeded(0):
            gpt = MaskedLM(_config(position=position, causal=True)).double().eval()
        for heads in ("size", "count"):
            big = widen(gpt, 2, heads=heads).eval()
            if not big.config.causal:
                return math.inf, MODEL_TOL
            with torch.no_grad():
                small_logits = gpt.encoder(tokens) @ gpt.encoder.token_embedding.weight.T
                big_logits = big.encoder(tokens) @ big.encoder.token_embedding.weight.T
            worst = max(worst, (big_logits - small_logits).abs().max().item())
    return worst, MODEL_TOL


def check_deepen() -> tuple[float, float]:
    """``deepen`` keeps the function of a pre-LN model (eps 1e-5) and of a post-LN model with eps = 0."""
    deepen = _growth.deepen
    MaskedLM = _nn.MaskedLM

    ids, mask = _batch()
    worst = 0.0
    for norm, eps in (("pre", 1e-5), ("post", 0.0)):
        with _seeded(0):
            small = MaskedLM(_config(norm=norm, layer_norm_eps=eps)).double().eval()
        deep = deepen(small, 2, generator=torch.Generator().manual_seed(0)).eval()
        with torch.no_grad():
            worst = max(worst, (deep(ids, mask) - small(ids, mask))[mask].abs().max().item())
    return worst, TOL


# ----------------------------------------------------------------------------- section 9
def check_sgd_rate() -> tuple[float, float]:
    """Eq. (ch06-sgd): SGD on the grown model = SGD on the small one with rate / g per tensor (5 steps).

    The error is the larger of the output difference and the grown model's symmetry gap.
    """
    growth_gains = _growth.growth_gains
    symmetry_gap = _growth.symmetry_gap
    widen = _growth.widen
    MaskedLM = _nn.MaskedLM

    ids, mask = _batch()
    with _seeded(0):
        small = MaskedLM(_config(activation="relu")).double()
    big = widen(small, 2)
    gains = growth_gains(small, 2)
    opt_small = torch.optim.SGD([{"params": [p], "lr": 0.05 / gains[n]} for n, p in small.named_parameters()])
    opt_big = torch.optim.SGD(big.parameters(), lr=0.05)
    for _ in range(5):
        for model, opt in ((small, opt_small), (big, opt_big)):
            opt.zero_grad()
            _mlm_loss(model, ids, mask).backward()
            opt.step()
    with torch.no_grad():
        err = (big(ids, mask) - small(ids, mask))[mask].abs().max().item()
    return max(err, symmetry_gap(big)), 1e-9


def check_adam_rule() -> tuple[float, float]:
    """Eq. (ch06-adam): AdamW on the grown model = AdamW on the small one with lr / c, eps m c, wd c (3 steps).

    The error is max |grown parameter - widen(small twin) parameter|.
    """
    adam_twin_groups = _experiments_ch06_growth.adam_twin_groups
    widen = _growth.widen
    MaskedLM = _nn.MaskedLM

    ids, mask = _batch()
    lr, eps, wd = 1e-2, 1e-8, 0.01
    with _seeded(0):
        small = MaskedLM(_config(position="learned")).double()
    grown = widen(small, 2)
    opt_big = torch.optim.AdamW(grown.parameters(), lr=lr, eps=eps, weight_decay=wd)
    opt_small = torch.optim.AdamW(adam_twin_groups(small, 2, lr=lr, eps=eps, weight_decay=wd))
    for _ in range(3):
        for model, opt in ((small, opt_small), (grown, opt_big)):
            opt.zero_grad()
            _mlm_loss(model, ids, mask).backward()
            opt.step()
    regrown = dict(widen(small, 2).named_parameters())
    with torch.no_grad():
        err = max((p - regrown[n]).abs().max().item() for n, p in grown.named_parameters())
    return err, 1e-11  # three optimiser steps of rounding; the wrong rules are off by > 1e-4


def check_noise() -> tuple[float, float]:
    """``widen(noise=0.1)`` keeps the function; infinity if its symmetry gap is not above 1e-2."""
    symmetry_gap = _growth.symmetry_gap
    widen = _growth.widen
    MaskedLM = _nn.MaskedLM

    ids, mask = _batch()
    with _seeded(0):
        base = MaskedLM(_config(position="rotary")).double().eval()
    noisy = widen(base, 2, noise=0.1, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        err = (noisy(ids, mask) - base(ids, mask))[mask].abs().max().item()
    return (err if symmetry_gap(noisy) > 1e-2 else math.inf), MODEL_TOL


# ----------------------------------------------------------------------------- record helpers
def worst_start_gap(record: Mapping[str, Any]) -> tuple[float, float | None, float | None, int]:
    """Largest |loss right after growth - small model's loss| over seeds and both lossless variants."""
    rows = record["per_seed"]
    worst = max(max(m["start_gap_grown"], m["start_gap_grown_noise"]) for m in rows)
    return worst, worst, worst, len(rows)


# ----------------------------------------------------------------------------- the claims
_F64 = "float64 identity"
_F64_MODEL = "float64, tiny models (width 16 → 32)"
_BOOK_SCALE = ("book profile: MLM on Chinese STS-B, width 64 → 128, 2 blocks, rotary, "
               "600 + 600 steps, float32 CPU, 3 seeds")

CLAIMS: list[Claim] = [
    Claim(
        id="06.isometry",
        statement=("Repeating each coordinate k times and dividing by √k is an isometry, and a linear layer "
                   "follows it with its weight repeated and divided by k and its bias divided by √k "
                   "(the article's Eq. (6), k = 2)."),
        source="article",
        scale=_F64 + ", k = 2, 3, 4",
        evidence="cell: ch06-linear-layers",
        criterion=Exact(check_isometry, what="max abs error of A Aᵀ = I, the norms and the grown layer"),
        note="The article states k = 2; the check also covers k = 3, 4.",
    ),
    Claim(
        id="06.layernorm-article",
        statement=("LayerNorm follows automatically with γ and β divided by √2 and ε unchanged "
                   "(the article's summary table)."),
        source="article",
        scale=_F64 + ", ε = 1e-5, activations of size 0.01",
        evidence="cell: ch06-ln",
        criterion=Exact(check_layer_norm_article, what="max abs error with ε unchanged"),
        note=("Exact only with ε/k (next claim). With BERT's ε = 1e-12 the error stays below float32's "
              "machine epsilon (section 3)."),
    ),
    Claim(
        id="06.layernorm-eps",
        statement="With γ, β divided by √k and ε divided by k, the grown LayerNorm is lossless.",
        source="ours",
        scale=_F64 + ", ε = 1e-5, activations of size 0.01",
        evidence="cell: ch06-ln",
        criterion=Exact(check_layer_norm_eps, what="max abs error with ε/k"),
    ),
    Claim(
        id="06.ffn-gelu",
        statement=("A GELU feed-forward layer grows losslessly when the first layer outputs plain copies and "
                   "the second carries the whole factor, with its bias divided by √2 (k = 2)."),
        source="article",
        scale=_F64,
        evidence="cell: ch06-gelu",
        criterion=Exact(check_gelu_ffn, what="max abs error with the second bias b/√2"),
        note="The construction is the article's; the bias b/√2 follows from it (Eq. ch06-ffn).",
    ),
    Claim(
        id="06.ffn-bias-article",
        statement="The second FFN layer's bias becomes b/2 (the article's summary table, k = 2).",
        source="article",
        scale=_F64,
        evidence="cell: ch06-gelu",
        criterion=Exact(check_ffn_bias_article, what="max abs error with the second bias b/2"),
        note="An erratum in the table: b/√2 is lossless (previous claim).",
    ),
    Claim(
        id="06.attention-scale",
        statement=("When the head size doubles, multiplying query and key weights by 2^(1/4) restores the "
                   "1/√d_h attention scale exactly."),
        source="article",
        scale=_F64,
        evidence="cell: ch06-attn-scale",
        criterion=Exact(check_attention_scale, what="max abs error of the attention output"),
        note='Copying whole heads (widen(heads="count")) needs no fix: covered by 06.whole-model.',
    ),
    Claim(
        id="06.rope-exact",
        statement=("RoPE with standard frequencies can be grown exactly: writing pair i of a head into pair "
                   "k·i (zeros between) keeps every attention score. The article says RoPE cannot be "
                   "grown exactly."),
        source="ours",
        scale=_F64 + ", head size 8 → 16",
        evidence="cell: ch06-rope",
        criterion=Exact(check_rope_placement, what="max abs score (and frequency) error"),
    ),
    Claim(
        id="06.rope-saddle",
        statement=("The empty RoPE pairs of that placement are a zero-gradient saddle: without noise they stay "
                   "exactly zero under SGD and AdamW (weight decay included); widen(noise=...) seeds them."),
        source="ours",
        scale=_F64_MODEL + ", 3 optimiser steps",
        evidence="cell: ch06-rope",
        criterion=Exact(check_rope_saddle,
                        what="largest empty-row entry without noise (∞ if noise leaves the key rows still)"),
        note="The chapter's cell also runs AdamW with dropout (rows stay zero) for 30 steps.",
    ),
    Claim(
        id="06.rope-saddle-book",
        statement=("At book scale, the noiseless grown run's empty RoPE rows are still exactly zero after "
                   "600 AdamW steps."),
        source="ours",
        scale=_BOOK_SCALE,
        evidence=BOOK,
        criterion=Bound(BOOK, "max_unused_rope_row_grown", at_most=0.0, digits=-1),
    ),
    Claim(
        id="06.rope-recovery",
        statement=("The article's pair duplication with standard frequencies loses a little, and training "
                   "quickly recovers the loss."),
        source="article",
        scale="—",
        evidence="cell: ch06-rope",
        criterion=NotTested("the book grows RoPE exactly (06.rope-exact) and never trains the article's "
                            "approximate pair duplication"),
        note="Its score error with default frequencies is printed in section 6.",
    ),
    Claim(
        id="06.whole-model",
        statement=("A BERT-style encoder (a kexue.nn MaskedLM) can be enlarged losslessly: widen keeps the "
                   "logits for pre- and post-LN, learned, rotary and no positions, both head options and "
                   "both conventions."),
        source="article",
        scale=_F64_MODEL + ", 24 configurations",
        evidence="cell: ch06-whole",
        criterion=Exact(check_whole_model, what="worst max abs logit error"),
        note="float32: within 1e-5 (section 7); a pretrained MiniLM: section 11.",
    ),
    Claim(
        id="06.hf-bert",
        statement="A Hugging Face BertModel can be enlarged losslessly (widen_hf_bert).",
        source="article",
        scale=_F64 + ", random tiny BertModel (width 16 → 32); float32 MiniLM in section 11",
        evidence="cell: ch06-minilm",
        criterion=Exact(check_hf_bert, what="max abs hidden-state error"),
        note="The MiniLM cell checks the pretrained all-MiniLM-L6-v2 (384 → 768) to 1e-5 in float32.",
    ),
    Claim(
        id="06.gpt",
        statement=("A GPT-style decoder (causal, pre-LN, tied output embedding) can be enlarged losslessly, "
                   "and stays causal."),
        source="article",
        scale=_F64_MODEL + ", kexue.nn decoder",
        evidence="cell: ch06-whole",
        criterion=Exact(check_gpt, what="max abs logit error"),
        note="A kexue.nn model with causal=True, not a Hugging Face GPT-2.",
    ),
    Claim(
        id="06.t5",
        statement="T5 can be enlarged losslessly.",
        source="article",
        scale="—",
        evidence="cell: ch06-whole",
        criterion=NotTested("T5 (relative position biases, RMSNorm, cross-attention, no 1/√d_h scale) is "
                            "not built in this book"),
    ),
    Claim(
        id="06.deepen",
        statement=("Inserting blocks whose residual branches start at zero keeps the function exactly for "
                   "pre-LN, and for post-LN only when ε = 0."),
        source="ours",
        scale=_F64_MODEL + ", depth 2 → 4",
        evidence="cell: ch06-depth",
        criterion=Exact(check_deepen, what="max abs logit error (pre-LN ε = 1e-5, post-LN ε = 0)"),
        note="Post-LN with ε > 0 is off by O(ε/σ²); the cell shows the error for ε = 1e-5 and 1e-2.",
    ),
    Claim(
        id="06.sgd-rate",
        statement=("Identical copies get identical gradients, so under SGD growth is only a per-tensor change "
                   "of learning rate (η/g, g = mc²) and the grown model never leaves the small one's image."),
        source="article",
        scale=_F64_MODEL + ", 5 SGD steps, ReLU",
        evidence="cell: ch06-surprise",
        criterion=Exact(check_sgd_rate, what="max(output difference, symmetry gap)"),
        note="Raised in the article's comment thread and accepted by Su; the formula is ours.",
    ),
    Claim(
        id="06.adam-rule",
        statement=("Under AdamW, growth is AdamW on the small model with, per tensor, learning rate η/c, "
                   "ε·mc and weight decay λ·c (Eq. ch06-adam)."),
        source="ours",
        scale=_F64_MODEL + ", 3 AdamW steps",
        evidence="cell: ch06-adam-lr",
        criterion=Exact(check_adam_rule, what="max |grown − widen(small twin)| over parameters"),
        note="The chapter's cell also shows that the same rate, or an unscaled ε, does not match.",
    ),
    Claim(
        id="06.noise-exact",
        statement=("Noise in the null space of the input duplication (widen(noise=...)) keeps the function "
                   "while breaking the copies' symmetry."),
        source="ours",
        scale=_F64_MODEL + ", noise 0.1",
        evidence="cell: ch06-adam-lr",
        criterion=Exact(check_noise, what="max abs logit error (∞ if the symmetry gap is ≤ 1e-2)"),
    ),
    Claim(
        id="06.lossless-start-book",
        statement=("At book scale, both lossless grown runs start at the small model's held-out loss "
                   "(within 1e-4)."),
        source="ours",
        scale=_BOOK_SCALE,
        evidence=BOOK,
        criterion=FromRecord(BOOK, worst_start_gap, what="largest start gap over seeds and both variants",
                             at_most=1e-4, digits=2),
    ),
    Claim(
        id="06.image-book",
        statement=("At book scale, the noiseless grown model stays in the small model's image: its symmetry "
                   "gap stays below 1e-4 through 600 AdamW steps in float32."),
        source="ours",
        scale=_BOOK_SCALE,
        evidence=BOOK,
        criterion=Bound(BOOK, "max_symmetry_gap_grown", at_most=1e-4, digits=-1),
    ),
    Claim(
        id="06.noise-gap-book",
        statement="At book scale, the noisy grown model ends with a symmetry gap above 1e-3.",
        source="ours",
        scale=_BOOK_SCALE,
        evidence=BOOK,
        criterion=Bound(BOOK, "final_symmetry_gap_grown_noise", at_least=1e-3, digits=-1),
        note="widen(noise=0.1) starts at a few 1e-2 at this width; the claim is that training does not undo it.",
    ),
    Claim(
        id="06.grown-vs-scratch",
        statement=("Growing first and then training is a good start for the big model: at equal training "
                   "FLOPs, the grown model (the article's noiseless widening) ends with a lower held-out "
                   "MLM loss than the big model trained from scratch."),
        source="article",
        scale=_BOOK_SCALE,
        evidence=BOOK,
        criterion=Difference(BOOK, "final_loss_scratch", "final_loss_grown", at_least=0.0, unit=" nats",
                             digits=3),
        note=("The article says only that growth is a good start; equal compute against scratch is our "
              "reading of it."),
    ),
    Claim(
        id="06.noise-vs-scratch",
        statement=("At equal training FLOPs, the grown model with symmetry-breaking noise ends with a lower "
                   "held-out MLM loss than the big model trained from scratch."),
        source="ours",
        scale=_BOOK_SCALE,
        evidence=BOOK,
        criterion=Difference(BOOK, "final_loss_scratch", "final_loss_grown_noise", at_least=0.0,
                             unit=" nats", digits=3),
    ),
]
