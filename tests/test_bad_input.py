"""Bad input against the public API: a clear error naming the argument, or a finite, correct result.

Every case is a row ``Case(id, call, expect)`` of a table:

* ``call`` is a zero-argument callable making the call under test; it builds its
  own inputs (and modules), so no case can change another;
* ``expect`` is either ``raises(ErrorType, "pattern")``: the call must raise that
  ``TypeError``/``ValueError`` and the message must match ``pattern`` (a regular
  expression naming the argument, searched with ``re.search``); or
  ``returns(check)``: the call must return, every tensor and float in the result
  must be finite, and ``check(result)`` must hold, so that a finite but wrong
  answer fails too.

Each module has one table, a function ``<module>_cases() -> list[Case]``, and
``TABLES`` lists them; :func:`run_case` runs one case (importable by other tables). To cover another module (vmf, globalpointer, simcse,
accumulation, growth), write ``def vmf_cases() -> list[Case]`` in the same style
and add it to ``TABLES``; the per-case test, the count and the floor do the rest.
The categories each table covers: wrong types (lists instead of tensors), wrong
dtypes, wrong shapes, empty batches, NaN/inf, extreme parameters, invalid strings.

The suite counts the cases it runs and its last test prints the count and
checks it against ``FLOOR``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from kexue import checks, losses, metrics, mixers, rope, spans
from kexue.mixers import MIXERS
from kexue.nn import (
    MaskedLM,
    MultiHeadSelfAttention,
    TransformerConfig,
    TransformerEncoder,
    count_parameters,
    patchify,
)

NAN, INF = float("nan"), float("inf")


# --------------------------------------------------------------------------- the table format


@dataclass(frozen=True)
class Raises:
    error: type[Exception] | tuple[type[Exception], ...]
    pattern: str


@dataclass(frozen=True)
class Returns:
    check: Callable[[Any], bool]


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[], Any]
    expect: Raises | Returns


def raises(error: type[Exception] | tuple[type[Exception], ...], pattern: str) -> Raises:
    """The call must raise ``error`` (``TypeError``/``ValueError``) with a message matching ``pattern``."""
    return Raises(error, pattern)


def returns(check: Callable[[Any], bool] = lambda out: True) -> Returns:
    """The call must return a finite result for which ``check(result)`` holds."""
    return Returns(check)


def _non_finite(value: Any) -> list[str]:
    """Paths of the non-finite tensors and floats inside ``value`` (tensors, containers, dataclasses)."""
    if isinstance(value, torch.Tensor):
        ok = value.dtype == torch.bool or not (value.is_floating_point() or value.is_complex())
        return [] if ok or bool(torch.isfinite(value).all()) else ["tensor"]
    if isinstance(value, float):
        return [] if math.isfinite(value) else [repr(value)]
    if isinstance(value, dict):
        return [f"[{k!r}]{p}" for k, v in value.items() for p in _non_finite(v)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [f"[{i}]{p}" for i, v in enumerate(value) for p in _non_finite(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [f".{f.name}{p}" for f in dataclasses.fields(value) for p in _non_finite(getattr(value, f.name))]
    return []


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))


# --------------------------------------------------------------------------- kexue.checks


def checks_cases() -> list[Case]:
    mask = torch.tensor([[True, True, False], [True, False, False]])
    cases = [
        Case("positive_int-zero", lambda: checks.positive_int("n", 0), raises(ValueError, "n must")),
        Case("positive_int-float", lambda: checks.positive_int("n", 1.5), raises(ValueError, "n must")),
        Case("positive_int-bool", lambda: checks.positive_int("n", True), raises(ValueError, "n must")),
        Case("positive_int-str", lambda: checks.positive_int("n", "3"), raises(ValueError, "n must")),
        Case("positive_float-nan", lambda: checks.positive_float("t", NAN), raises(ValueError, "t must")),
        Case("positive_float-inf", lambda: checks.positive_float("t", INF), raises(ValueError, "t must")),
        Case("positive_float-str", lambda: checks.positive_float("t", "1"), raises(TypeError, "t must")),
        Case("float_in-nan", lambda: checks.float_in("p", NAN, 0.0, 1.0), raises(ValueError, "p must")),
        Case("choice-bad-string", lambda: checks.choice("mode", "x", ("a", "b")), raises(ValueError, "mode")),
        Case("boolean-string", lambda: checks.boolean("flag", "no"), raises(TypeError, "flag must be a bool")),
        Case("finite-nan", lambda: checks.finite("x", torch.tensor([0.0, NAN])),
             raises(ValueError, "x must be finite")),
        Case("finite-int", lambda: checks.finite("x", torch.tensor([1, 2])), returns()),
        Case("finite-list", lambda: checks.finite("x", [1.0]), raises(TypeError, "x must be a torch.Tensor")),
        Case("positive_scalar-zero-tensor", lambda: checks.positive_scalar("tau", torch.tensor(0.0)),
             raises(ValueError, "tau")),
        Case("positive_scalar-negative-tensor", lambda: checks.positive_scalar("tau", torch.tensor(-0.1)),
             raises(ValueError, "tau")),
        Case("positive_scalar-nan-tensor", lambda: checks.positive_scalar("tau", torch.tensor(NAN)),
             raises(ValueError, "tau")),
        Case("positive_scalar-vector", lambda: checks.positive_scalar("tau", torch.ones(2)),
             raises(ValueError, "tau")),
        Case("positive_scalar-int-tensor", lambda: checks.positive_scalar("tau", torch.tensor(1)),
             raises(ValueError, "tau")),
        Case("positive_scalar-learnable",
             lambda: checks.positive_scalar("tau", torch.tensor([0.1], requires_grad=True)),
             returns(lambda t: t.shape == () and t.requires_grad)),
        Case("token_ids-float", lambda: checks.token_ids("ids", torch.zeros(2, 3), 5), raises(ValueError, "ids")),
        Case("token_ids-bool", lambda: checks.token_ids("ids", torch.zeros(2, 3, dtype=torch.bool), 5),
             raises(ValueError, "ids")),
        Case("token_ids-too-large", lambda: checks.token_ids("ids", torch.tensor([[0, 5]]), 5),
             raises(ValueError, r"ids must hold token ids in \[0, vocab_size=5\)")),
        Case("token_ids-negative", lambda: checks.token_ids("ids", torch.tensor([[-1, 2]]), 5),
             raises(ValueError, "vocab_size")),
        Case("token_ids-wrong-dim", lambda: checks.token_ids("ids", torch.tensor([1, 2]), 5, dim=2),
             raises(ValueError, "ids must have 2 dimensions")),
        Case("token_ids-empty", lambda: checks.token_ids("ids", torch.zeros(0, 3, dtype=torch.long), 5),
             returns(lambda t: t.shape == (0, 3))),
        Case("token_mask-none", lambda: checks.token_mask("mask", None, 2, 3), returns(lambda m: m is None)),
        Case("token_mask-bool", lambda: checks.token_mask("mask", mask, 2, 3), returns(lambda m: torch.equal(m, mask))),
        Case("token_mask-int64", lambda: checks.token_mask("mask", mask.long(), 2, 3),
             returns(lambda m: m.dtype == torch.bool and torch.equal(m, mask))),
        Case("token_mask-uint8", lambda: checks.token_mask("mask", mask.to(torch.uint8), 2, 3),
             returns(lambda m: torch.equal(m, mask))),
        Case("token_mask-list", lambda: checks.token_mask("mask", mask.tolist(), 2, 3),
             raises(TypeError, "mask must be a torch.Tensor")),
        Case("token_mask-shape", lambda: checks.token_mask("mask", mask, 2, 4),
             raises(ValueError, r"mask must have shape \(batch, seq\)=\(2, 4\)")),
        Case("token_mask-hf-extended-4d", lambda: checks.token_mask("mask", mask[:, None, None, :], 2, 3),
             raises(ValueError, "mask must have shape")),
        Case("token_mask-additive-1e4", lambda: checks.token_mask("mask", (~mask).float() * -1e4, 2, 3),
             raises(TypeError, r"additive attention mask.*`mask == 0`")),
        Case("token_mask-additive-inf",
             lambda: checks.token_mask("mask", torch.zeros(2, 3).masked_fill(~mask, -INF), 2, 3),
             raises(TypeError, r"additive.*`mask == 0`")),
        Case("token_mask-additive-no-padding",
             lambda: checks.token_mask("mask", torch.zeros(2, 3), 2, 3), raises(TypeError, r"`mask == 0`")),
        Case("token_mask-additive-int", lambda: checks.token_mask("mask", (~mask).long() * -10000, 2, 3),
             raises(ValueError, r"additive.*`mask == 0`")),
        Case("token_mask-half", lambda: checks.token_mask("mask", torch.full((2, 3), 0.5), 2, 3),
             raises(TypeError, "mask must be bool or integer 0/1")),
        Case("token_mask-float01", lambda: checks.token_mask("mask", mask.float(), 2, 3),
             returns(lambda m: torch.equal(m, mask))),
        Case("token_mask-float64-01", lambda: checks.token_mask("mask", mask.double(), 2, 3),
             returns(lambda m: torch.equal(m, mask))),
        Case("token_mask-nan", lambda: checks.token_mask("mask", torch.full((2, 3), NAN), 2, 3),
             raises(TypeError, "mask")),
        Case("token_mask-two", lambda: checks.token_mask("mask", torch.full((2, 3), 2), 2, 3),
             raises(ValueError, "only 0 and 1")),
        Case("token_mask-complex", lambda: checks.token_mask("mask", torch.ones(2, 3, dtype=torch.complex64), 2, 3),
             raises(TypeError, "mask")),
        Case("token_mask-empty-row", lambda: checks.token_mask("mask", torch.tensor([[True], [False]]), 2, 1),
             raises(ValueError, r"mask: every sequence needs at least one real .* rows \[1\]")),
        Case("token_mask-empty-row-allowed",
             lambda: checks.token_mask("mask", torch.tensor([[True], [False]]), 2, 1, allow_empty_rows=True),
             returns(lambda m: m.tolist() == [[True], [False]])),
        Case("token_mask-empty-batch", lambda: checks.token_mask("mask", torch.ones(0, 3, dtype=torch.bool), 0, 3),
             returns(lambda m: m.shape == (0, 3))),
        Case("zero_padding-nonfinite",
             lambda: checks.zero_padding(torch.tensor([[[1.0], [INF]], [[NAN], [2.0]]]),
                                         torch.tensor([[True, False], [False, True]])),
             returns(lambda x: x.flatten().tolist() == [1.0, 0.0, 0.0, 2.0])),
        Case("hidden_states-2d", lambda: checks.hidden_states("h", torch.ones(5, 4), 4),
             raises(ValueError, r"h must have shape \(batch, seq, 4\)")),
        Case("hidden_states-empty-seq", lambda: checks.hidden_states("h", torch.ones(2, 0, 4), 4),
             raises(ValueError, "h must have at least one token")),
        Case("hidden_states-empty-batch", lambda: checks.hidden_states("h", torch.ones(0, 3, 4), 4),
             returns(lambda h: h.shape == (0, 3, 4))),
        Case("matches_module-dtype", lambda: checks.matches_module("x", torch.ones(2, 4, dtype=torch.float64),
                                                                    torch.nn.Linear(4, 4)),
             raises(TypeError, "x is torch.float64 but the module's parameters are torch.float32")),
    ]
    return cases


# --------------------------------------------------------------------------- kexue.nn / kexue.attention


def _config(**overrides: Any) -> TransformerConfig:
    base = dict(vocab_size=20, dim=16, depth=1, heads=2, ffn_dim=32, max_len=12, dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def _encoder(**overrides: Any) -> TransformerEncoder:
    torch.manual_seed(0)
    return TransformerEncoder(_config(**overrides)).eval()


def _ids(batch: int = 2, seq: int = 5) -> torch.Tensor:
    return torch.randint(1, 20, (batch, seq), generator=_gen(1))


def _padding_mask(batch: int = 2, seq: int = 5) -> torch.Tensor:
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[-1, seq // 2:] = False
    return mask


def _nonfinite_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    bad = x.clone()
    pad = ~mask
    bad[pad] = torch.tensor([INF, NAN, -INF])[torch.arange(int(pad.sum())) % 3][:, None].to(x.dtype)
    return bad


def _encoder_ignores_nonfinite_padding(position: str) -> bool:
    enc = _encoder(position=position)
    x, mask = _randn(2, 5, 16, seed=2), _padding_mask()
    out = enc(inputs_embeds=_nonfinite_padding(x, mask), mask=mask)
    return _close(out[mask], enc(inputs_embeds=x, mask=mask)[mask], 1e-5)


def _mhsa_gradients(attention: MultiHeadSelfAttention, x: torch.Tensor) -> list[torch.Tensor]:
    """Weight gradients of a loss on the real outputs (the padding zeroed in ``x`` or not)."""
    mask = _padding_mask()
    attention(x, mask)[mask].square().sum().backward()
    return [p.grad for p in attention.parameters()]


def nn_cases() -> list[Case]:
    config_bad = [
        ("dim-zero", dict(dim=0), ValueError, "dim"),
        ("dim-float", dict(dim=16.0), ValueError, "dim"),
        ("vocab-string", dict(vocab_size="20"), ValueError, "vocab_size"),
        ("heads-not-dividing", dict(heads=3), ValueError, "heads"),
        ("depth-negative", dict(depth=-1), ValueError, "depth"),
        ("dropout-one", dict(dropout=1.0), ValueError, "dropout"),
        ("dropout-nan", dict(dropout=NAN), ValueError, "dropout"),
        ("dropout-string", dict(dropout="0.1"), TypeError, "dropout"),
        ("attention-dropout-negative", dict(attention_dropout=-0.1), ValueError, "attention_dropout"),
        ("norm-string", dict(norm="middle"), ValueError, "norm"),
        ("position-string", dict(position="sinusoid"), ValueError, "position"),
        ("activation-string", dict(activation="tanh"), ValueError, "activation"),
        ("rope-base-zero", dict(rope_base=0.0), ValueError, "rope_base"),
        ("rope-base-inf", dict(rope_base=INF), ValueError, "rope_base"),
        ("eps-nan", dict(layer_norm_eps=NAN), ValueError, "layer_norm_eps"),
        ("scale-nan", dict(attention_scale=NAN), ValueError, "attention_scale"),
        ("scale-zero", dict(attention_scale=0.0), ValueError, "attention_scale"),
        ("scale-negative", dict(attention_scale=-0.25), ValueError, "attention_scale"),
        ("mixer-not-string", dict(mixer=3), TypeError, "mixer"),
        ("mixer-options-list", dict(mixer_options=[]), TypeError, "mixer_options"),
        ("rotary-with-mixer", dict(position="rotary", mixer="fnet"), ValueError, "mixer"),
        ("pad-negative", dict(pad_token_id=-1), ValueError, "pad_token_id"),
        ("pad-outside-vocab", dict(pad_token_id=20), ValueError, "pad_token_id"),
        ("rotary-odd-head", dict(dim=6, heads=2, position="rotary"), ValueError, "head size"),
    ]
    cases = [Case(f"config-{cid}", lambda kw=kw: _config(**kw), raises(err, pat)) for cid, kw, err, pat in config_bad]
    cases.append(Case("block-unknown-mixer", lambda: TransformerEncoder(_config(mixer="conv")),
                      raises(ValueError, "mixer must be")))
    enc_calls = [
        ("ids-list", lambda e: e(_ids().tolist()), raises(TypeError, "input_ids must be a torch.Tensor")),
        ("ids-float", lambda e: e(_ids().float()), raises(ValueError, "input_ids")),
        ("ids-bool", lambda e: e(_ids() > 3), raises(ValueError, "input_ids")),
        ("ids-1d", lambda e: e(_ids()[0]), raises(ValueError, "input_ids must have 2 dimensions")),
        ("ids-3d", lambda e: e(_ids()[None]), raises(ValueError, "input_ids")),
        ("ids-too-large", lambda e: e(_ids() + 20), raises(ValueError, "vocab_size=20")),
        ("ids-negative", lambda e: e(-_ids()), raises(ValueError, "vocab_size=20")),
        ("ids-too-long", lambda e: e(_ids(2, 13)), raises(ValueError, "max_len")),
        ("ids-empty-seq", lambda e: e(_ids(2, 0)), raises(ValueError, "at least one token")),
        ("ids-empty-batch", lambda e: e(_ids(0, 5)), returns(lambda out: out.shape == (0, 5, 16))),
        ("ids-empty-batch-mask", lambda e: e(_ids(0, 5), torch.ones(0, 5, dtype=torch.bool)),
         returns(lambda out: out.shape == (0, 5, 16))),
        ("ids-int16", lambda e: e(_ids().to(torch.int16)), returns(lambda out: _close(out, _encoder()(_ids())))),
        ("ids-and-embeds", lambda e: e(_ids(), inputs_embeds=_randn(2, 5, 16)), raises(ValueError, "exactly one")),
        ("nothing", lambda e: e(), raises(ValueError, "exactly one")),
        ("embeds-list", lambda e: e(inputs_embeds=_randn(2, 5, 16).tolist()),
         raises(TypeError, "inputs_embeds must be a torch.Tensor")),
        ("embeds-int", lambda e: e(inputs_embeds=torch.ones(2, 5, 16, dtype=torch.long)),
         raises(TypeError, "inputs_embeds must be a floating")),
        ("embeds-wrong-dim", lambda e: e(inputs_embeds=_randn(2, 5, 15)), raises(ValueError, "inputs_embeds")),
        ("embeds-2d", lambda e: e(inputs_embeds=_randn(5, 16)), raises(ValueError, "inputs_embeds")),
        ("embeds-float64", lambda e: e(inputs_embeds=_randn(2, 5, 16, dtype=torch.float64)),
         raises(TypeError, "inputs_embeds is torch.float64")),
        ("mask-list", lambda e: e(_ids(), _padding_mask().tolist()), raises(TypeError, "mask must be a torch.Tensor")),
        ("mask-shape", lambda e: e(_ids(), _padding_mask(2, 4)), raises(ValueError, "mask must have shape")),
        ("mask-transposed", lambda e: e(_ids(), _padding_mask().T), raises(ValueError, "mask must have shape")),
        ("mask-hf-additive", lambda e: e(_ids(), (~_padding_mask()).float() * -1e4),
         raises(TypeError, r"additive attention mask.*`mask == 0`")),
        ("mask-hf-additive-no-padding", lambda e: e(_ids(), torch.zeros(2, 5)), raises(TypeError, "`mask == 0`")),
        ("mask-half", lambda e: e(_ids(), torch.full((2, 5), 0.5)), raises(TypeError, "mask")),
        ("mask-two", lambda e: e(_ids(), torch.full((2, 5), 2)), raises(ValueError, "mask")),
        ("mask-all-padding-row", lambda e: e(_ids(), torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])),
         raises(ValueError, "at least one real")),
        ("mask-int64", lambda e: e(_ids(), _padding_mask().long()),
         returns(lambda out: _close(out, _encoder()(_ids(), _padding_mask()), 0.0))),
        ("return-all-string", lambda e: e(_ids(), return_all="yes"), raises(TypeError, "return_all")),
        ("positions-for-learned", lambda e: e(_ids(), positions=torch.arange(5)),
         raises(ValueError, "positions are only used with position='rotary'")),
    ]
    cases += [Case(f"encoder-{cid}", lambda f=f: f(_encoder()), exp) for cid, f, exp in enc_calls]
    rotary_calls = [
        ("positions-short", lambda e: e(_ids(), positions=torch.arange(4)), raises(ValueError, "positions")),
        ("positions-batch", lambda e: e(_ids(), positions=torch.arange(5).expand(3, 5)),
         raises(ValueError, "positions")),
        ("positions-list", lambda e: e(_ids(), positions=[0, 1, 2, 3, 4]), raises(TypeError, "positions")),
        ("positions-nan", lambda e: e(_ids(), positions=torch.tensor([0.0, 1.0, NAN, 3.0, 4.0])),
         raises(ValueError, "positions must be finite")),
        ("positions-inf", lambda e: e(_ids(), positions=torch.tensor([0.0, 1.0, INF, 3.0, 4.0])),
         raises(ValueError, "positions must be finite")),
        ("positions-bool", lambda e: e(_ids(), positions=torch.ones(5, dtype=torch.bool)),
         raises(TypeError, "positions")),
        ("positions-float", lambda e: e(_ids(), positions=torch.arange(5.0)),
         returns(lambda out: _close(out, _encoder(position="rotary")(_ids())))),
        ("positions-per-sample", lambda e: e(_ids(), positions=torch.arange(5).expand(2, 5)),
         returns(lambda out: _close(out, _encoder(position="rotary")(_ids())))),
    ]
    cases += [Case(f"rotary-{cid}", lambda f=f: f(_encoder(position="rotary")), exp) for cid, f, exp in rotary_calls]
    rotary2d_calls = [
        ("no-positions", lambda e: e(_ids()), raises(ValueError, "positions")),
        ("positions-1d", lambda e: e(_ids(), positions=torch.arange(5)), raises(ValueError, "positions")),
        ("positions-three-columns", lambda e: e(_ids(), positions=torch.zeros(5, 3)), raises(ValueError, "positions")),
        ("positions-nan", lambda e: e(_ids(), positions=torch.full((5, 2), NAN)), raises(ValueError, "positions")),
    ]
    cases += [Case(f"rotary2d-{cid}", lambda f=f: f(_encoder(position="rotary2d", dim=16, heads=2)), exp)
              for cid, f, exp in rotary2d_calls]
    for position in ("learned", "rotary", "none"):
        cases.append(Case(f"encoder-{position}-nonfinite-padding",
                          lambda p=position: _encoder_ignores_nonfinite_padding(p), returns(lambda ok: ok)))

    def attention() -> MultiHeadSelfAttention:
        torch.manual_seed(0)
        return MultiHeadSelfAttention(_config()).eval()

    attn_calls = [
        ("x-list", lambda a: a(_randn(2, 5, 16).tolist()), raises(TypeError, "x must be a torch.Tensor")),
        ("x-int", lambda a: a(torch.ones(2, 5, 16, dtype=torch.long)), raises(TypeError, "x must be a floating")),
        ("x-wrong-dim", lambda a: a(_randn(2, 5, 8)), raises(ValueError, r"x must have shape \(batch, seq, 16\)")),
        ("x-empty-seq", lambda a: a(_randn(2, 0, 16)), raises(ValueError, "at least one token")),
        ("mask-additive", lambda a: a(_randn(2, 5, 16), (~_padding_mask()).float() * -1e9),
         raises(TypeError, "`mask == 0`")),
        ("nonfinite-padding", lambda a: a(_nonfinite_padding(_randn(2, 5, 16), _padding_mask()), _padding_mask()),
         returns(lambda out: _close(out[_padding_mask()],
                                    attention()(_randn(2, 5, 16), _padding_mask())[_padding_mask()]))),
        ("nonfinite-padding-gradients",
         lambda a: _mhsa_gradients(a, _nonfinite_padding(_randn(2, 5, 16), _padding_mask())),
         returns(lambda g: all(_close(x, y) for x, y in zip(g, _mhsa_gradients(attention(), _randn(2, 5, 16)))))),
    ]
    cases += [Case(f"mhsa-{cid}", lambda f=f: f(attention()), exp) for cid, f, exp in attn_calls]
    cases += [
        Case("maskedlm-ids-too-large", lambda: MaskedLM(_config())(_ids() + 30), raises(ValueError, "input_ids")),
        Case("patchify-list", lambda: patchify([[0.0] * 4] * 4, 2), raises(TypeError, "images")),
        Case("patchify-2d", lambda: patchify(torch.zeros(4, 4), 2), raises(ValueError, "images")),
        Case("patchify-patch-zero", lambda: patchify(torch.zeros(1, 4, 4), 0), raises(ValueError, "patch")),
        Case("patchify-patch-string", lambda: patchify(torch.zeros(1, 4, 4), "2"), raises(ValueError, "patch")),
        Case("patchify-not-dividing", lambda: patchify(torch.zeros(1, 4, 4), 3), raises(ValueError, "patch")),
        Case("patchify-empty-batch", lambda: patchify(torch.zeros(0, 4, 4), 2),
             returns(lambda p: p.shape == (0, 4, 4))),
        Case("count-parameters-list", lambda: count_parameters([torch.nn.Linear(2, 2)]), raises(TypeError, "module")),
    ]
    block = lambda: _encoder().blocks[0]  # noqa: E731
    cases += [
        Case("block-mask-additive", lambda: block()(_randn(2, 5, 16), (~_padding_mask()).float() * -1e4),
             raises(TypeError, "`mask == 0`")),
        Case("block-mask-shape", lambda: block()(_randn(2, 5, 16), _padding_mask(2, 4)), raises(ValueError, "mask")),
        Case("block-x-list", lambda: block()(_randn(2, 5, 16).tolist()), raises(TypeError, "x must be")),
        Case("block-x-wrong-dim", lambda: block()(_randn(2, 5, 12)), raises(ValueError, "x must have shape")),
        Case("block-positions-learned", lambda: block()(_randn(2, 5, 16), positions=torch.arange(5)),
             raises(ValueError, "positions")),
        Case("block-empty-batch", lambda: block()(_randn(0, 5, 16)), returns(lambda out: out.shape == (0, 5, 16))),
        Case("block-nonfinite-padding", lambda: block()(_nonfinite_padding(_randn(2, 5, 16), _padding_mask()),
                                                        _padding_mask())[_padding_mask()],
             returns(lambda out: _close(out, block()(_randn(2, 5, 16), _padding_mask())[_padding_mask()]))),
    ]
    return cases


# --------------------------------------------------------------------------- kexue.mixers


DIM, SEQ = 8, 6


def _mixer(name: str, **options: Any):
    torch.manual_seed(0)
    return MIXERS[name](DIM, SEQ, **options).eval()


def _mixer_ignores_nonfinite_padding(name: str) -> bool:
    m = _mixer(name)
    x, mask = _randn(2, 5, DIM, seed=3), _padding_mask()
    zero = x.masked_fill(~mask[..., None], 0.0)
    return _close(m(_nonfinite_padding(x, mask), mask)[mask], m(zero, mask)[mask], 1e-5)


def mixers_cases() -> list[Case]:
    cases: list[Case] = []
    for name, cls in sorted(MIXERS.items()):
        calls = [
            ("x-list", lambda m: m(_randn(2, 5, DIM).tolist()), raises(TypeError, "x must be a torch.Tensor")),
            ("x-int", lambda m: m(torch.ones(2, 5, DIM, dtype=torch.long)), raises(TypeError, "x must be a floating")),
            ("x-bool", lambda m: m(torch.ones(2, 5, DIM, dtype=torch.bool)), raises(TypeError, "x must be a floating")),
            ("x-float64", lambda m: m(_randn(2, 5, DIM, dtype=torch.float64)),
             raises(TypeError, "x is torch.float64") if name != "fnet"  # FNet has no parameters to match
             else returns(lambda out: out.dtype == torch.float64)),
            ("x-2d", lambda m: m(_randn(5, DIM)), raises(ValueError, "x must have shape")),
            ("x-wrong-dim", lambda m: m(_randn(2, 5, DIM + 1)),
             raises(ValueError, r"x must have shape \(batch, seq, 8\)")),
            ("x-empty-seq", lambda m: m(_randn(2, 0, DIM)), raises(ValueError, "at least one token")),
            ("x-empty-batch", lambda m: m(_randn(0, 5, DIM)), returns(lambda out: out.shape == (0, 5, DIM))),
            ("mask-list", lambda m: m(_randn(2, 5, DIM), _padding_mask().tolist()),
             raises(TypeError, "mask must be a torch.Tensor")),
            ("mask-shape", lambda m: m(_randn(2, 5, DIM), _padding_mask(2, 4)),
             raises(ValueError, "mask must have shape")),
            ("mask-additive", lambda m: m(_randn(2, 5, DIM), (~_padding_mask()).float() * -1e4),
             raises(TypeError, "`mask == 0`")),
            ("mask-half", lambda m: m(_randn(2, 5, DIM), torch.full((2, 5), 0.5)), raises(TypeError, "mask")),
            ("mask-empty-row", lambda m: m(_randn(2, 5, DIM), torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])),
             raises(ValueError, "at least one real")),
            ("mask-int64", lambda m: m(_randn(2, 5, DIM), _padding_mask().long()),
             returns(lambda out, n=name: _close(out, _mixer(n)(_randn(2, 5, DIM), _padding_mask()), 0.0))),
        ]
        cases += [Case(f"{name}-{cid}", lambda f=f, n=name: f(_mixer(n)), exp) for cid, f, exp in calls]
        cases.append(Case(f"{name}-nonfinite-padding", lambda n=name: _mixer_ignores_nonfinite_padding(n),
                          returns(lambda ok: ok)))
        if cls.fixed_length:
            cases.append(Case(f"{name}-too-long", lambda n=name: _mixer(n)(_randn(1, SEQ + 1, DIM)),
                              raises(ValueError, f"seq_len={SEQ}")))
        cases += [
            Case(f"{name}-dim-zero", lambda c=cls: c(0, SEQ), raises(ValueError, "dim")),
            Case(f"{name}-seq-len-float", lambda c=cls: c(DIM, 6.0), raises(ValueError, "seq_len")),
            Case(f"{name}-causal-string", lambda c=cls: c(DIM, SEQ, causal="yes"), raises(TypeError, "causal")),
        ]
    cases += [
        Case("attention-heads-not-dividing", lambda: _mixer("attention", heads=3), raises(ValueError, "heads")),
        Case("attention-scale-nan", lambda: _mixer("attention", scale=NAN), raises(ValueError, "scale")),
        Case("attention-dropout-one", lambda: _mixer("attention", dropout=1.0), raises(ValueError, "dropout")),
        Case("synthesizer-random-init-std-inf", lambda: _mixer("synthesizer_random", init_std=INF),
             raises(ValueError, "init_std")),
        Case("synthesizer-random-trainable-string", lambda: _mixer("synthesizer_random", trainable="no"),
             raises(TypeError, "trainable")),
        Case("synthesizer-dense-hidden-zero", lambda: _mixer("synthesizer_dense", hidden=0),
             raises(ValueError, "hidden")),
        Case("mixer-expansion-zero", lambda: _mixer("mixer", expansion=0.0), raises(ValueError, "expansion")),
        Case("mixer-expansion-inf", lambda: _mixer("mixer", expansion=INF), raises(ValueError, "expansion")),
        Case("mixer-activation-string", lambda: _mixer("mixer", activation="relu"), raises(ValueError, "activation")),
        Case("mixer-causal", lambda: _mixer("mixer", causal=True), raises(ValueError, "causal")),
        Case("resmlp-init-values-nan", lambda: _mixer("resmlp", init_values=NAN), raises(ValueError, "init_values")),
        Case("gmlp-init-std-string", lambda: _mixer("gmlp", init_std="1e-6"), raises(TypeError, "init_std")),
        Case("gmlp-eps-negative", lambda: _mixer("gmlp", layer_norm_eps=-1.0), raises(ValueError, "layer_norm_eps")),
        Case("fnet-causal", lambda: _mixer("fnet", causal=True), raises(ValueError, "causal")),
        Case("external-attention-normalisation", lambda: _mixer("external_attention", normalisation="col"),
             raises(ValueError, "normalisation")),
        Case("external-attention-slots-zero", lambda: _mixer("external_attention", slots=0),
             raises(ValueError, "slots")),
        Case("external-attention-eps-nan", lambda: _mixer("external_attention", eps=NAN), raises(ValueError, "eps")),
        Case("mixer-gelu-token-matrix", lambda: _mixer("mixer").token_matrix(_randn(2, 5, DIM)),
             raises(TypeError, "activation='identity'")),
        Case("complex_dtype_for-string", lambda: mixers.complex_dtype_for("float64"), raises(TypeError, "dtype")),
        Case("complex_dtype_for-int", lambda: mixers.complex_dtype_for(torch.int64), raises(TypeError, "dtype")),
        Case("dft_matrix-zero", lambda: mixers.dft_matrix(0), raises(ValueError, "m must")),
        Case("dft_matrix-real-dtype", lambda: mixers.dft_matrix(4, dtype=torch.float64), raises(TypeError, "dtype")),
        Case("dft_matrix-large-unitary", lambda: mixers.dft_matrix(257),
             returns(lambda f: _close(f @ f.conj().T / 257, torch.eye(257, dtype=f.dtype), 1e-12))),
        Case("external-attention-slot-matrix-mask", lambda: _mixer("external_attention").slot_matrix(
            _randn(2, 5, DIM), torch.full((2, 5), 0.5)), raises(TypeError, "mask")),
    ]
    for name in sorted(n for n, c in MIXERS.items() if c.has_token_matrix and n != "mixer"):
        cases += [
            Case(f"{name}-token-matrix-x-list", lambda n=name: _mixer(n).token_matrix(_randn(2, 5, DIM).tolist()),
                 raises(TypeError, "x must be")),
            Case(f"{name}-token-matrix-mask-additive",
                 lambda n=name: _mixer(n).token_matrix(_randn(2, 5, DIM), (~_padding_mask()).float() * -1e4),
                 raises(TypeError, "`mask == 0`")),
            Case(f"{name}-values-empty-batch", lambda n=name: _mixer(n).values(_randn(0, 5, DIM)),
                 returns(lambda v: v.shape[0] == 0)),
            Case(f"{name}-reference-nonfinite-padding",
                 lambda n=name: _mixer(n).forward_reference(_nonfinite_padding(_randn(2, 5, DIM), _padding_mask()),
                                                            _padding_mask())[_padding_mask()],
                 returns(lambda out, n=name: _close(out, _mixer(n)(_randn(2, 5, DIM), _padding_mask())[_padding_mask()],
                                                    1e-5))),
        ]
    return cases


# --------------------------------------------------------------------------- kexue.rope


def _large_positions_accurate(two_d: bool) -> bool:
    x = _randn(2, 16, 8, dtype=torch.float64, seed=4)
    pos = 1_000_000 + torch.randint(0, 1000, (16, 2) if two_d else (16,), generator=_gen(5))
    f = rope.apply_rope_2d if two_d else rope.apply_rope
    return _close(f(x.float(), pos).double(), f(x, pos), 1e-5)


def rope_cases() -> list[Case]:
    x, pos1, pos2 = (lambda: _randn(2, 4, 8)), (lambda: torch.arange(4)), (lambda: torch.zeros(4, 2))
    bad_positions = [
        ("nan", lambda p: p.float().masked_fill(p == p.flatten()[0], NAN), ValueError, "positions must be finite"),
        ("inf", lambda p: p.float().masked_fill(p == p.flatten()[0], INF), ValueError, "positions must be finite"),
        ("bool", lambda p: p > 0, TypeError, "positions"),
        ("complex", lambda p: p.to(torch.complex64), TypeError, "positions"),
        ("strings", lambda p: [["a"] * p.shape[-1]] if p.dim() == 2 else ["a"] * len(p), TypeError, "positions"),
    ]
    cases = []
    for fname, f, pos in (("apply_rope", rope.apply_rope, pos1), ("apply_rope_2d", rope.apply_rope_2d, pos2)):
        cases += [Case(f"{fname}-positions-{cid}", lambda f=f, pos=pos, bad=bad: f(x(), bad(pos())), raises(err, pat))
                  for cid, bad, err, pat in bad_positions]
        cases += [
            Case(f"{fname}-x-list", lambda f=f, pos=pos: f(x().tolist(), pos()), raises(TypeError, "x must be")),
            Case(f"{fname}-x-int", lambda f=f, pos=pos: f(torch.ones(2, 4, 8, dtype=torch.long), pos()),
                 raises(TypeError, "x must be")),
            Case(f"{fname}-x-complex", lambda f=f, pos=pos: f(x().to(torch.complex64), pos()),
                 raises(TypeError, "x must be")),
            Case(f"{fname}-x-1d", lambda f=f, pos=pos: f(torch.ones(8), pos()),
                 raises(ValueError, "x must have shape")),
            Case(f"{fname}-x-odd-dim", lambda f=f, pos=pos: f(_randn(2, 4, 6 if f is rope.apply_rope_2d else 7), pos()),
                 raises(ValueError, "dim")),
            Case(f"{fname}-positions-short", lambda f=f, pos=pos: f(x(), pos()[:3]), raises(ValueError, "positions")),
            Case(f"{fname}-base-zero", lambda f=f, pos=pos: f(x(), pos(), 0.0), raises(ValueError, "base")),
            Case(f"{fname}-base-nan", lambda f=f, pos=pos: f(x(), pos(), NAN), raises(ValueError, "base")),
            Case(f"{fname}-base-string", lambda f=f, pos=pos: f(x(), pos(), "10000"), raises(TypeError, "base")),
            Case(f"{fname}-layout-string", lambda f=f, pos=pos: f(x(), pos(), layout="bogus"),
                 raises(ValueError, "layout")),
            Case(f"{fname}-empty-seq", lambda f=f, pos=pos: f(_randn(2, 0, 8), pos()[:0]),
                 returns(lambda out: out.shape == (2, 0, 8))),
            Case(f"{fname}-empty-batch", lambda f=f, pos=pos: f(_randn(0, 4, 8), pos()),
                 returns(lambda out: out.shape == (0, 4, 8))),
            Case(f"{fname}-positions-as-list", lambda f=f, pos=pos: f(x(), pos().tolist()),
                 returns(lambda out, f=f, pos=pos: _close(out, f(x(), pos())))),
            Case(f"{fname}-large-positions-float32", lambda two=f is rope.apply_rope_2d: _large_positions_accurate(two),
                 returns(lambda ok: ok)),
        ]
    cases += [
        Case("apply_rope-layout-block4", lambda: rope.apply_rope(x(), pos1(), layout="block4"),
             raises(ValueError, "layout")),
        Case("rope_angles_2d-dim", lambda: rope.rope_angles_2d(pos2(), 6), raises(ValueError, "dim")),
        Case("rope_angles_2d-dtype-int", lambda: rope.rope_angles_2d(pos2(), 8, dtype=torch.int64),
             raises(TypeError, "dtype")),
        Case("rope_angles_2d-nan", lambda: rope.rope_angles_2d(torch.full((3, 2), NAN), 8),
             raises(ValueError, "positions must be finite")),
        Case("rope_angles_2d-list", lambda: rope.rope_angles_2d([[1, 2], [3, 4]], 8),
             returns(lambda a: a.shape == (2, 4) and a[1, 0].item() == 3.0)),
        Case("rope_angles_2d-large-float64",
             lambda: rope.rope_angles_2d(torch.tensor([[10**6, 0]]), 8, dtype=torch.float64),
             returns(lambda a: a[0, 1].item() == 10**6 * rope.rope_frequencies(4, dtype=torch.float64)[1].item())),
        Case("rope_frequencies-dim-zero", lambda: rope.rope_frequencies(0), raises(ValueError, "dim")),
        Case("rope_frequencies-dim-odd", lambda: rope.rope_frequencies(5), raises(ValueError, "dim")),
        Case("rope_frequencies-base-negative", lambda: rope.rope_frequencies(8, -1.0), raises(ValueError, "base")),
        Case("rope_matrix-position-string", lambda: rope.rope_matrix("a", 4), raises(ValueError, "position")),
        Case("rope_matrix-position-nan", lambda: rope.rope_matrix(NAN, 4),
             raises(ValueError, "position must be finite")),
        Case("rope_matrix-position-2d", lambda: rope.rope_matrix([[1.0]], 4), raises(ValueError, "position")),
        Case("rope_matrix-dim-odd", lambda: rope.rope_matrix(1.0, 5), raises(ValueError, "dim")),
        Case("rope_matrix-orthogonal-at-1e6", lambda: rope.rope_matrix(1e6, 4, dtype=torch.float32),
             returns(lambda r: _close(r @ r.T, torch.eye(4), 1e-6))),
        Case("rope_2d_matrix-three-numbers", lambda: rope.rope_2d_matrix((1.0, 2.0, 3.0), 8),
             raises(ValueError, "position")),
        Case("rope_2d_matrix-inf", lambda: rope.rope_2d_matrix((1.0, INF), 8), raises(ValueError, "position")),
        Case("apply_rope_2d_reference-positions-shape", lambda: rope.apply_rope_2d_reference(x(), torch.zeros(3, 2)),
             raises(ValueError, "positions")),
        Case("apply_rope_2d_reference-positions-list", lambda: rope.apply_rope_2d_reference(x(), [[0, 0]] * 4),
             returns(lambda out: _close(out, x()))),
        Case("layout_permutation-block4-dim", lambda: rope.layout_permutation(6, "block4"), raises(ValueError, "dim")),
        Case("layout_permutation-string", lambda: rope.layout_permutation(8, "halves"), raises(ValueError, "layout")),
        Case("grid_positions-zero", lambda: rope.grid_positions(0, 3), raises(ValueError, "height")),
        Case("grid_positions-float", lambda: rope.grid_positions(2, 2.5), raises(ValueError, "width")),
        Case("flat_positions-list", lambda: rope.flat_positions([[0, 1]], 3), raises(TypeError, "grid")),
        Case("flat_positions-width-zero", lambda: rope.flat_positions(torch.zeros(2, 2, dtype=torch.long), 0),
             raises(ValueError, "width")),
        Case("flat_positions-three-columns", lambda: rope.flat_positions(torch.zeros(2, 3, dtype=torch.long), 3),
             raises(ValueError, "grid")),
        Case("score_by_offset-mode", lambda: rope.score_by_offset(_randn(2, 8), _randn(2, 8), 3, mode="3d"),
             raises(ValueError, "mode")),
        Case("score_by_offset-size", lambda: rope.score_by_offset(_randn(2, 8), _randn(2, 8), 0),
             raises(ValueError, "size")),
        Case("score_by_offset-q-list", lambda: rope.score_by_offset(_randn(2, 8).tolist(), _randn(2, 8), 3),
             raises(TypeError, "q")),
        Case("score_by_offset-no-heads", lambda: rope.score_by_offset(_randn(0, 8), _randn(0, 8), 3),
             raises(ValueError, "q and k")),
        Case("apply_rope_2d_reference-empty-seq",
             lambda: rope.apply_rope_2d_reference(_randn(2, 0, 8), torch.zeros(0, 2)),
             returns(lambda out: out.shape == (2, 0, 8))),
        Case("score_by_offset-shapes", lambda: rope.score_by_offset(_randn(2, 8), _randn(3, 8), 3),
             raises(ValueError, "q and k")),
    ]
    return cases


# --------------------------------------------------------------------------- kexue.losses


def _pair(n: int = 4, d: int = 6, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return _randn(n, d, dtype=dtype, seed=6), _randn(n, d, dtype=dtype, seed=7)


def _with(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t[1, 2] = value
    return t


def _stable_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean_i(logsumexp_j s_ij / tau - s_ii / tau)`` with cosine ``s``: finite at any ``tau``."""
    s = (a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).T / tau
    return (torch.logsumexp(s, dim=-1) - s.diagonal()).mean()


