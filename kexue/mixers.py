"""Token mixers of May 2021, all read as attention ``O = A V`` with some matrix ``A``.

Source: 苏剑林 (Su Jianlin), 《也来盘点一些最近的非Transformer工作》, Scientific Spaces,
2021-05-24, https://kexue.fm/archives/8431. Papers: Synthesizer (arXiv 2005.00743),
MLP-Mixer (2105.01601), External Attention (2105.02358), ResMLP (2105.03404),
FNet (2105.03824), gMLP and aMLP (2105.08050), pre-trained convolutions
(2105.03322); supplement, not in the post: AFT (2105.14103). aMLP and the
convolution are implemented but kept out of :data:`MIXERS`.

Every mixer shares one interface so that :class:`kexue.nn.TransformerEncoder` can
swap it in (``TransformerConfig(mixer=name, mixer_options={...})``):

* built as ``Mixer(dim, seq_len, **options)``;
* ``forward(x, mask=None)`` maps ``(batch, seq, dim)`` to ``(batch, seq, dim)``;
  ``mask`` is ``(batch, seq)``, True (or 1) at real tokens, False at padding;
* ``forward_reference(x, mask=None)``: the naive, formula-level computation the
  fast ``forward`` is tested against (values and gradients);
* where the mixer applies a matrix over tokens, ``token_matrix(x, mask=None)``
  returns it as ``(batch, seq, seq)`` (``(batch, heads, seq, seq)`` when there are
  several heads or, for AFT, one matrix per channel; complex for FNet), and
  ``readout(x, token_matrix(x) @ values(x))`` reproduces ``forward(x)``.

Length convention: a mixer whose weights are tied to positions (``fixed_length``)
accepts ``seq <= seq_len`` and uses the leading ``seq x seq`` block of its
weights, which is exactly what it computes on the input right-padded to
``seq_len`` with the padding masked out. Longer inputs raise ``ValueError``.

See: book chapter 05 (``book/05_token_mixers.md``); its experiment (the same
encoder trained with each mixer) lives in :mod:`kexue.experiments.ch05_mixers`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kexue import checks
from kexue.attention import MultiHeadSelfAttention, TransformerConfig

__all__ = [
    "TokenMixer",
    "SelfAttention",
    "SynthesizerRandom",
    "SynthesizerDense",
    "MixerTokenMLP",
    "ResMLPTokenMixing",
    "SpatialGatingUnit",
    "FNetMixing",
    "ExternalAttention",
    "AFTSimple",
    "DepthwiseConvMixing",
    "TinyAttentionGatingUnit",
    "MIXERS",
    "dft_matrix",
    "complex_dtype_for",
]


# --------------------------------------------------------------------------- helpers


def complex_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """complex128 for float64 input, complex64 otherwise (half precision is upcast)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def dft_matrix(m: int, *, dtype: torch.dtype = torch.complex128, device: torch.device | str | None = None) -> torch.Tensor:
    """The DFT matrix ``(F_m)_{jk} = exp(-2 pi i j k / m)``, shape ``(m, m)``.

    ``j k`` is reduced modulo ``m`` before the division so the angle stays exact
    for large ``m``. Equation ``ch05-fnet``.
    """
    checks.positive_int("m", m)
    if not dtype.is_complex:
        raise TypeError(f"dtype must be a complex dtype, got {dtype}")
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    idx = torch.arange(m, device=device)
    angle = (-2.0 * math.pi / m) * torch.remainder(idx[:, None] * idx[None, :], m).to(real)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def _mask_fill_value(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min


def _allowed(mask: torch.Tensor | None, n: int, causal: bool, device: torch.device) -> torch.Tensor | None:
    """Boolean ``(batch or 1, 1, n, n)``: may query ``i`` look at key ``j``?"""
    allowed = None
    if mask is not None:
        allowed = mask[:, None, None, :]  # (b, 1, 1, n): padding keys are excluded
    if causal:
        tril = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]
        allowed = tril if allowed is None else allowed & tril
    return allowed


