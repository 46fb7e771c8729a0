"""Function-preserving growth of a Transformer: ``widen`` and ``deepen``.

Article: Su Jianlin, "我们可以无损放大一个Transformer模型吗（一）" (2021-06-02),
https://kexue.fm/archives/8444 . Related: Net2Net (arXiv:1511.05641),
bert2BERT (arXiv:2110.07143), HyperCloning / "Scaling Smart" (arXiv:2409.12903).

Every space of activations is grown by an :class:`Expansion`: each group of
``group`` consecutive coordinates is copied ``k`` times in place, copy ``j``
multiplied by ``coeffs[j]``. Su's choice for the hidden state is
``group=1, coeffs=(1/sqrt(k),) * k`` ("repeat each coordinate, divide by
sqrt(k)", an isometry). A linear layer ``y = x W + b`` whose input space grows
by ``A`` and output space by ``B`` becomes ``W~ = A^+ W B``, ``b~ = b B``, with
``A^+`` the right inverse of ``A`` (chapter 06, Eq. ``ch06-linear``). LayerNorm
needs ``eps~ = s^2 eps`` where ``s`` is the scale of its input's copies.

Growth never changes the model it is given: it returns a new model, and every
grown parameter keeps its source's ``requires_grad`` (a parameter the caller
froze stays frozen); the blocks :func:`deepen` inserts are new and trainable.

Methods only; the grow-then-train experiment of the chapter (MLM runs compared
at equal FLOPs) is :mod:`kexue.experiments.ch06_growth`.

See: book chapter 06 (``06_lossless_growth``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from kexue import checks
from kexue.nn import MaskedLM, TransformerEncoder

__all__ = [
    "Expansion",
    "widen",
    "deepen",
    "widen_hf_bert",
    "growth_gains",
    "symmetry_gap",
    "expand_hidden",
    "contract_hidden",
    "perturb",
]

Heads = Literal["size", "count"]
Convention = Literal["isometric", "copy"]
AttentionFix = Literal["weights", "config"]


# ---------------------------------------------------------------------------
# The duplication maps
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Expansion:
    """A linear map ``R^n -> R^{k n}`` that copies groups of coordinates in place.

    The vector is cut into groups of ``group`` consecutive coordinates; group
    ``g`` becomes ``[c_0 g, c_1 g, ..., c_{k-1} g]`` with ``c = coeffs``. So
    ``Expansion((1/sqrt(2),) * 2)`` maps ``[x1, x2]`` to
    ``[x1, x1, x2, x2] / sqrt(2)`` (the article's Eq. (2)); ``group=head_dim``
    copies whole attention heads; ``coeffs=(a, 0)`` with ``group=2`` places each
    RoPE pair at every other pair and leaves zeros between.

    ``gain`` is ``sum(c_j^2)``: the squared norm of the image of a unit vector.
    With ``group=1`` and equal coefficients ``1/sqrt(k)`` it is the map ``A`` of Eq. ``ch06-embed``.
    """

    coeffs: tuple[float, ...]
    group: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.coeffs, tuple) or len(self.coeffs) < 1:
            raise ValueError(f"coeffs must be a non-empty tuple of numbers, got {self.coeffs!r}")
        for c in self.coeffs:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
                raise ValueError(f"coeffs must hold finite real numbers, got {self.coeffs!r}")
        if not any(c != 0 for c in self.coeffs):
            raise ValueError(f"coeffs must not all be zero, got {self.coeffs}")
        checks.positive_int("group", self.group)

    @classmethod
    def repeat(cls, factor: int, scale: float = 1.0, group: int = 1) -> Expansion:
        """``factor`` copies, all multiplied by ``scale``."""
        checks.positive_int("factor", factor)
        return cls((checks.float_in("scale", scale, -math.inf, math.inf),) * factor, group)

    @property
    def factor(self) -> int:
        return len(self.coeffs)

    @property
    def gain(self) -> float:
        return float(sum(c * c for c in self.coeffs))

    @property
    def uniform(self) -> bool:
        """All copies carry the same coefficient (needed by LayerNorm)."""
        return len(set(self.coeffs)) == 1

    def _c(self, t: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.coeffs, dtype=t.dtype, device=t.device)[:, None]  # (k, 1)

    def _split(self, t: torch.Tensor, dim: int, grown: bool) -> tuple[torch.Tensor, int]:
        t = t.movedim(dim, -1)
        n = t.shape[-1]
        width = self.group * (self.factor if grown else 1)
        if n % width:
            raise ValueError(f"size {n} along dim {dim} is not a multiple of {width} (group x copies)")
        return t, n

    def _apply(self, t: torch.Tensor, dim: int, coeffs: torch.Tensor) -> torch.Tensor:
        t, n = self._split(t, dim, grown=False)
        blocks = t.unflatten(-1, (n // self.group, 1, self.group)) * coeffs  # (..., n/g, k, g)
        return blocks.flatten(-3).movedim(-1, dim)

    def expand(self, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``x -> x A``: grow ``dim`` from ``n`` to ``k n``."""
        return self._apply(t, dim, self._c(t))

    def expand_dual(self, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``W -> A^+ W`` on a weight's *input* axis: copy ``j`` gets ``c_j / gain``.

        ``A^+ = A^T / gain`` is the right inverse, ``A A^+ = I``, so a grown
        layer applied to ``x A`` gives back ``x W``.
        """
        return self._apply(t, dim, self._c(t) / self.gain)

    def contract(self, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Left inverse of :meth:`expand`: ``sum_j c_j x~_j / gain`` (``k n -> n``)."""
        t, n = self._split(t, dim, grown=True)
        blocks = t.unflatten(-1, (n // (self.group * self.factor), self.factor, self.group))
        return ((blocks * self._c(t)).sum(-2) / self.gain).flatten(-2).movedim(-1, dim)

    def contract_dual(self, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Left inverse of :meth:`expand_dual`: ``sum_j c_j W~_j``."""
        t, n = self._split(t, dim, grown=True)
        blocks = t.unflatten(-1, (n // (self.group * self.factor), self.factor, self.group))
        return (blocks * self._c(t)).sum(-2).flatten(-2).movedim(-1, dim)

    def null_noise(self, like: torch.Tensor, dim: int, generator: torch.Generator | None) -> torch.Tensor:
        """Gaussian noise on the grown ``dim`` of ``like`` with ``sum_j c_j N_j = 0``.

        Such noise on a weight's input axis is invisible to inputs of the form
        ``x A`` (for ``k = 2`` it is HyperCloning's ``+N / -N`` pair). Unit
        variance per entry.
        """
        z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device="cpu").to(like.device)
        t, n = self._split(z, dim, grown=True)
        blocks = t.unflatten(-1, (n // (self.group * self.factor), self.factor, self.group))
        c = self._c(t)
        proj = blocks - c * (blocks * c).sum(-2, keepdim=True) / self.gain
        # rescale so each entry has unit variance again (the projection removes one of k directions)
        proj = proj * math.sqrt(self.factor / max(self.factor - 1, 1))
        return proj.flatten(-3).movedim(-1, dim)

    def zero_mask(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """Boolean mask over ``k n`` grown coordinates: ``True`` where the coefficient is 0."""
        ones = torch.ones(n, device=device)
        return self.expand(ones) == 0


IDENTITY = Expansion((1.0,))


@dataclass(frozen=True)
class _Role:
    """How one parameter grows: ``kind`` and the maps on its input/output axes."""

    kind: Literal["linear_weight", "vector", "embedding", "same"]
    out_map: Expansion = IDENTITY
    in_map: Expansion = IDENTITY
    dead_row_noise: bool = False  # q rows whose partner key rows are zero may take any value

    @property
    def gain(self) -> float:
        """``||T e||^2`` for a unit entry ``e`` of the small parameter (the SGD rescaling)."""
        if self.kind == "linear_weight":
            return self.out_map.gain / self.in_map.gain
        if self.kind == "same":
            return 1.0
        return self.out_map.gain

    def grow(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear_weight":  # nn.Linear stores (out, in)
            return self.out_map.expand(self.in_map.expand_dual(t, 1), 0)
        if self.kind == "embedding":  # (num, dim)
            return self.out_map.expand(t, 1)
        if self.kind == "vector":
            return self.out_map.expand(t, 0)
        return t.clone()

    def project(self, t: torch.Tensor) -> torch.Tensor:
        """The grown tensor's component inside the image of :meth:`grow`."""
        if self.kind == "linear_weight":
            small = self.out_map.contract(self.in_map.contract_dual(t, 1), 0)
        elif self.kind == "embedding":
            small = self.out_map.contract(t, 1)
        elif self.kind == "vector":
            small = self.out_map.contract(t, 0)
        else:
            return t
        return self.grow(small)


@dataclass
class _Plan:
    roles: dict[str, _Role]
    layer_norms: dict[str, tuple[Expansion, float]]  # module name -> (input map, small eps)
    hidden: Expansion
    new_config: Any


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_factor(factor: Any) -> int:
    return checks.int_at_least("factor", factor, 2)


def _check_noise(noise: Any) -> float:
    return checks.float_in("noise", noise, 0.0, math.inf)


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _check_hidden(h: Any) -> torch.Tensor:
    checks.floating_tensor("h", h)
    if h.dim() < 1:
        raise ValueError("h must have a feature dimension, got a 0-d tensor")
    return h


def _check_options(factor: Any, heads: str, convention: str, attention_fix: str = "weights") -> int:
    """Validate the options shared by :func:`widen`, :func:`growth_gains` and :func:`symmetry_gap`."""
    factor = _check_factor(factor)
    checks.choice("heads", heads, ("size", "count"))
    checks.choice("convention", convention, ("isometric", "copy"))
    checks.choice("attention_fix", attention_fix, ("weights", "config"))
    return factor


def _encoder_of(model: nn.Module) -> tuple[TransformerEncoder, str]:
    if isinstance(model, MaskedLM):
        return model.encoder, "encoder."
    if isinstance(model, TransformerEncoder):
        return model, ""
    raise ValueError(
        f"model must be a kexue.nn.TransformerEncoder or kexue.nn.MaskedLM, got {type(model).__name__}"
    )


def _hidden_scale(factor: int, convention: str) -> float:
    return 1.0 / math.sqrt(factor) if convention == "isometric" else 1.0


# ---------------------------------------------------------------------------
# Planning: which map acts on which parameter
# ---------------------------------------------------------------------------


def _attention_maps(
    factor: int,
    heads: str,
    head_dim: int,
    hidden_scale: float,
    rotary: bool,
    score_ratio: float,
) -> tuple[Expansion, Expansion, bool]:
    """Maps for the query/key space and the value space.

    ``score_ratio`` is what ``q~ . k~`` must be relative to ``q . k`` so that the
    grown attention's scale undoes it (sqrt(k) when the scale becomes
    ``1/sqrt(k d_h)``, 1 when it is kept).
    """
    if heads == "count":  # copy whole heads: head h of the big model = head h // k of the small one
        qk = Expansion.repeat(factor, math.sqrt(score_ratio), group=head_dim)
        v = Expansion.repeat(factor, hidden_scale, group=head_dim)
        return qk, v, False
    v = Expansion.repeat(factor, hidden_scale, group=1)
    if rotary:  # pair i of a head goes to pair k*i of the grown head, whose default frequency equals theta_i
        qk = Expansion((math.sqrt(score_ratio),) + (0.0,) * (factor - 1), group=2)
        return qk, v, True
    # Su's interleaved repetition: q~ . k~ = k a^2 q . k
    return Expansion.repeat(factor, math.sqrt(score_ratio / factor), group=1), v, False


def _plan_kexue(
    model: nn.Module, factor: int, heads: str, convention: str, attention_fix: str
) -> _Plan:
    encoder, prefix = _encoder_of(model)
    cfg = encoder.config
    if cfg.mixer != "attention":
        raise ValueError(f"widen supports mixer='attention' only, got mixer={cfg.mixer!r}")
    if cfg.position == "rotary2d" and heads == "size":
        raise ValueError("position='rotary2d' can be widened exactly only with heads='count'")
    k = factor
    s_h = _hidden_scale(k, convention)
    hidden = Expansion.repeat(k, s_h)
    homogeneous = cfg.activation == "relu"
    # GELU is not positively homogeneous: its input must be a plain copy (Eqs. (9)-(11))
    ffn = Expansion.repeat(k, s_h if homogeneous else 1.0)
    new_scale = cfg.attention_scale
    if heads == "count" or cfg.attention_scale is not None:
        ratio = 1.0
    elif attention_fix == "config":
        ratio, new_scale = 1.0, 1.0 / math.sqrt(cfg.head_dim)
    else:
        ratio = math.sqrt(k)
    qk, v, dead = _attention_maps(k, heads, cfg.head_dim, s_h, cfg.position == "rotary", ratio)
    new_cfg = replace(
        cfg,
        dim=cfg.dim * k,
        ffn_dim=cfg.ffn_dim * k,
        heads=cfg.heads * k if heads == "count" else cfg.heads,
        layer_norm_eps=cfg.layer_norm_eps * s_h**2,
        attention_scale=new_scale,
        mixer_options=copy.deepcopy(cfg.mixer_options),
    )
    roles: dict[str, _Role] = {}
    norms: dict[str, tuple[Expansion, float]] = {}

    def ln(name: str, module: nn.Module, in_map: Expansion, out_map: Expansion) -> None:
        if isinstance(module, nn.LayerNorm):
            roles[f"{name}.weight"] = _Role("vector", out_map)
            roles[f"{name}.bias"] = _Role("vector", out_map)
            norms[name] = (in_map, module.eps)

    def linear(name: str, in_map: Expansion, out_map: Expansion, dead_rows: bool = False) -> None:
        roles[f"{name}.weight"] = _Role("linear_weight", out_map, in_map, dead_rows)
        roles[f"{name}.bias"] = _Role("vector", out_map)

    p = prefix
    roles[f"{p}token_embedding.weight"] = _Role("embedding", hidden)
    if encoder.position_embedding is not None:
        roles[f"{p}position_embedding.weight"] = _Role("embedding", hidden)
    ln(f"{p}embedding_norm", encoder.embedding_norm, hidden, hidden)
    for i, block in enumerate(encoder.blocks):
        b = f"{p}blocks.{i}"
        linear(f"{b}.attention.query", hidden, qk, dead_rows=dead)
        linear(f"{b}.attention.key", hidden, qk)
        linear(f"{b}.attention.value", hidden, v)
        linear(f"{b}.attention.output", v, hidden)
        ln(f"{b}.attention_norm", block.attention_norm, hidden, hidden)
        linear(f"{b}.ffn.up", hidden, ffn)
        linear(f"{b}.ffn.down", ffn, hidden)
        ln(f"{b}.ffn_norm", block.ffn_norm, hidden, hidden)
    ln(f"{p}final_norm", encoder.final_norm, hidden, hidden)
    if isinstance(model, MaskedLM):
        head_in = Expansion.repeat(k, 1.0)  # GELU before the head's LayerNorm: plain copies
        # tied decoder: logits = y~ . E~ must equal y . e, with E~ rows scaled by s_h
        head_out = Expansion.repeat(k, 1.0 / (k * s_h))
        linear("mlm_transform", hidden, head_in)
        ln("mlm_norm", model.mlm_norm, head_in, head_out)
        roles["mlm_bias"] = _Role("same")
    return _Plan(roles, norms, hidden, new_cfg)


# ---------------------------------------------------------------------------
# Building the grown model
# ---------------------------------------------------------------------------


def _param_like(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def _build(cls_factory: Callable[[], nn.Module], like: torch.Tensor) -> nn.Module:
    """Construct a model without touching the global RNG, on ``like``'s device and dtype."""
    with torch.random.fork_rng(devices=[]):
        new = cls_factory()
    return new.to(device=like.device, dtype=like.dtype)


def _fill(
    new: nn.Module,
    old: nn.Module,
    plan: _Plan,
    noise: float,
    generator: torch.Generator | None,
) -> None:
    old_params = dict(old.named_parameters())
    new_params = dict(new.named_parameters())
    if set(old_params) != set(plan.roles) or set(new_params) != set(plan.roles):
        missing = set(old_params) ^ set(plan.roles)
        raise ValueError(f"model has parameters this growth plan does not know: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, role in plan.roles.items():
            grown = role.grow(old_params[name].detach())
            if noise > 0 and role.kind == "linear_weight":
                rms = grown.pow(2).mean().sqrt()
                grown = grown + noise * rms * role.in_map.null_noise(grown, 1, generator)
                if role.dead_row_noise:
                    dead = role.out_map.zero_mask(old_params[name].shape[0], grown.device)
                    z = torch.randn(grown.shape, generator=generator, dtype=grown.dtype).to(grown.device)
                    grown = grown + noise * rms * z * dead[:, None]
            target = new_params[name]
            if target.shape != grown.shape:
                raise RuntimeError(f"{name}: grown shape {tuple(grown.shape)} != {tuple(target.shape)}")
            target.copy_(grown)
            target.requires_grad_(old_params[name].requires_grad)  # a frozen source stays frozen
    modules = dict(new.named_modules())
    for name, (in_map, eps) in plan.layer_norms.items():
        if not in_map.uniform:
            raise ValueError(f"LayerNorm {name} needs an input map with equal coefficients")
        # mean and variance of the copies: mu s, sigma^2 s^2, so eps must scale by s^2
        modules[name].eps = eps * in_map.coeffs[0] ** 2


def _widen_impl(
    model: nn.Module,
    factor: int,
    heads: str,
    convention: str,
    attention_fix: str,
    noise: float,
    generator: torch.Generator | None,
) -> tuple[nn.Module, _Plan]:
    _encoder_of(model)
    factor = _check_options(factor, heads, convention, attention_fix)
    noise = _check_noise(noise)
    _check_generator(generator)
    plan = _plan_kexue(model, factor, heads, convention, attention_fix)
    cls = type(model)
    new = _build(lambda: cls(plan.new_config), _param_like(model))
    _fill(new, model, plan, noise, generator)
    new.train(model.training)
    return new, plan


def widen(
    model: TransformerEncoder | MaskedLM,
    factor: int = 2,
    *,
    heads: Heads = "size",
    convention: Convention = "isometric",
    attention_fix: AttentionFix = "weights",
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> TransformerEncoder | MaskedLM:
    """Grow hidden size, FFN width and the heads by an integer ``factor``, keeping the function.

    Args:
        model: a ``kexue.nn.TransformerEncoder`` or ``MaskedLM`` (attention mixer; any norm,
            learned / rotary / no positions; rotary2d only with ``heads="count"``).
        factor: integer ``k >= 2``.
        heads: ``"size"`` keeps the head count and makes each head ``k`` times larger (the
            article's choice); ``"count"`` keeps the head size and makes ``k`` copies of each head.
        convention: ``"isometric"`` (the article: hidden states repeated and divided by
            ``sqrt(k)``, LayerNorm eps divided by ``k``) or ``"copy"`` (HyperCloning/Net2Net:
            hidden states copied exactly, eps unchanged).
        attention_fix: with ``heads="size"`` and the default ``1/sqrt(head_dim)`` scale, either
            multiply query and key weights by ``k^(1/4)`` (``"weights"``, the article's fix) or
            keep them isometric and set ``attention_scale = 1/sqrt(old head_dim)`` in the new
            config (``"config"``).
        noise: standard deviation, relative to each grown weight's RMS, of a perturbation added
            in the null space of the input duplication (``+N/-N`` pairs for ``k = 2``). The
            function is unchanged; the copies stop being symmetric.
        generator: source of randomness for ``noise``.

    Returns:
        A new model of the same class on the same device and dtype, in the same train/eval
        mode, each parameter with its source's ``requires_grad``; ``model`` itself is not
        modified. ``MaskedLM`` logits are unchanged. Encoder hidden states (every layer) become
        :func:`expand_hidden` of the small ones. Under the isometric convention the MLM head's
        LayerNorm keeps the small eps (its input is a plain copy), so ``mlm_norm.eps`` differs
        from ``config.layer_norm_eps``.

    Raises:
        ValueError: invalid ``factor``/options/``noise`` or an unsupported model.
        TypeError: ``generator`` is not a ``torch.Generator``.

    Implements Eqs. ``ch06-linear``, ``ch06-ln-eps``, ``ch06-ffn``, ``ch06-attn-scale`` and ``ch06-rope``.
    """
    return _widen_impl(model, factor, heads, convention, attention_fix, noise, generator)[0]


def growth_gains(
    model: TransformerEncoder | MaskedLM,
    factor: int = 2,
    *,
    heads: Heads = "size",
    convention: Convention = "isometric",
    attention_fix: AttentionFix = "weights",
) -> dict[str, float]:
    """``||T e||^2`` for each parameter of the *small* model under :func:`widen`.

    The grown parameter is ``T theta``; each small entry appears ``m`` times with
    coefficient ``c``, so the gain is ``m c^2``. SGD with learning rate ``eta`` on
    the grown model (no noise, no dropout) equals SGD on the small model with
    learning rate ``eta / gain`` for that tensor (Eq. ``ch06-sgd``).
    """
    _encoder_of(model)
    _check_options(factor, heads, convention, attention_fix)
    plan = _plan_kexue(model, factor, heads, convention, attention_fix)
    return {name: role.gain for name, role in plan.roles.items()}


def _small_twin(grown: nn.Module, factor: int, heads: str) -> nn.Module:
    """A small model (random weights) whose ``widen`` has ``grown``'s shapes."""
    encoder, _ = _encoder_of(grown)
    cfg = encoder.config
    if cfg.dim % factor or cfg.ffn_dim % factor or (heads == "count" and cfg.heads % factor):
        raise ValueError(f"model's sizes are not divisible by factor={factor}")
    small = replace(
        cfg,
        dim=cfg.dim // factor,
        ffn_dim=cfg.ffn_dim // factor,
        heads=cfg.heads // factor if heads == "count" else cfg.heads,
        mixer_options=copy.deepcopy(cfg.mixer_options),
    )
    with torch.random.fork_rng(devices=[]):
        return type(grown)(small)


def symmetry_gap(
    grown: TransformerEncoder | MaskedLM,
    factor: int = 2,
    *,
    heads: Heads = "size",
    convention: Convention = "isometric",
    attention_fix: AttentionFix = "weights",
) -> float:
    """Relative distance of ``grown``'s parameters from the image of :func:`widen`.

    ``sqrt(sum ||theta~ - P theta~||^2 / sum ||theta~||^2)`` with ``P`` the
    projection onto grown-from-some-small-model parameters. Zero right after a
    noiseless :func:`widen`; it stays zero under SGD/Adam without noise or dropout.
    """
    _check_options(factor, heads, convention, attention_fix)
    twin = _small_twin(grown, factor, heads)
    plan = _plan_kexue(twin, factor, heads, convention, attention_fix)
    num = torch.zeros((), dtype=torch.float64)
    den = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for name, p in grown.named_parameters():
            role = plan.roles[name]
            num += (p - role.project(p)).double().pow(2).sum().cpu()
            den += p.double().pow(2).sum().cpu()
    return float((num / den).sqrt())


def expand_hidden(h: torch.Tensor, factor: int = 2, convention: Convention = "isometric") -> torch.Tensor:
    """The documented duplication map for encoder hidden states, ``(..., d) -> (..., k d)``.

    Interleaved repetition ``[h1, h1, h2, h2, ...]`` times ``1/sqrt(k)``
    (isometric) or ``1`` (copy): Eq. ``ch06-embed``.
    """
    _check_hidden(h)
    _check_factor(factor)
    checks.choice("convention", convention, ("isometric", "copy"))
    return Expansion.repeat(factor, _hidden_scale(factor, convention)).expand(h, -1)


def contract_hidden(h: torch.Tensor, factor: int = 2, convention: Convention = "isometric") -> torch.Tensor:
    """Left inverse of :func:`expand_hidden`, ``(..., k d) -> (..., d)``."""
    _check_hidden(h)
    _check_factor(factor)
    checks.choice("convention", convention, ("isometric", "copy"))
    if h.shape[-1] % factor:
        raise ValueError(f"h's last dimension ({h.shape[-1]}) must be a multiple of factor={factor}")
    return Expansion.repeat(factor, _hidden_scale(factor, convention)).contract(h, -1)


def perturb(model: nn.Module, noise: float, generator: torch.Generator | None = None) -> nn.Module:
    """Net2Net-style symmetry breaking: add i.i.d. noise to every weight matrix (in place).

    Each ``nn.Linear`` weight gets ``noise * rms(W) * N(0, 1)``. Unlike ``widen(noise=...)``
    this changes the function a little. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    noise = _check_noise(noise)
    _check_generator(generator)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                w = module.weight
                z = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
                w.add_(noise * w.pow(2).mean().sqrt() * z)
    return model


# ---------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------


def _init_identity_block(block: nn.Module, generator: torch.Generator | None, std: float = 0.02) -> None:
    """BERT initialisation for the inside of a block, zeros for both output projections."""
    with torch.no_grad():
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                if name in ("attention.output", "ffn.down"):
                    module.weight.zero_()
                else:
                    w = torch.randn(module.weight.shape, generator=generator, dtype=module.weight.dtype)
                    module.weight.copy_(std * w)
                module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def _insertion_points(depth: int, factor: int | None, positions: Sequence[int] | None) -> list[int]:
    if factor is not None and positions is not None:
        raise ValueError("pass either factor or positions to deepen, not both")
    if positions is None:
        factor = _check_factor(2 if factor is None else factor)
        return [i + 1 for i in range(depth) for _ in range(factor - 1)]
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Sequence):
        raise TypeError(f"positions must be a sequence of ints, got {type(positions).__name__} {positions!r}")
    points = list(positions)
    if not points:
        raise ValueError("positions must name at least one insertion point")
    for p in points:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= depth:
            raise ValueError(f"positions must be ints in [0, depth={depth}], got {p!r}")
    return sorted(points)


def deepen(
    model: TransformerEncoder | MaskedLM,
    factor: int | None = None,
    *,
    positions: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> TransformerEncoder | MaskedLM:
    """Insert blocks whose residual branches start at zero.

    Args:
        model: ``TransformerEncoder`` or ``MaskedLM`` with the attention mixer.
        factor: integer ``k >= 2``: ``k - 1`` new blocks after every block (default 2).
        positions: instead of ``factor``, the insertion points: ``p`` puts a new block
            before original block ``p`` (``p = depth`` appends). Repeats allowed.
        generator: for the new blocks' inner weights (``N(0, 0.02)``).

    Pre-LN (``x + f(LN(x))``): a block with zero output projections is the identity,
    exactly. Post-LN (``LN(x + f(x))``): a zero branch leaves ``LN(x)``, which is not
    ``x``. We move the preceding LayerNorm's affine ``(gamma, beta)`` into the new
    block's second LayerNorm and reset the preceding one to ``(1, 0)``: the new block
    then normalises an already normalised vector, exact when ``layer_norm_eps = 0``
    and off by a relative ``O(eps / var)`` otherwise (1e-12 for BERT's eps). The
    hidden state *between* the two changes.

    Returns a new model; ``model`` is not modified. Every copied parameter keeps its
    source's ``requires_grad``; the new blocks are trainable (``requires_grad=True``)
    whatever the flags of ``model``, since a frozen block that starts as the identity
    would stay the identity. Freeze them explicitly if that is what you want.
    """
    encoder, prefix = _encoder_of(model)
    _check_generator(generator)
    cfg = encoder.config
    if cfg.mixer != "attention":
        raise ValueError(f"deepen supports mixer='attention' only, got mixer={cfg.mixer!r}")
    points = _insertion_points(cfg.depth, factor, positions)
    new_cfg = replace(cfg, depth=cfg.depth + len(points), mixer_options=copy.deepcopy(cfg.mixer_options))
    new = _build(lambda: type(model)(new_cfg), _param_like(model))
    new_encoder, _ = _encoder_of(new)
    # order: for each original index i, the new blocks inserted before it, then block i
    layout: list[int | None] = []
    for i in range(cfg.depth + 1):
        layout.extend([None] * points.count(i))
        if i < cfg.depth:
            layout.append(i)
    old_state = model.state_dict()
    new_state = {}
    block_prefix = f"{prefix}blocks."
    for name, t in old_state.items():
        if not name.startswith(block_prefix):
            new_state[name] = t
    for j, src in enumerate(layout):
        if src is None:
            continue
        for name, t in encoder.blocks[src].state_dict().items():
            new_state[f"{block_prefix}{j}.{name}"] = t
    fresh = {f"{block_prefix}{j}." for j, src in enumerate(layout) if src is None}
    new_names = set(new.state_dict())
    missing = {n for n in new_names - set(new_state) if not any(n.startswith(f) for f in fresh)}
    if missing:
        raise ValueError(f"deepen does not know how to fill {sorted(missing)[:5]}")
    new.load_state_dict(new_state, strict=False)
    for j, src in enumerate(layout):
        if src is None:
            _init_identity_block(new_encoder.blocks[j], generator)
            new_encoder.blocks[j].attention_norm.eps = cfg.layer_norm_eps
            new_encoder.blocks[j].ffn_norm.eps = cfg.layer_norm_eps
    # keep any per-module eps of the original blocks
    for j, src in enumerate(layout):
        if src is not None:
            new_encoder.blocks[j].attention_norm.eps = encoder.blocks[src].attention_norm.eps
            new_encoder.blocks[j].ffn_norm.eps = encoder.blocks[src].ffn_norm.eps
    if isinstance(model, MaskedLM):
        new.mlm_norm.eps = model.mlm_norm.eps
    # requires_grad: a copied parameter keeps its source's flag, a new block's parameters are trainable
    old_params = dict(model.named_parameters())
    for j, src in enumerate(layout):
        for name, p in new_encoder.blocks[j].named_parameters():
            p.requires_grad_(True if src is None else encoder.blocks[src].get_parameter(name).requires_grad)
    for name, p in new.named_parameters():
        if not name.startswith(block_prefix):
            p.requires_grad_(old_params[name].requires_grad)
    if cfg.norm == "post":
        with torch.no_grad():
            for j, src in enumerate(layout):
                if src is not None:
                    continue
                before = new_encoder.embedding_norm if j == 0 else new_encoder.blocks[j - 1].ffn_norm
                target = new_encoder.blocks[j].ffn_norm
                target.weight.copy_(before.weight)
                target.bias.copy_(before.bias)
                before.weight.fill_(1.0)
                before.bias.zero_()
    new.train(model.training)
    return new


# ---------------------------------------------------------------------------
# Hugging Face BERT
# ---------------------------------------------------------------------------


def widen_hf_bert(
    model: nn.Module,
    factor: int = 2,
    *,
    heads: Heads = "size",
    convention: Convention = "isometric",
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """:func:`widen` for a Hugging Face ``transformers.BertModel`` (e.g. MiniLM).

    Same maps as for ``kexue.nn`` (post-LN, GELU, absolute positions and token
    types; the ``1/sqrt(head_dim)`` scale is fixed inside BERT, so ``heads="size"``
    multiplies query/key weights by ``k^(1/4)``). The pooler's ``tanh`` gets a
    plain copy, so ``pooler_output`` becomes ``[p1, p1, p2, p2, ...]``;
    ``last_hidden_state`` becomes :func:`expand_hidden` of the small one, and
    mean-pooled, L2-normalised sentence embeddings become ``expand_hidden(e, k)``
    under either convention.
    """
    try:
        from transformers import BertModel
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ValueError("widen_hf_bert needs the transformers package") from err
    if not isinstance(model, BertModel):
        raise ValueError(f"model must be a transformers.BertModel, got {type(model).__name__}")
    factor = _check_options(factor, heads, convention)
    noise = _check_noise(noise)
    _check_generator(generator)
    cfg = model.config
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("widen_hf_bert supports position_embedding_type='absolute' only")
    if cfg.hidden_act != "gelu" and cfg.hidden_act != "relu":
        raise ValueError(f"widen_hf_bert supports hidden_act 'gelu' or 'relu', got {cfg.hidden_act!r}")
    if getattr(cfg, "is_decoder", False):
        raise ValueError("widen_hf_bert supports encoder BertModels only")
    k = factor
    s_h = _hidden_scale(k, convention)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    hidden = Expansion.repeat(k, s_h)
    ffn = Expansion.repeat(k, s_h if cfg.hidden_act == "relu" else 1.0)
    ratio = 1.0 if heads == "count" else math.sqrt(k)
    qk, v, _ = _attention_maps(k, heads, head_dim, s_h, False, ratio)
    roles: dict[str, _Role] = {}
    norms: dict[str, tuple[Expansion, float]] = {}

    def linear(name: str, in_map: Expansion, out_map: Expansion) -> None:
        roles[f"{name}.weight"] = _Role("linear_weight", out_map, in_map)
        roles[f"{name}.bias"] = _Role("vector", out_map)

    def ln(name: str) -> None:
        roles[f"{name}.weight"] = _Role("vector", hidden)
        roles[f"{name}.bias"] = _Role("vector", hidden)
        norms[name] = (hidden, cfg.layer_norm_eps)

    for emb in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        roles[f"embeddings.{emb}.weight"] = _Role("embedding", hidden)
    ln("embeddings.LayerNorm")
    for i in range(cfg.num_hidden_layers):
        b = f"encoder.layer.{i}"
        linear(f"{b}.attention.self.query", hidden, qk)
        linear(f"{b}.attention.self.key", hidden, qk)
        linear(f"{b}.attention.self.value", hidden, v)
        linear(f"{b}.attention.output.dense", v, hidden)
        ln(f"{b}.attention.output.LayerNorm")
        linear(f"{b}.intermediate.dense", hidden, ffn)
        linear(f"{b}.output.dense", ffn, hidden)
        ln(f"{b}.output.LayerNorm")
    if model.pooler is not None:
        linear("pooler.dense", hidden, Expansion.repeat(k, 1.0))
    new_cfg = copy.deepcopy(cfg)
    new_cfg.hidden_size = cfg.hidden_size * k
    new_cfg.intermediate_size = cfg.intermediate_size * k
    new_cfg.num_attention_heads = cfg.num_attention_heads * (k if heads == "count" else 1)
    new_cfg.layer_norm_eps = cfg.layer_norm_eps * s_h**2
    plan = _Plan(roles, norms, hidden, new_cfg)
    new = _build(lambda: type(model)(new_cfg, add_pooling_layer=model.pooler is not None), _param_like(model))
    _fill(new, model, plan, noise, generator)
    new.train(model.training)
    return new