def _temperature_gradient(loss: Callable[..., torch.Tensor], views: bool = False) -> torch.Tensor:
    """d loss / d tau for a learnable tau = 0.07: checking the temperature must not cut the graph."""
    tau = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    a, b = _pair()
    value = loss(torch.cat([a, b]), tau) if views else loss(a, b, tau)
    (grad,) = torch.autograd.grad(value, tau)
    return grad


def losses_cases() -> list[Case]:
    a, b = (lambda: _pair()[0]), (lambda: _pair()[1])
    h = lambda: _randn(6, 5, dtype=torch.float64, seed=8)  # noqa: E731
    bad_temperatures = [
        ("zero", 0.0, ValueError), ("negative", -0.05, ValueError), ("nan", NAN, ValueError), ("inf", INF, ValueError),
        ("string", "0.05", TypeError), ("bool", True, TypeError), ("none", None, TypeError),
        ("tensor-zero", torch.tensor(0.0), ValueError), ("tensor-negative", torch.tensor(-0.05), ValueError),
        ("tensor-nan", torch.tensor(NAN), ValueError), ("tensor-inf", torch.tensor(INF), ValueError),
        ("tensor-vector", torch.tensor([0.05, 0.1]), ValueError), ("tensor-int", torch.tensor(1), ValueError),
        ("learnable-negative", torch.tensor(-0.05, requires_grad=True), ValueError),
    ]
    cases = []
    for fname, f, args in (
        ("info_nce", losses.info_nce, lambda: (a(), b())),
        ("symmetric_info_nce", losses.symmetric_info_nce, lambda: (a(), b())),
        ("simcse_loss", losses.simcse_loss, lambda: (h(),)),
        ("simcse_embedding_grad", losses.simcse_embedding_grad, lambda: (h(),)),
        ("simcse_surrogate", losses.simcse_surrogate, lambda: (h(),)),
    ):
        cases += [Case(f"{fname}-temperature-{cid}", lambda f=f, args=args, t=t: f(*args(), t),
                       raises(err, "temperature")) for cid, t, err in bad_temperatures]
    learnable = lambda: torch.tensor(0.05, dtype=torch.float64, requires_grad=True)  # noqa: E731
    cases += [
        Case("info_nce-a-list", lambda: losses.info_nce(a().tolist(), b()), raises(TypeError, "a must be a tensor")),
        Case("info_nce-b-int", lambda: losses.info_nce(a(), b().long()), raises(ValueError, "b must be a floating")),
        Case("info_nce-a-1d", lambda: losses.info_nce(a()[0], b()[0]), raises(ValueError, "a must be a floating")),
        Case("info_nce-a-3d", lambda: losses.info_nce(a()[None], b()[None]), raises(ValueError, "a must be")),
        Case("info_nce-shapes", lambda: losses.info_nce(a(), b()[:3]), raises(ValueError, "same shape")),
        Case("info_nce-dtypes", lambda: losses.info_nce(a(), b().float()), raises(TypeError, "a and b")),
        Case("info_nce-empty", lambda: losses.info_nce(a()[:0], b()[:0]), raises(ValueError, "a must have at least 1")),
        Case("info_nce-zero-dim", lambda: losses.info_nce(a()[:, :0], b()[:, :0]), raises(ValueError, "a must have")),
        Case("info_nce-a-nan", lambda: losses.info_nce(_with(a(), NAN), b()), raises(ValueError, "a must be finite")),
        Case("info_nce-b-inf", lambda: losses.info_nce(a(), _with(b(), INF)), raises(ValueError, "b must be finite")),
        Case("info_nce-zero-row-cosine", lambda: losses.info_nce(a() * torch.tensor([[1.0], [0.0], [1.0], [1.0]],
                                                                                   dtype=torch.float64), b()),
             raises(ValueError, r"a has all-zero rows \[1\]")),
        Case("info_nce-zero-row-inner-product",
             lambda: losses.info_nce(a() * torch.tensor([[1.0], [0.0], [1.0], [1.0]], dtype=torch.float64), b(),
                                     normalize=False),
             returns(lambda v: _close(v, losses.info_nce_reference(
                 a() * torch.tensor([[1.0], [0.0], [1.0], [1.0]], dtype=torch.float64), b(), normalize=False), 1e-10))),
        Case("info_nce-normalize-string", lambda: losses.info_nce(a(), b(), normalize="yes"),
             raises(TypeError, "normalize")),
        Case("info_nce-one-row", lambda: losses.info_nce(a()[:1], b()[:1]), returns(lambda v: float(v) == 0.0)),
        Case("info_nce-learnable-temperature", lambda: losses.info_nce(a(), b(), learnable()),
             returns(lambda v: v.requires_grad and _close(v, losses.info_nce_reference(a(), b(), 0.05), 1e-10))),
        Case("info_nce-learnable-temperature-gradient", lambda: _temperature_gradient(losses.info_nce),
             returns(lambda g: _close(g, _temperature_gradient(losses.info_nce_reference), 1e-10))),
        Case("simcse_loss-learnable-temperature-gradient", lambda: _temperature_gradient(losses.simcse_loss, True),
             returns(lambda g: _close(g, _temperature_gradient(losses.simcse_loss_reference, True), 1e-10))),
        Case("info_nce-tiny-temperature", lambda: losses.info_nce(a(), b(), 1e-4),
             returns(lambda v: _close(v, _stable_info_nce(a(), b(), 1e-4), 1e-9))),
        Case("info_nce-temperature-shape-1",
             lambda: losses.info_nce(a(), b(), torch.tensor([0.05], dtype=torch.float64)),
             returns(lambda v: _close(v, losses.info_nce(a(), b(), 0.05), 1e-12))),
        Case("info_nce_reference-a-list", lambda: losses.info_nce_reference(a().tolist(), b()),
             raises(TypeError, "a must be a tensor")),
        Case("info_nce_reference-nan", lambda: losses.info_nce_reference(a(), _with(b(), NAN)),
             raises(ValueError, "b must be finite")),
        Case("simcse_loss-h-list", lambda: losses.simcse_loss(h().tolist()), raises(TypeError, "h must be a tensor")),
        Case("simcse_loss-odd", lambda: losses.simcse_loss(h()[:5]), raises(ValueError, "even")),
        Case("simcse_loss-one-row", lambda: losses.simcse_loss(h()[:1]), raises(ValueError, "h must have at least 2")),
        Case("simcse_loss-empty", lambda: losses.simcse_loss(h()[:0]), raises(ValueError, "h must have at least 2")),
        Case("simcse_loss-nan", lambda: losses.simcse_loss(_with(h(), NAN)), raises(ValueError, "h must be finite")),
        Case("simcse_loss-half-precision", lambda: losses.simcse_loss(h().to(torch.bfloat16)),
             returns(lambda v: abs(float(v) - float(losses.simcse_loss(h()))) < 0.05)),
        Case("simcse_loss-matches-reference", lambda: losses.simcse_loss(h(), 0.1),
             returns(lambda v: _close(v, losses.simcse_loss_reference(h(), 0.1), 1e-10))),
        Case("simcse_loss_reference-odd", lambda: losses.simcse_loss_reference(h()[:5]), raises(ValueError, "even")),
        Case("simcse_embedding_grad-nan", lambda: losses.simcse_embedding_grad(_with(h(), INF)),
             raises(ValueError, "h must be finite")),
        Case("simcse_surrogate-odd", lambda: losses.simcse_surrogate(h()[:5]), raises(ValueError, "even")),
        Case("simcse_targets-odd", lambda: losses.simcse_targets(3), raises(ValueError, "rows")),
        Case("simcse_targets-zero", lambda: losses.simcse_targets(0), raises(ValueError, "rows")),
        Case("simcse_targets-float", lambda: losses.simcse_targets(4.0), raises(ValueError, "rows")),
        Case("simcse_targets-four", lambda: losses.simcse_targets(4), returns(lambda t: t.tolist() == [1, 0, 3, 2])),
        Case("LogitScale-zero", lambda: losses.LogitScale(0.0), raises(ValueError, "temperature")),
        Case("LogitScale-nan", lambda: losses.LogitScale(NAN), raises(ValueError, "temperature")),
        Case("LogitScale-tensor", lambda: losses.LogitScale(torch.tensor(0.05)), raises(TypeError, "temperature")),
        Case("LogitScale-dtype-int", lambda: losses.LogitScale(0.05, dtype=torch.int64), raises(TypeError, "dtype")),
        Case("LogitScale-value", lambda: losses.LogitScale(0.05)(),
             returns(lambda t: abs(float(t.detach()) - 0.05) < 1e-7)),
        Case("check_embeddings-name", lambda: losses.check_embeddings("query", torch.ones(3)),
             raises(ValueError, "query must be")),
    ]
    return cases