def _masked_softmax(logits: torch.Tensor, allowed: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax with disallowed entries filled by the dtype's most negative finite value.

    A finite fill (not ``-inf``) keeps a fully masked row uniform instead of NaN.
    """
    if allowed is not None:
        logits = logits.masked_fill(~allowed, _mask_fill_value(logits.dtype))
    return torch.softmax(logits, dim=dim)


def _finite_float(name: str, value: object) -> float:
    """A finite real number (an initialisation scale): NaN or inf would fill the weights silently."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)  # (b, n, h*dh) -> (b, h, n, dh)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).flatten(-2)  # (b, h, n, dh) -> (b, n, h*dh)


def _squeeze_heads(t: torch.Tensor) -> torch.Tensor:
    return t[:, 0] if t.dim() == 4 and t.shape[1] == 1 else t


# --------------------------------------------------------------------------- base class


class TokenMixer(nn.Module):
    """Base class: ``(batch, seq, dim) -> (batch, seq, dim)`` mixing along ``seq``.

    Class attributes describe what the mixer gives up (the chapter measures each
    one on a random instance): ``fixed_length`` (weights tied to positions, so
    ``seq <= seq_len``), ``supports_causal``, ``padding`` (``"exact"``: outputs at
    real tokens ignore everything about the padding; ``"content"``: they ignore the
    padded tokens' content but not how many there are), ``permutation_equivariant``
    and ``complexity`` (time of one forward pass).

    Subclasses with a token matrix implement ``_matrix`` (``(b, h, n, n)``),
    ``_values`` (``(b, h, n, dh)``) and ``readout``; the base class then provides
    ``token_matrix``, ``values`` and ``forward_reference``.
    """

    key: ClassVar[str] = ""
    fixed_length: ClassVar[bool] = False
    supports_causal: ClassVar[bool] = True
    causal_reason: ClassVar[str] = ""
    padding: ClassVar[str] = "exact"
    permutation_equivariant: ClassVar[bool] = False
    has_token_matrix: ClassVar[bool] = True
    complexity: ClassVar[str] = ""

    def __init__(self, dim: int, seq_len: int, *, causal: bool = False) -> None:
        super().__init__()
        self.dim = checks.positive_int("dim", dim)
        self.seq_len = checks.positive_int("seq_len", seq_len)
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        if causal and not self.supports_causal:
            raise ValueError(f"{type(self).__name__} cannot be causal: {self.causal_reason}")
        self.causal = causal

    # -- input validation ----------------------------------------------------
    def _prepare(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check ``x`` and ``mask`` (the shared contract :func:`kexue.checks.token_mask`).

        Each mixer then zeroes the padded rows of whatever it mixes over tokens
        with :func:`kexue.checks.zero_padding` (``masked_fill``, not a product
        with the mask), so outputs at real tokens are exactly those of zero
        padding even when the padding holds inf or NaN. Outputs at padded
        positions carry no meaning; gMLP and AFT gate them with the padded
        input itself (``readout(x, A V)`` takes ``x`` as given), so there they
        are NaN when it is. :class:`kexue.nn.TransformerEncoder` zeroes the
        padding of its input, so inside the encoder nothing non-finite enters.
        """
        checks.hidden_states("x", x, self.dim, module=self)
        batch, n, _ = x.shape
        if self.fixed_length and n > self.seq_len:
            raise ValueError(
                f"{type(self).__name__} was built for seq_len={self.seq_len}: its token-mixing weights "
                f"are tied to positions, so it cannot take seq={n} > {self.seq_len}"
            )
        return x, checks.token_mask("mask", mask, batch, n, x.device)

    # -- the O = A V view ------------------------------------------------------
    def _matrix(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} applies no single matrix over tokens")

    def _values(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} applies no single matrix over tokens")

    def readout(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """Everything after ``A V``: output projection, gating, bias, LayerScale."""
        raise TypeError(f"{type(self).__name__} applies no single matrix over tokens")

    def token_matrix(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The matrix ``A`` over tokens: ``(batch, seq, seq)``, or ``(batch, heads, seq, seq)``."""
        x, mask = self._prepare(x, mask)
        return _squeeze_heads(self._matrix(x, mask))

    def values(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What ``A`` multiplies: ``(batch, seq, d_v)``, or ``(batch, heads, seq, d_head)``."""
        x, mask = self._prepare(x, mask)
        return _squeeze_heads(self._values(x, mask))

    def forward_reference(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Naive formula-level path ``readout(A V)`` with ``A`` built explicitly."""
        x, mask = self._prepare(x, mask)
        return self.readout(x, self._matrix(x, mask) @ self._values(x, mask))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, seq_len={self.seq_len}, causal={self.causal}"


# --------------------------------------------------------------------------- 1. attention


class SelfAttention(TokenMixer):
    r"""Softmax self-attention, a thin wrapper around :class:`kexue.attention.MultiHeadSelfAttention`.

    .. math:: O = \mathrm{softmax}\big(Q K^\top / \sqrt{d_h} + M\big) V W_o,\quad Q,K,V = X W_{q,k,v}

    ``forward`` calls the shared encoder's attention (``F.scaled_dot_product_attention``);
    ``token_matrix`` builds the softmax explicitly from the same weights. With
    ``causal=True`` the wrapper runs the same weights with a lower-triangular mask.
    ``seq_len`` is not used: attention takes any length. Equation ``ch05-attention``.
    """

    key = "attention"
    permutation_equivariant = True
    complexity = "O(n^2 d)"

    def __init__(self, dim: int, seq_len: int, *, heads: int = 1, dropout: float = 0.0,
                 causal: bool = False, scale: float | None = None) -> None:
        super().__init__(dim, seq_len, causal=causal)
        checks.positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        config = TransformerConfig(dim=dim, heads=heads, max_len=seq_len, attention_dropout=dropout,
                                   position="none", attention_scale=scale)
        self.heads = heads
        self.scale = checks.positive_float("scale", scale) if scale is not None else (dim // heads) ** -0.5
        self.attention = MultiHeadSelfAttention(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        if not self.causal:
            return self.attention(x, mask=mask, checked=True)  # x and mask checked by _prepare
        att = self.attention
        x = checks.zero_padding(x, mask)  # as in MultiHeadSelfAttention
        q, k, v = (_split_heads(lin(x), self.heads) for lin in (att.query, att.key, att.value))
        allowed = _allowed(mask, x.shape[1], True, x.device)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, _mask_fill_value(x.dtype))
        p = att.config.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=self.scale)
        return att.output(_merge_heads(out))

    def _matrix(self, x, mask):
        x = checks.zero_padding(x, mask)  # as forward (MultiHeadSelfAttention) does
        q = _split_heads(self.attention.query(x), self.heads)
        k = _split_heads(self.attention.key(x), self.heads)
        return _masked_softmax(q @ k.transpose(-1, -2) * self.scale, _allowed(mask, x.shape[1], self.causal, x.device))

    def _values(self, x, mask):
        return _split_heads(self.attention.value(checks.zero_padding(x, mask)), self.heads)

    def readout(self, x, mixed):
        if mixed.dim() == 3:
            mixed = mixed[:, None]
        return self.attention.output(_merge_heads(mixed))


# --------------------------------------------------------------------------- 2. Synthesizer


class _Synthesizer(TokenMixer):
    """Shared parts of the Synthesizers: multi-head values ``X W_v`` and the output ``W_o``."""

    def __init__(self, dim: int, seq_len: int, *, heads: int, causal: bool) -> None:
        super().__init__(dim, seq_len, causal=causal)
        checks.positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads

    def _value_and_output(self) -> None:
        """Create ``W_v`` and ``W_o`` last, after each subclass's own parameters (keeps the init order)."""
        self.value = nn.Linear(self.dim, self.dim)
        self.output = nn.Linear(self.dim, self.dim)

    def _values(self, x, mask):
        return _split_heads(self.value(checks.zero_padding(x, mask)), self.heads)

    def readout(self, x, mixed):
        if mixed.dim() == 3:
            mixed = mixed[:, None]
        return self.output(_merge_heads(mixed))


class SynthesizerRandom(_Synthesizer):
    r"""Synthesizer-Random: attention whose logits are a learned (or frozen) parameter.

    .. math:: O = \mathrm{softmax}(R + M)\, X W_v W_o,\qquad R\in\mathbb{R}^{h\times L\times L}

    ``R`` does not depend on the input: every sample gets the same matrix.
    ``trainable=False`` freezes the random ``R`` (the paper's "fixed" variant).
    Equation ``ch05-synth-random``.
    """

    key = "synthesizer_random"
    fixed_length = True
    complexity = "O(n^2 d)"

    def __init__(self, dim: int, seq_len: int, *, heads: int = 1, trainable: bool = True,
                 init_std: float = 1.0, causal: bool = False) -> None:
        super().__init__(dim, seq_len, heads=heads, causal=causal)
        checks.boolean("trainable", trainable)
        init_std = _finite_float("init_std", init_std)
        self.logits = nn.Parameter(torch.randn(heads, seq_len, seq_len) * init_std, requires_grad=trainable)
        self._value_and_output()

    def _matrix(self, x, mask):
        n = x.shape[1]
        logits = self.logits[:, :n, :n].to(x.dtype)[None]  # (1, h, n, n): the same for every sample
        a = _masked_softmax(logits, _allowed(mask, n, self.causal, x.device))
        return a.expand(x.shape[0], -1, -1, -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        n = x.shape[1]
        a = _masked_softmax(self.logits[:, :n, :n].to(x.dtype)[None], _allowed(mask, n, self.causal, x.device))
        return self.readout(x, a @ self._values(x, mask))  # broadcasts (1 or b, h, n, n) over the batch


class SynthesizerDense(_Synthesizer):
    r"""Synthesizer-Dense: each token predicts its own row of logits with a two-layer MLP.

    .. math:: B_i = \mathrm{relu}(x_i W_1 + b_1) W_2 + b_2 \in \mathbb{R}^{L},\qquad
              O = \mathrm{softmax}(B_{:, :n} + M)\, X W_v W_o

    No query-key products: token ``i``'s weights over positions come from ``x_i`` alone.
    Equation ``ch05-synth-dense``.
    """

    key = "synthesizer_dense"
    fixed_length = True
    complexity = "O(n L d_h + n^2 d)"

    def __init__(self, dim: int, seq_len: int, *, heads: int = 1, hidden: int | None = None,
                 causal: bool = False) -> None:
        super().__init__(dim, seq_len, heads=heads, causal=causal)
        hidden = dim if hidden is None else checks.positive_int("hidden", hidden)
        self.hidden_layer = nn.Linear(dim, hidden)
        self.logit_layer = nn.Linear(hidden, heads * seq_len)
        self._value_and_output()

    def _matrix(self, x, mask):
        n = x.shape[1]
        x = checks.zero_padding(x, mask)  # padded rows: finite (meaningless) logits, whatever they held
        logits = self.logit_layer(F.relu(self.hidden_layer(x)))  # (b, n, h*L)
        logits = logits.unflatten(-1, (self.heads, self.seq_len)).transpose(1, 2)[..., :n]  # (b, h, n, n)
        return _masked_softmax(logits, _allowed(mask, n, self.causal, x.device))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        return self.readout(x, self._matrix(x, mask) @ self._values(x, mask))


# --------------------------------------------------------------------------- 3. MLP-Mixer


class MixerTokenMLP(TokenMixer):
    r"""MLP-Mixer's token-mixing MLP, one MLP over positions shared by all channels.

    .. math:: O = W_2\, \sigma(W_1 V + b_1 \mathbf{1}^\top) + b_2 \mathbf{1}^\top,\qquad
              W_1\in\mathbb{R}^{D_S\times L},\ W_2\in\mathbb{R}^{L\times D_S}

    with ``V = X`` (the block's LayerNorm comes before), ``sigma`` = GELU and
    ``D_S = expansion * dim`` (the paper's 0.5). With ``activation="identity"`` the
    layer collapses to one fixed matrix ``A = W_2 W_1`` (rank ``<= D_S``) plus a
    bias, and ``token_matrix`` returns it; with GELU there is no single matrix.
    Padding is honoured by zeroing padded rows of ``V``. Cannot be causal.
    Equation ``ch05-mixer``.
    """

    key = "mixer"
    fixed_length = True
    supports_causal = False
    causal_reason = "every hidden unit of the token MLP reads all positions, future ones included"
    complexity = "O(n D_S d)"

    def __init__(self, dim: int, seq_len: int, *, expansion: float = 0.5, hidden: int | None = None,
                 activation: str = "gelu", causal: bool = False) -> None:
        super().__init__(dim, seq_len, causal=causal)
        if activation not in ("gelu", "identity"):
            raise ValueError(f"activation must be 'gelu' or 'identity', got {activation!r}")
        if hidden is None:
            hidden = max(1, int(checks.positive_float("expansion", expansion) * dim))
        self.hidden = checks.positive_int("hidden", hidden)
        self.activation = activation
        self.has_token_matrix = activation == "identity"  # instance-level override
        self.w1 = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.hidden, seq_len)))
        self.b1 = nn.Parameter(torch.zeros(self.hidden))
        self.w2 = nn.Parameter(nn.init.xavier_uniform_(torch.empty(seq_len, self.hidden)))
        self.b2 = nn.Parameter(torch.zeros(seq_len))

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h) if self.activation == "gelu" else h

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        n = x.shape[1]
        v = checks.zero_padding(x, mask)  # (b, n, d), read as n "channels" of length d
        # a width-1 convolution over the token axis is exactly W v + b (and the fastest kernel on CPU)
        h = self._act(F.conv1d(v, self.w1[:, :n, None], self.b1))  # (b, D_S, d)
        return F.conv1d(h, self.w2[:n, :, None], self.b2[:n])  # (b, n, d)

    def forward_reference(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        n = x.shape[1]
        v = checks.zero_padding(x, mask)
        h = self._act(torch.einsum("kj,bjc->bkc", self.w1[:, :n], v) + self.b1[:, None])  # (b, D_S, d)
        return torch.einsum("ik,bkc->bic", self.w2[:n], h) + self.b2[:n, None]

    def _check_linear(self) -> None:
        if self.activation != "identity":
            raise TypeError(
                "MixerTokenMLP with a GELU between its two token layers applies no single matrix over "
                "tokens (it is 'fixed mixing -> GELU -> fixed mixing'); build it with activation='identity'"
            )

    def _matrix(self, x, mask):
        self._check_linear()
        n = x.shape[1]
        a = self.w2[:n] @ self.w1[:, :n]  # (n, n), rank <= D_S
        return a.to(x.dtype).expand(x.shape[0], 1, n, n)

    def _values(self, x, mask):
        self._check_linear()
        return checks.zero_padding(x, mask)[:, None]

    def readout(self, x, mixed):
        self._check_linear()
        n = x.shape[1]
        mixed = _squeeze_heads(mixed)
        return mixed + (self.w2[:n] @ self.b1 + self.b2[:n])[:, None]


# --------------------------------------------------------------------------- 4. ResMLP


class ResMLPTokenMixing(TokenMixer):
    r"""ResMLP's token mixing: one linear layer over positions between affine maps.

    .. math:: O = \mathrm{diag}(\gamma)\big(A\, \mathrm{Aff}(X) + b \mathbf{1}^\top\big),\qquad
              \mathrm{Aff}(X) = X \mathrm{diag}(\alpha) + \mathbf{1}\beta^\top

    ``A`` (``L x L``, with bias ``b``) is literally a fixed attention matrix without
    softmax; ``gamma`` is the LayerScale (``init_values``, the paper's 0.1 at depth 12).
    ``causal=True`` keeps the lower triangle of ``A``.
    Equation ``ch05-resmlp``.
    """

    key = "resmlp"
    fixed_length = True
    complexity = "O(n^2 d)"

    def __init__(self, dim: int, seq_len: int, *, init_values: float = 0.1, init_std: float = 0.02,
                 causal: bool = False) -> None:
        super().__init__(dim, seq_len, causal=causal)
        init_values, init_std = _finite_float("init_values", init_values), _finite_float("init_std", init_std)
        self.alpha = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.weight = nn.Parameter(torch.randn(seq_len, seq_len) * init_std)
        self.bias = nn.Parameter(torch.zeros(seq_len))
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def _weight(self, n: int) -> torch.Tensor:
        w = self.weight[:n, :n]
        return w.tril() if self.causal else w

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        n = x.shape[1]
        v = checks.zero_padding(x * self.alpha + self.beta, mask)
        mixed = F.conv1d(v, self._weight(n)[..., None], self.bias[:n])  # A V + b 1^T over the token axis
        return mixed * self.gamma

    def _matrix(self, x, mask):
        n = x.shape[1]
        return self._weight(n).to(x.dtype).expand(x.shape[0], 1, n, n)

    def _values(self, x, mask):
        return checks.zero_padding(x * self.alpha + self.beta, mask)[:, None]

    def readout(self, x, mixed):
        mixed = _squeeze_heads(mixed)
        return (mixed + self.bias[: x.shape[1], None]) * self.gamma


# --------------------------------------------------------------------------- 5. gMLP


class SpatialGatingUnit(TokenMixer):
    r"""gMLP's token mixing: channel projection, GELU, spatial gating unit, channel projection.

    .. math:: [Z_1, Z_2] = \mathrm{GELU}(X U + c),\qquad
              O = \big(Z_1 \odot (W\, \mathrm{LN}(Z_2) + b \mathbf{1}^\top)\big) V_o

    ``W`` (``L x L``) starts near zero and ``b`` at one, so at initialisation the unit
    passes ``Z_1`` through. ``hidden`` is the width of each half (default ``dim``).
    ``causal=True`` keeps the lower triangle of ``W`` (as lucidrains' ``causal``).
    In :class:`kexue.nn.TransformerEncoder` the block's FFN follows, which gMLP's own
    blocks do not have. Equation ``ch05-gmlp``.
    """

    key = "gmlp"
    fixed_length = True
    complexity = "O(n^2 d + n d^2)"

    def __init__(self, dim: int, seq_len: int, *, hidden: int | None = None, init_std: float = 1e-6,
                 layer_norm_eps: float = 1e-5, causal: bool = False) -> None:
        super().__init__(dim, seq_len, causal=causal)
        self.hidden = dim if hidden is None else checks.positive_int("hidden", hidden)
        init_std = _finite_float("init_std", init_std)
        checks.float_in("layer_norm_eps", layer_norm_eps, 0.0, float("inf"))
        self.proj_in = nn.Linear(dim, 2 * self.hidden)
        self.norm = nn.LayerNorm(self.hidden, eps=layer_norm_eps)
        self.weight = nn.Parameter(torch.randn(seq_len, seq_len) * init_std)
        self.bias = nn.Parameter(torch.ones(seq_len))
        self.proj_out = nn.Linear(self.hidden, dim)

    def _weight(self, n: int) -> torch.Tensor:
        w = self.weight[:n, :n]
        return w.tril() if self.causal else w

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = F.gelu(self.proj_in(x)).chunk(2, dim=-1)
        return z1, z2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        n = x.shape[1]
        z1, z2 = self._halves(x)
        v = checks.zero_padding(self.norm(z2), mask)
        gate = F.conv1d(v, self._weight(n)[..., None], self.bias[:n])  # W LN(Z_2) + b 1^T
        return self.proj_out(z1 * gate)

    def _matrix(self, x, mask):
        n = x.shape[1]
        return self._weight(n).to(x.dtype).expand(x.shape[0], 1, n, n)

    def _values(self, x, mask):
        return checks.zero_padding(self.norm(self._halves(x)[1]), mask)[:, None]

    def readout(self, x, mixed):
        mixed = _squeeze_heads(mixed)
        z1 = self._halves(x)[0]
        return self.proj_out(z1 * (mixed + self.bias[: x.shape[1], None]))


# --------------------------------------------------------------------------- 6. FNet


class FNetMixing(TokenMixer):
    r"""FNet's parameter-free Fourier mixing over the sequence and hidden axes.

    .. math:: O = \Re\big(F_n X F_d\big) = C_n X C_d - S_n X S_d,\qquad (F_m)_{jk} = e^{-2\pi i jk/m}

    ``forward`` uses ``torch.fft.fft2``; ``token_matrix`` returns the complex ``F_n``,
    ``values`` returns ``X F_d`` and ``readout`` takes the real part. A mask zeroes
    the padded rows first, so outputs ignore the padding's content, but ``n`` is the
    padded length: outputs still change with the amount of padding. ``seq_len`` is
    not used. Cannot be causal. Equation ``ch05-fnet``.
    """

    key = "fnet"
    supports_causal = False
    causal_reason = "the DFT matrix is dense: every output position reads every input position"
    padding = "content"
    complexity = "O(n d log(n d))"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        if x.shape[0] == 0:  # the FFT backends refuse an empty batch
            return torch.zeros_like(x)
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()  # no half-precision FFT on CPU
        return torch.fft.fft2(checks.zero_padding(work, mask), dim=(-2, -1)).real.to(x.dtype)

    def _matrix(self, x, mask):
        n = x.shape[1]
        return dft_matrix(n, dtype=complex_dtype_for(x.dtype), device=x.device).expand(x.shape[0], 1, n, n)

    def _values(self, x, mask):
        cdt = complex_dtype_for(x.dtype)
        return (checks.zero_padding(x, mask).to(cdt) @ dft_matrix(self.dim, dtype=cdt, device=x.device))[:, None]

    def readout(self, x, mixed):
        return _squeeze_heads(mixed).real.to(x.dtype)


# --------------------------------------------------------------------------- 7. External Attention


class ExternalAttention(TokenMixer):
    r"""External Attention: keys and values are learned memories of ``slots`` rows.

    .. math:: \tilde\alpha = (X W_q) M_k^\top,\quad
              \hat\alpha_{ij} = \frac{e^{\tilde\alpha_{ij}}}{\sum_{k\le n} e^{\tilde\alpha_{kj}}},\quad
              \alpha_{ij} = \frac{\hat\alpha_{ij}}{\sum_{s} \hat\alpha_{is}},\quad
              O = (\alpha M_v) W_o

    ``normalisation="double"`` (the paper's): softmax over the **tokens**, then l1
    over the slots; ``"row"``: one softmax over the slots, a per-token map. The
    matrix is token-to-slot (``slot_matrix``), not token-to-token, so there is no
    ``token_matrix``. The double normalisation sums over all tokens and so cannot be
    causal; the row variant is trivially causal. Equation ``ch05-ea``.
    """

    key = "external_attention"
    has_token_matrix = False
    permutation_equivariant = True
    supports_causal = True
    complexity = "O(n S d)"

    def __init__(self, dim: int, seq_len: int, *, slots: int = 64, heads: int = 1,
                 normalisation: str = "double", eps: float = 1e-9, causal: bool = False) -> None:
        checks.boolean("causal", causal)
        checks.choice("normalisation", normalisation, ("double", "row"))
        if causal and normalisation == "double":
            raise ValueError(
                "ExternalAttention cannot be causal with normalisation='double': the softmax over "
                "tokens sums over every position, future ones included"
            )
        super().__init__(dim, seq_len, causal=causal)
        checks.positive_int("slots", slots)
        checks.positive_int("heads", heads)
        eps = checks.positive_float("eps", eps)
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        head_dim = dim // heads
        self.heads, self.slots, self.normalisation, self.eps = heads, slots, normalisation, eps
        self.query = nn.Linear(dim, dim)
        self.memory_key = nn.Parameter(torch.randn(heads, slots, head_dim) * head_dim**-0.5)
        self.memory_value = nn.Parameter(torch.randn(heads, slots, head_dim))
        self.output = nn.Linear(dim, dim)

    def _slot_matrix(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = _split_heads(self.query(x), self.heads)  # (b, h, n, dh)
        logits = q @ self.memory_key.to(x.dtype).transpose(-1, -2)  # (b, h, n, S)
        if self.normalisation == "row":
            return torch.softmax(logits, dim=-1)
        allowed = None if mask is None else mask[:, None, :, None]  # padding tokens leave the token softmax
        attn = _masked_softmax(logits, allowed, dim=-2)  # over tokens
        if allowed is not None:
            attn = attn.masked_fill(~allowed, 0.0)
        return attn / (self.eps + attn.sum(dim=-1, keepdim=True))  # then l1 over slots

    def slot_matrix(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``alpha``: ``(batch, seq, slots)``, or ``(batch, heads, seq, slots)``."""
        x, mask = self._prepare(x, mask)
        return _squeeze_heads(self._slot_matrix(x, mask))

    def values(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The value memory ``M_v``: ``(batch, slots, dim)``, or ``(batch, heads, slots, d_head)``."""
        x, mask = self._prepare(x, mask)
        return _squeeze_heads(self.memory_value.to(x.dtype).expand(x.shape[0], -1, -1, -1))

    def readout(self, x, mixed):
        if mixed.dim() == 3:
            mixed = mixed[:, None]
        return self.output(_merge_heads(mixed))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        return self.readout(x, self._slot_matrix(x, mask) @ self.memory_value.to(x.dtype))

    def forward_reference(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Entry-wise formula with explicit sums (exp, column sums over real tokens, row sums)."""
        x, mask = self._prepare(x, mask)
        q = self.query(x).unflatten(-1, (self.heads, -1))  # (b, n, h, dh)
        logits = torch.einsum("bnhd,hsd->bhns", q, self.memory_key.to(x.dtype))
        if self.normalisation == "row":
            alpha = logits.exp() / logits.exp().sum(-1, keepdim=True)
        else:
            if mask is not None:  # padded tokens leave the sums (exp(-inf) = 0, whatever they hold)
                logits = logits.masked_fill(~mask[:, None, :, None], float("-inf"))
            e = (logits - logits.amax(dim=(-2, -1), keepdim=True)).exp()
            alpha_hat = e / e.sum(dim=-2, keepdim=True)
            alpha = alpha_hat / (self.eps + alpha_hat.sum(dim=-1, keepdim=True))
        out = torch.einsum("bhns,hsd->bnhd", alpha, self.memory_value.to(x.dtype))
        return self.output(out.flatten(-2))


# --------------------------------------------------------------------------- 8. AFT (supplement)


class AFTSimple(TokenMixer):
    r"""AFT-simple (supplement: An Attention Free Transformer, arXiv 2105.14103, not in the post).

    .. math:: Y_t = \sigma(Q_t) \odot \frac{\sum_{t'} e^{K_{t'}} \odot V_{t'}}{\sum_{t'} e^{K_{t'}}},
              \qquad O = Y W_o

    One attention matrix per channel ``c``: ``A^{(c)}_{t t'} = softmax_{t'}(K_{t' c})``,
    the same for every query ``t`` (rank one), so ``token_matrix`` is
    ``(batch, dim, seq, seq)``. The fast path pools once (``O(n d)``); with
    ``causal=True`` it uses cumulative sums, shifted by each channel's maximum key
    (keys more than ~80 below a later maximum underflow in float32).
    Equation ``ch05-aft``.
    """

    key = "aft_simple"
    permutation_equivariant = True
    complexity = "O(n d)"

    def __init__(self, dim: int, seq_len: int, *, causal: bool = False) -> None:
        super().__init__(dim, seq_len, causal=causal)
        self.query = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        k, v = self.key_proj(x), self.value(checks.zero_padding(x, mask))
        if mask is not None:
            k = k.masked_fill(~mask[..., None], _mask_fill_value(k.dtype))
        if not self.causal:
            w = torch.softmax(k, dim=1)  # (b, n, d): softmax over positions, per channel
            pooled = (w * v).sum(dim=1, keepdim=True)  # (b, 1, d)
        else:
            e = torch.exp(k - k.amax(dim=1, keepdim=True))
            den = torch.cumsum(e, dim=1).clamp_min(torch.finfo(e.dtype).tiny)
            pooled = torch.cumsum(e * v, dim=1) / den
        return self.output(torch.sigmoid(self.query(x)) * pooled)

    def _matrix(self, x, mask):
        n = x.shape[1]
        k = self.key_proj(x).transpose(1, 2)[:, :, None, :]  # (b, d, 1, n): the logit of key t' in channel c
        k = k.expand(-1, -1, n, -1)  # identical rows: no query dependence
        return _masked_softmax(k, _allowed(mask, n, self.causal, x.device))

    def _values(self, x, mask):
        v = self.value(checks.zero_padding(x, mask))
        return v.transpose(1, 2)[..., None]  # (b, d, n, 1): one "head" of size 1 per channel

    def readout(self, x, mixed):
        if mixed.dim() == 3:  # dim == 1 squeezed the channel axis
            mixed = mixed[:, None]
        y = mixed[..., 0].transpose(1, 2)  # (b, n, d)
        return self.output(torch.sigmoid(self.query(x)) * y)


# --------------------------------------------------------------------------- 9. not in the registry


class DepthwiseConvMixing(TokenMixer):
    r"""A depthwise 1-D convolution over tokens (the token mixing of pre-trained convolutions).

    .. math:: O_{i c} = \sum_{t=0}^{k-1} w_{c t}\, X_{i + t - \ell,\, c} + b_c,\qquad
              A^{(c)}_{ij} = w_{c,\, j - i + \ell}\ \text{ if } 0 \le j - i + \ell < k \text{ else } 0

    One banded Toeplitz matrix per channel ``c`` (``token_matrix`` is
    ``(batch, dim, seq, seq)``), with ``l = (k - 1) / 2`` (centred, ``kernel`` odd) or
    ``l = k - 1`` with ``causal=True`` (past and present only). Takes any length;
    padded rows are zeroed, so a real token sees exactly the zeros it would see at
    its own length. Not in :data:`MIXERS` (the chapter's experiment keeps its list).
    Equation ``ch05-conv``.
    """

    key = "conv"
    complexity = "O(n k d)"

    def __init__(self, dim: int, seq_len: int, *, kernel: int = 3, causal: bool = False) -> None:
        super().__init__(dim, seq_len, causal=causal)
        self.kernel = checks.positive_int("kernel", kernel)
        if not causal and kernel % 2 == 0:
            raise ValueError(f"a centred kernel must be odd, got kernel={kernel}")
        self.left = kernel - 1 if causal else (kernel - 1) // 2
        self.weight = nn.Parameter(torch.randn(dim, kernel) / kernel)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        v = F.pad(checks.zero_padding(x, mask).transpose(1, 2), (self.left, self.kernel - 1 - self.left))
        return F.conv1d(v, self.weight[:, None, :], self.bias, groups=self.dim).transpose(1, 2)

    def _matrix(self, x, mask):
        n = x.shape[1]
        idx = torch.arange(n, device=x.device)
        tap = idx[None, :] - idx[:, None] + self.left  # (n, n): which kernel tap links i to j
        inside = (tap >= 0) & (tap < self.kernel)
        a = self.weight.to(x.dtype)[:, tap.clamp(0, self.kernel - 1)] * inside  # (d, n, n)
        return a.expand(x.shape[0], -1, -1, -1)

    def _values(self, x, mask):
        return checks.zero_padding(x, mask).transpose(1, 2)[..., None]  # (b, d, n, 1)

    def readout(self, x, mixed):
        if mixed.dim() == 3:
            mixed = mixed[:, None]
        return mixed[..., 0].transpose(1, 2) + self.bias


class TinyAttentionGatingUnit(SpatialGatingUnit):
    r"""aMLP's gating unit: gMLP's spatial gate plus a tiny single-head attention.

    .. math:: [Z_1, Z_2] = \mathrm{GELU}(X U + c),\qquad
              O = \Big(Z_1 \odot \big(W\,\mathrm{LN}(Z_2) + b\mathbf{1}^\top
              + \mathrm{softmax}(Q K^\top/\sqrt{a} + M)\, V\, W_p\big)\Big) V_o

    with ``Q, K, V = X W_{q,k,v}`` of width ``a = attn_dim`` (the paper's 64) read
    from the unit's input ``X`` and ``W_p`` mapping them to the gate's width. With
    ``W_p = 0`` it is :class:`SpatialGatingUnit` with the same weights. Two token
    matrices (``W`` and the softmax), so no single ``token_matrix``. Not in
    :data:`MIXERS`. Equation ``ch05-amlp``.
    """

    key = "amlp"
    has_token_matrix = False
    complexity = "O(n^2 (d + a) + n d^2)"

    def __init__(self, dim: int, seq_len: int, *, attn_dim: int = 64, hidden: int | None = None,
                 init_std: float = 1e-6, layer_norm_eps: float = 1e-5, causal: bool = False) -> None:
        super().__init__(dim, seq_len, hidden=hidden, init_std=init_std, layer_norm_eps=layer_norm_eps,
                         causal=causal)
        self.attn_dim = checks.positive_int("attn_dim", attn_dim)
        self.qkv = nn.Linear(dim, 3 * attn_dim)
        self.attn_out = nn.Linear(attn_dim, self.hidden)

    def tiny_attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``softmax(Q K^T / sqrt(a) + M) V W_p``: ``(batch, seq, hidden)``."""
        x, mask = self._prepare(x, mask)
        q, k, v = self.qkv(checks.zero_padding(x, mask)).chunk(3, dim=-1)
        logits = (q @ k.transpose(-1, -2) * self.attn_dim**-0.5)[:, None]
        a = _masked_softmax(logits, _allowed(mask, x.shape[1], self.causal, x.device))[:, 0]
        return self.attn_out(a @ v)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = self._prepare(x, mask)
        n = x.shape[1]
        z1, z2 = self._halves(x)
        v = checks.zero_padding(self.norm(z2), mask)
        gate = F.conv1d(v, self._weight(n)[..., None], self.bias[:n]) + self.tiny_attention(x, mask)
        return self.proj_out(z1 * gate)

    def forward_reference(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. ``ch05-amlp`` with the spatial matrix applied as an explicit product."""
        x, mask = self._prepare(x, mask)
        n = x.shape[1]
        z1, z2 = self._halves(x)
        v = checks.zero_padding(self.norm(z2), mask)
        gate = self._weight(n).to(x.dtype) @ v + self.bias[:n, None] + self.tiny_attention(x, mask)
        return self.proj_out(z1 * gate)


#: name -> class; ``TransformerConfig(mixer=name)`` builds ``MIXERS[name](dim, max_len, **mixer_options)``.
MIXERS: dict[str, type[TokenMixer]] = {
    cls.key: cls
    for cls in (
        SelfAttention,
        SynthesizerRandom,
        SynthesizerDense,
        MixerTokenMLP,
        ResMLPTokenMixing,
        SpatialGatingUnit,
        FNetMixing,
        ExternalAttention,
        AFTSimple,
    )
}