# --------------------------------------------------------------------------- kexue.spans


def spans_cases() -> list[Case]:
    types = ("PER", "LOC")
    return [
        Case("bio_tag_names-string", lambda: spans.bio_tag_names("PER"), raises(TypeError, "types")),
        Case("bio_tag_names-ints", lambda: spans.bio_tag_names([1, 2]), raises(TypeError, "types")),
        Case("bio_tag_names-empty", lambda: spans.bio_tag_names([]), returns(lambda t: t == ("O",))),
        Case("spans_to_bio-pair", lambda: spans.spans_to_bio([(0, 1)], 3), raises(ValueError, "spans")),
        Case("spans_to_bio-one-triple", lambda: spans.spans_to_bio((0, 0, 1), 3), raises(ValueError, "spans")),
        Case("spans_to_bio-float-type", lambda: spans.spans_to_bio([(0.5, 0, 1)], 3), raises(TypeError, "spans")),
        Case("spans_to_bio-string-type", lambda: spans.spans_to_bio([("PER", 0, 1)], 3), raises(TypeError, "spans")),
        Case("spans_to_bio-string", lambda: spans.spans_to_bio("abc", 3), raises(TypeError, "spans")),
        Case("spans_to_bio-none", lambda: spans.spans_to_bio(None, 3), raises(TypeError, "spans")),
        Case("spans_to_bio-reversed", lambda: spans.spans_to_bio([(0, 2, 1)], 3), raises(ValueError, "spans")),
        Case("spans_to_bio-negative-type", lambda: spans.spans_to_bio([(-1, 0, 1)], 3), raises(ValueError, "spans")),
        Case("spans_to_bio-length-negative", lambda: spans.spans_to_bio([], -1), raises(ValueError, "length")),
        Case("spans_to_bio-length-float", lambda: spans.spans_to_bio([], 2.0), raises(ValueError, "length")),
        Case("spans_to_bio-empty", lambda: spans.spans_to_bio([], 0), returns(lambda t: t == [])),
        Case("spans_to_bio-tensor-ints", lambda: spans.spans_to_bio([tuple(torch.tensor([1, 0, 1]))], 3),
             returns(lambda t: t == [3, 4, 0])),
        Case("bio_to_spans-strings", lambda: spans.bio_to_spans(["B-PER", "O"]), raises(TypeError, "tags")),
        Case("bio_to_spans-string", lambda: spans.bio_to_spans("120"), raises(TypeError, "tags")),
        Case("bio_to_spans-floats", lambda: spans.bio_to_spans([1.5, 2.0]), raises(TypeError, "tags")),
        Case("bio_to_spans-float-tensor", lambda: spans.bio_to_spans(torch.tensor([1.0, 2.0])),
             raises(TypeError, "tags")),
        Case("bio_to_spans-negative", lambda: spans.bio_to_spans([1, -2]), raises(ValueError, "tags")),
        Case("bio_to_spans-none", lambda: spans.bio_to_spans(None), raises(TypeError, "tags")),
        Case("bio_to_spans-empty", lambda: spans.bio_to_spans([]), returns(lambda s: s == set())),
        Case("bio_to_spans-tensor", lambda: spans.bio_to_spans(torch.tensor([1, 2, 0, 3])),
             returns(lambda s: s == {(0, 0, 1), (1, 3, 3)})),
        Case("decode_bmes-string", lambda: spans.decode_bmes("B-PER", types), raises(TypeError, "tags")),
        Case("decode_bmes-ints", lambda: spans.decode_bmes([1, 0], types), raises(TypeError, "tags")),
        Case("decode_bmes-unknown-tag", lambda: spans.decode_bmes(["X-PER"], types), raises(ValueError, "tags")),
        Case("decode_bmes-unknown-type", lambda: spans.decode_bmes(["B-ORG"], types), raises(ValueError, "tags")),
        Case("decode_bmes-types-string", lambda: spans.decode_bmes(["B-PER"], "PERLOC"), raises(TypeError, "types")),
        Case("decode_bmes-empty", lambda: spans.decode_bmes([], types), returns(lambda s: s == ())),
        Case("decode_bmes-ok", lambda: spans.decode_bmes(["B-PER", "E-PER", "O", "S-LOC"], types),
             returns(lambda s: s == ((0, 1, "PER"), (3, 3, "LOC")))),
    ]


# --------------------------------------------------------------------------- kexue.metrics


def metrics_cases() -> list[Case]:
    e = {(0, 1, 1)}
    return [
        Case("entity_prf-single-set", lambda: metrics.entity_prf(e, e), raises(TypeError, "sequences")),
        Case("entity_prf-string", lambda: metrics.entity_prf("abc", ["abc"]), raises(TypeError, "pred")),
        Case("entity_prf-generator", lambda: metrics.entity_prf((s for s in [e]), [e]), raises(TypeError, "pred")),
        Case("entity_prf-none", lambda: metrics.entity_prf([e], None), raises(TypeError, "gold")),
        Case("entity_prf-lengths", lambda: metrics.entity_prf([e], [e, e]), raises(ValueError, "one entry per sample")),
        Case("entity_prf-unhashable", lambda: metrics.entity_prf([[[0, 1, 1]]], [e]), raises(TypeError, r"pred\[0\]")),
        Case("entity_prf-sample-string", lambda: metrics.entity_prf(["abc"], [e]), raises(TypeError, r"pred\[0\]")),
        Case("entity_prf-empty", lambda: metrics.entity_prf([], []), returns(lambda p: p.f1 == 0.0 and p.tp == 0)),
        Case("entity_prf-ok", lambda: metrics.entity_prf([e, {(1, 0, 2)}], [e, set()]),
             returns(lambda p: (p.tp, p.n_pred, p.n_gold) == (1, 2, 1) and abs(p.f1 - 2 / 3) < 1e-12)),
        Case("per_type_prf-short-entity", lambda: metrics.per_type_prf([{(1,)}], [set()], type_index=3),
             raises(ValueError, "type_index")),
        Case("per_type_prf-index-string", lambda: metrics.per_type_prf([e], [e], type_index="0"),
             raises(TypeError, "type_index")),
        Case("per_type_prf-empty", lambda: metrics.per_type_prf([], []), returns(lambda d: d == {})),
        Case("tensor_f1-list", lambda: metrics.tensor_f1([[1.0]], torch.ones(1, 1)), raises(TypeError, "logits")),
        Case("tensor_f1-targets-list", lambda: metrics.tensor_f1(torch.ones(1, 1), [[1.0]]),
             raises(TypeError, "targets")),
        Case("tensor_f1-shape", lambda: metrics.tensor_f1(torch.zeros(2, 3), torch.zeros(3, 2)),
             raises(ValueError, "shape")),
        Case("tensor_f1-nan-logits", lambda: metrics.tensor_f1(torch.tensor([NAN, 1.0]), torch.tensor([1, 1])),
             raises(ValueError, "logits")),
        Case("tensor_f1-soft-targets", lambda: metrics.tensor_f1(torch.ones(2), torch.tensor([0.5, 1.0])),
             raises(ValueError, "targets")),
        Case("tensor_f1-bool-logits", lambda: metrics.tensor_f1(torch.ones(2, dtype=torch.bool), torch.ones(2)),
             raises(TypeError, "logits")),
        Case("tensor_f1-threshold-nan", lambda: metrics.tensor_f1(torch.ones(2), torch.ones(2), NAN),
             raises(ValueError, "threshold")),
        Case("tensor_f1-threshold-string", lambda: metrics.tensor_f1(torch.ones(2), torch.ones(2), "0"),
             raises(ValueError, "threshold")),
        Case("tensor_f1-empty", lambda: metrics.tensor_f1(torch.zeros(0), torch.zeros(0)),
             returns(lambda f: float(f) == 0.0)),
        Case("tensor_f1-masked-cells",
             lambda: metrics.tensor_f1(torch.tensor([-INF, 2.0, 3.0]), torch.tensor([0, 1, 0])),
             returns(lambda f: abs(float(f) - 2 / 3) < 1e-12)),
    ]


# --------------------------------------------------------------------------- the suite

#: one table per module; other modules add theirs here (see the module docstring)
TABLES: list[Callable[[], list[Case]]] = [
    checks_cases, nn_cases, mixers_cases, rope_cases, losses_cases, spans_cases, metrics_cases,
]
CASES: list[Case] = [case for table in TABLES for case in table()]
#: the suite must keep at least this many cases (it only grows)
FLOOR = 500
TRIED: list[str] = []


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def run_case(case: Case) -> None:
    """Run one case: the expected clear error with a message matching the pattern, or a finite, checked result.

    A clear error is a ``TypeError`` or ``ValueError`` (``OSError`` for a file-system path).
    Other bad-input tables can import and use this runner.
    """
    if isinstance(case.expect, Raises):
        with pytest.raises(case.expect.error) as info:
            case.call()
        assert re.search(case.expect.pattern, str(info.value)), (
            f"{type(info.value).__name__} message {str(info.value)!r} does not match {case.expect.pattern!r}"
        )
        # ImportError: a missing data package, whose message names the command that installs it
        assert isinstance(info.value, (TypeError, ValueError, OSError, ImportError)), (
            f"{type(info.value).__name__} is not a clear error"
        )
    else:
        out = case.call()
        bad = _non_finite(out)
        assert not bad, f"non-finite values at {bad} in {out!r}"
        assert case.expect.check(out), f"wrong result: {out!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case):
    TRIED.append(case.id)
    run_case(case)


def test_runner_fails_vague_errors_and_wrong_results():
    """The runner fails a case whose error does not name the argument or is not a clear error type,
    and a case whose result is wrong or not finite."""
    vague = Case("vague", lambda: torch.zeros(2)[5], raises((IndexError, ValueError), "input_ids"))
    with pytest.raises(AssertionError, match="does not match"):
        run_case(vague)
    obscure = Case("obscure", lambda: torch.zeros(2)[5], raises(IndexError, "index 5"))
    with pytest.raises(AssertionError, match="not a clear error"):
        run_case(obscure)
    wrong = Case("wrong", lambda: torch.ones(2), returns(lambda out: out.sum().item() == 3))
    with pytest.raises(AssertionError, match="wrong result"):
        run_case(wrong)
    nan = Case("nan", lambda: torch.tensor([NAN]), returns())
    with pytest.raises(AssertionError, match="non-finite"):
        run_case(nan)


def test_zz_case_count(capsys):
    """Prints how many cases ran (runs last: pytest keeps the file's order)."""
    with capsys.disabled():
        print(f"\nbad-input suite: {len(TRIED)} of {len(CASES)} cases tried")
    assert len(CASES) >= FLOOR, f"the bad-input suite shrank to {len(CASES)} cases (floor {FLOOR})"
    if len(TRIED) < len(CASES):
        pytest.skip(f"only {len(TRIED)} of the {len(CASES)} cases were selected in this session")
    assert len(TRIED) >= FLOOR
