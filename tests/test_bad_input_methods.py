"""Bad input against the method modules of chapters 01, 06, 07 and pretraining, in the
format of ``tests/test_bad_input.py`` (its ``Case``/``raises``/``returns`` tables).

Tables: ``kexue.simcse``, ``kexue.accumulation``, ``kexue.growth``, ``kexue.mlm``,
``kexue.pretrained``, ``kexue.tokenizer``, ``kexue.data`` (argument checks only: no
corpus is read), ``kexue.experiments.pretrain`` and ``kexue.experiments.simcse_training``.
A ``raises`` case must raise that error with a message naming the argument; a
``returns`` case must return finite values that pass its check (so a finite but wrong
answer fails too). The last test prints the number of cases and checks ``FLOOR``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_bad_input import Case, raises, returns, run_case

from kexue import accumulation as acc
from kexue import data, growth, mlm, simcse
from kexue.experiments import pretrain as pretrain_run
from kexue.experiments.simcse_training import PooledEncoder, train_simcse
from kexue.losses import simcse_loss
from kexue.nn import MaskedLM, TransformerConfig, TransformerEncoder
from kexue.pretrained import ZH_CHAR_BERT, load_zh_char_bert, save_pretrained, training_record
from kexue.tokenizer import CharTokenizer

NAN, INF = float("nan"), float("inf")
#: a folder that does not exist and cannot be created (its parent is this file), so no case can write there
NOWHERE = Path(__file__).resolve() / "no-such-folder"
TEXTS = ["今天天气很好", "我们去公园散步", "好", "天气预报说明天下雨", "山水之间", "东南西北"]


# --------------------------------------------------------------------------- builders (each call makes new objects)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _close(a: Any, b: Any, tol: float = 1e-10) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol))


def _states() -> list[torch.Tensor]:
    """Embedding output and two block outputs, ``(3, 5, 4)`` float64."""
    return [_randn(3, 5, 4, seed=s) for s in range(3)]


def _mask() -> torch.Tensor:
    return torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)


def _with(x: torch.Tensor, value: float, index: tuple[int, ...] = (0, 0)) -> torch.Tensor:
    x = x.clone()
    x[index] = value
    return x


def _poison_padding(hs: list[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for h in hs:
        h = h.clone()
        h[~mask] = torch.tensor([INF, NAN, -INF], dtype=h.dtype)[torch.arange(int((~mask).sum())) % 3][:, None]
        out.append(h)
    return out


def _tokenizer() -> CharTokenizer:
    return CharTokenizer.build(TEXTS, min_count=1)


def _cfg(vocab_size: int = 40, **kw: Any) -> TransformerConfig:
    base = dict(vocab_size=vocab_size, dim=16, depth=1, heads=2, ffn_dim=32, max_len=16, dropout=0.0,
                attention_dropout=0.0, layer_norm_eps=1e-5)
    base.update(kw)
    return TransformerConfig(**base)


def _mlm(vocab_size: int | None = None, **kw: Any) -> MaskedLM:
    torch.manual_seed(0)
    return MaskedLM(_cfg(vocab_size or _tokenizer().vocab_size, **kw)).eval()


def _ids(batch: int = 4, seq: int = 6, vocab: int = 40) -> torch.Tensor:
    ids = torch.randint(5, vocab, (batch, seq), generator=_gen(1))
    ids[-1, seq // 2:] = 0  # padding
    return ids


class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _x(n: int = 8) -> torch.Tensor:
    return _randn(n, 6, seed=3)


def _sentence_encoder(**kw: Any) -> acc.SentenceEncoder:
    torch.manual_seed(0)
    return acc.SentenceEncoder(TransformerEncoder(_cfg()).double().eval(), **kw)


def _mean_by_loop(enc: acc.SentenceEncoder, ids: torch.Tensor) -> torch.Tensor:
    """Mean pooling one sentence at a time, its padding cut off (the reference)."""
    rows = []
    for row in ids:
        real = row[row != enc.pad_token_id][None]
        rows.append(enc.encoder(real, torch.ones_like(real, dtype=torch.bool))[0].mean(0))
    return torch.stack(rows)


def _frozen(model: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module:
    for name, p in model.named_parameters():
        if any(name.startswith(n) for n in names):
            p.requires_grad_(False)
    return model


def _flags(model: torch.nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def _in_checkpoint(edit: Callable[[Path], Any], call: Callable[[Path], Any]) -> Any:
    """Write a tiny checkpoint into a fresh folder, ``edit`` it, return ``call(folder)``."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "ckpt"
        tok = _tokenizer()
        save_pretrained(_mlm(tok.vocab_size), tok, folder)
        edit(folder)
        return call(folder)


def _write(name: str, text: str) -> Callable[[Path], Any]:
    return lambda folder: (folder / name).write_text(text, encoding="utf-8")


def _config_with(**fields: Any) -> Callable[[Path], Any]:
    def edit(folder: Path) -> None:
        saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        _write("config.json", json.dumps({**saved, **fields}))(folder)

    return edit


def _delete(name: str) -> Callable[[Path], Any]:
    return lambda folder: (folder / name).unlink()


def _pretrain_config(**kw: Any) -> pretrain_run.PretrainConfig:
    base = dict(out=str(NOWHERE / "pretrain"), steps=2)
    base.update(kw)
    return pretrain_run.PretrainConfig(**base)


# --------------------------------------------------------------------------- kexue.simcse


def simcse_cases() -> list[Case]:
    hs, mask = _states, _mask
    additive = lambda: (~_mask()).double() * -1e4  # noqa: E731  (Hugging Face's extended mask)
    cases = [
        # the mask contract (kexue.checks.token_mask)
        Case("pool-mask-additive-1e4", lambda: simcse.pool(hs(), additive(), "last-avg"),
             raises(TypeError, r"additive attention mask.*`mask == 0`")),
        Case("pool-mask-additive-inf",
             lambda: simcse.pool(hs(), torch.zeros(3, 5).masked_fill(~mask(), -INF), "first-last-avg"),
             raises(TypeError, r"additive.*`mask == 0`")),
        Case("pool-mask-additive-no-padding", lambda: simcse.pool(hs(), torch.zeros(3, 5), "last-avg"),
             raises(TypeError, "`mask == 0`")),
        Case("pool-mask-half", lambda: simcse.pool(hs(), torch.full((3, 5), 0.5), "last-avg"),
             raises(TypeError, "mask must be bool or integer 0/1")),
        Case("pool-mask-float01", lambda: simcse.pool(hs(), mask().float(), "last-avg"),
             returns(lambda out: torch.equal(out, simcse.pool(hs(), mask(), "last-avg")))),
        Case("pool-mask-two", lambda: simcse.pool(hs(), mask().long() * 2, "last-avg"),
             raises(ValueError, "only 0 and 1")),
        Case("pool-mask-list", lambda: simcse.pool(hs(), mask().tolist(), "cls"),
             raises(TypeError, "mask must be a torch.Tensor")),
        Case("pool-mask-shape", lambda: simcse.pool(hs(), mask()[:, :3], "cls"),
             raises(ValueError, r"mask must have shape \(batch, seq\)=\(3, 5\)")),
        Case("pool-mask-empty-row",
             lambda: simcse.pool(hs(), mask() & torch.tensor([[1], [1], [0]]).bool(), "last-avg"),
             raises(ValueError, r"every sequence needs at least one real .* rows \[2\]")),
        Case("pool-mask-int64", lambda: simcse.pool(hs(), mask().long(), "first-last-avg"),
             returns(lambda v: _close(v, simcse.pool(hs(), mask(), "first-last-avg")))),
        Case("pool-mask-uint8", lambda: simcse.pool(hs(), mask().to(torch.uint8), "last-avg"),
             returns(lambda v: _close(v, simcse.pool(hs(), mask(), "last-avg")))),
        Case("pool-empty-batch", lambda: simcse.pool([h[:0] for h in hs()], mask()[:0], "last-avg"),
             returns(lambda v: v.shape == (0, 4))),
        # padding never influences real tokens, whatever it holds
        *[Case(f"pool-nonfinite-padding-{p}", lambda p=p: simcse.pool(_poison_padding(hs(), mask()), mask(), p),
               returns(lambda v, p=p: _close(v, simcse.pool(hs(), mask(), p))))
          for p in ("cls", "last-avg", "first-last-avg")],
        # hidden states
        Case("pool-states-stacked-tensor", lambda: simcse.pool(torch.stack(hs()), mask()),
             raises(TypeError, "hidden_states must be a sequence")),
        Case("pool-states-one", lambda: simcse.pool(hs()[:1], mask()), raises(ValueError, "hidden_states must hold")),
        Case("pool-states-int", lambda: simcse.pool([h.long() for h in hs()], mask()),
             raises(TypeError, r"hidden_states\[-1\] must be a floating")),
        Case("pool-states-2d", lambda: simcse.pool([h[:, 0] for h in hs()], mask()),
             raises(ValueError, r"hidden_states\[-1\] must have 3 dimensions")),
        Case("pool-states-list-of-lists", lambda: simcse.pool([h.tolist() for h in hs()], mask()),
             raises(TypeError, r"hidden_states\[-1\] must be a torch.Tensor")),
        Case("pool-states-shapes-differ", lambda: simcse.pool([hs()[0], hs()[1][:, :4], hs()[2]], mask()),
             raises(ValueError, "hidden_states must share one shape")),
        Case("pool-unknown", lambda: simcse.pool(hs(), mask(), "max"), raises(ValueError, "pooling must be one of")),
        Case("pool-pooler-missing", lambda: simcse.pool(hs(), mask(), "pooler"), raises(ValueError, "pooler")),
        # whitening
        Case("fit_whitening-nan", lambda: simcse.fit_whitening(_with(_randn(20, 4), NAN)),
             raises(ValueError, "embeddings must be finite, got 1 NaN")),
        Case("fit_whitening-inf", lambda: simcse.fit_whitening(_with(_randn(20, 4), -INF, (3, 2))),
             raises(ValueError, "embeddings must be finite")),
        Case("fit_whitening-int", lambda: simcse.fit_whitening(torch.arange(20).reshape(5, 4)),
             raises(TypeError, "embeddings must be a floating")),
        Case("fit_whitening-list", lambda: simcse.fit_whitening(_randn(20, 4).tolist()),
             raises(ValueError, "embeddings must be a 2D tensor")),
        Case("fit_whitening-1d", lambda: simcse.fit_whitening(_randn(20)),
             raises(ValueError, "embeddings must be a 2D")),
        Case("fit_whitening-one-row", lambda: simcse.fit_whitening(_randn(1, 4)),
             raises(ValueError, "at least 2 rows")),
        Case("fit_whitening-empty", lambda: simcse.fit_whitening(_randn(0, 4)), raises(ValueError, "at least 2 rows")),
        Case("fit_whitening-identical", lambda: simcse.fit_whitening(torch.ones(5, 4)),
             raises(ValueError, "identical")),
        *[Case(f"fit_whitening-n_components-{cid}", lambda k=k: simcse.fit_whitening(_randn(20, 4), n_components=k),
               raises(ValueError, r"n_components must be an int in \[1, 4\]"))
          for cid, k in (("zero", 0), ("negative", -1), ("too-many", 5), ("float", 2.0), ("bool", True), ("str", "2"))],
        Case("fit_whitening-n_components-zero-variance",
             lambda: simcse.fit_whitening(torch.nn.functional.layer_norm(_randn(50, 4), (4,)), n_components=4),
             raises(ValueError, "zero variance")),
        Case("fit_whitening-float32-identity-covariance",
             lambda: simcse.apply_whitening(_randn(200, 4).float(), *simcse.fit_whitening(_randn(200, 4).float())),
             returns(lambda z: z.dtype == torch.float32
                     and _close(torch.cov(z.T.double()), torch.eye(4, dtype=torch.float64), 1e-4))),
        Case("apply_whitening-dtypes",
             lambda: simcse.apply_whitening(_randn(5, 4).float(), *simcse.fit_whitening(_randn(20, 4))),
             raises(TypeError, "embeddings is torch.float32 but mean is torch.float64")),
        Case("apply_whitening-w-shape",
             lambda: simcse.apply_whitening(_randn(5, 3), torch.zeros(1, 3, dtype=torch.float64),
                                                                       torch.eye(4, dtype=torch.float64)),
             raises(ValueError, r"w must have shape \(3, k\)")),
        Case("apply_whitening-mean-shape",
             lambda: simcse.apply_whitening(_randn(5, 4), torch.zeros(1, 3, dtype=torch.float64),
                                                                          torch.eye(4, dtype=torch.float64)),
             raises(ValueError, r"mean must have shape \(1, 4\)")),
        Case("apply_whitening-list",
             lambda: simcse.apply_whitening(_randn(5, 4).tolist(), *simcse.fit_whitening(_randn(20, 4))),
             raises(TypeError, "embeddings must be a torch.Tensor")),
        Case("apply_whitening-mean-1d",
             lambda: simcse.apply_whitening(_randn(5, 4), torch.zeros(4, dtype=torch.float64),
                                                                       torch.eye(4, dtype=torch.float64)),
             returns(lambda z: _close(z, _randn(5, 4)))),
        # cosine scores and Spearman
        Case("cosine_scores-shapes", lambda: simcse.cosine_scores(_randn(4, 3), _randn(2, 3)),
             raises(ValueError, "same shape")),
        Case("cosine_scores-1d", lambda: simcse.cosine_scores(_randn(3), _randn(3)),
             raises(ValueError, "a must have 2 dimensions")),
        Case("cosine_scores-3d", lambda: simcse.cosine_scores(_randn(2, 2, 3), _randn(2, 2, 3)),
             raises(ValueError, "a must have 2")),
        Case("cosine_scores-nan", lambda: simcse.cosine_scores(_randn(4, 3), _with(_randn(4, 3), NAN)),
             raises(ValueError, "b must be finite")),
        Case("cosine_scores-list", lambda: simcse.cosine_scores(_randn(4, 3).tolist(), _randn(4, 3)),
             raises(TypeError, "a must be a torch.Tensor")),
        Case("cosine_scores-int", lambda: simcse.cosine_scores(torch.ones(4, 3, dtype=torch.long), _randn(4, 3)),
             raises(TypeError, "a must be a floating")),
        Case("cosine_scores-zero-row", lambda: simcse.cosine_scores(torch.zeros(2, 3), _randn(2, 3).float()),
             returns(lambda s: s.tolist() == [0.0, 0.0])),
        Case("cosine_scores-mixed-dtypes", lambda: simcse.cosine_scores(_randn(2, 3).float(), 2 * _randn(2, 3)),
             returns(lambda s: _close(s, torch.ones(2, dtype=torch.float64), 1e-6))),
        Case("spearman-nan", lambda: simcse.spearman([0.1, NAN, 0.3, 0.2], [1, 2, 3, 4]),
             raises(ValueError, "scores must be finite")),
        Case("spearman-gold-inf", lambda: simcse.spearman([0.1, 0.2, 0.3], [1, INF, 3]),
             raises(ValueError, "gold must be finite")),
        Case("spearman-constant-scores", lambda: simcse.spearman([0.5] * 4, [1, 2, 3, 4]),
             raises(ValueError, "scores are all equal")),
        Case("spearman-constant-gold", lambda: simcse.spearman([1, 2, 3, 4], [3.0] * 4),
             raises(ValueError, "gold are all equal")),
        Case("spearman-lengths", lambda: simcse.spearman([1, 2, 3, 4], [1, 2, 3]), raises(ValueError, "same length")),
        Case("spearman-too-short", lambda: simcse.spearman([1, 2], [1, 2]), raises(ValueError, "at least 3")),
        Case("spearman-2d", lambda: simcse.spearman(torch.ones(2, 3), torch.ones(2, 3)), raises(ValueError, "1D")),
        Case("spearman-tensor-and-numpy", lambda: simcse.spearman(torch.tensor([1.0, 3.0, 2.0]), np.array([1, 3, 2])),
             returns(lambda r: r == pytest.approx(1.0))),
    ]
    # encode and sts_spearman
    tok, model = _tokenizer, lambda: _mlm()
    pairs = [(TEXTS[i], TEXTS[j], float(i + j)) for i in range(4) for j in range(i + 1, 4)]
    cases += [
        Case("encode-texts-str", lambda: simcse.encode(model(), tok(), "今天"),
             raises(TypeError, "texts must be a sequence")),
        Case("encode-texts-empty", lambda: simcse.encode(model(), tok(), []),
             raises(ValueError, "texts must not be empty")),
        Case("encode-texts-none-item", lambda: simcse.encode(model(), tok(), ["好", None]),
             raises(TypeError, r"texts\[1\] must be a str")),
        Case("encode-texts-tensor", lambda: simcse.encode(model(), tok(), torch.ones(3)), raises(TypeError, "texts")),
        Case("encode-pooling-unknown", lambda: simcse.encode(model(), tok(), TEXTS, "max"),
             raises(ValueError, "pooling")),
        Case("encode-pooling-empty", lambda: simcse.encode(model(), tok(), TEXTS, []),
             raises(ValueError, "pooling must name")),
        Case("encode-pooler-missing", lambda: simcse.encode(model(), tok(), TEXTS, "pooler"),
             raises(ValueError, "pooler")),
        Case("encode-batch-size-zero", lambda: simcse.encode(model(), tok(), TEXTS, batch_size=0),
             raises(ValueError, "batch_size")),
        Case("encode-max-len-one", lambda: simcse.encode(model(), tok(), TEXTS, max_len=1),
             raises(ValueError, "max_len")),
        Case("encode-longer-than-the-model", lambda: simcse.encode(model(), tok(), ["好" * 30], max_len=40),
             raises(ValueError, "exceeds max_len=16")),
        Case("encode-model-linear", lambda: simcse.encode(torch.nn.Linear(2, 2), tok(), TEXTS),
             raises(TypeError, "model must be")),
        Case("encode-tokenizer-hf-like", lambda: simcse.encode(model(), object(), TEXTS),
             raises(TypeError, "tokenizer must be")),
        Case("encode-tokenizer-larger-vocab", lambda: simcse.encode(_mlm(12), tok(), TEXTS),
             raises(ValueError, "tokenizer has .* tokens but the model's vocabulary has 12")),
        Case("encode-one-text", lambda: simcse.encode(model(), tok(), ["好"], "cls"),
             returns(lambda v: v.shape == (1, 16))),
        Case("sts_spearman-pairs-str", lambda: simcse.sts_spearman(model(), tok(), "abc"),
             raises(TypeError, "pairs must be")),
        Case("sts_spearman-pairs-two-fields",
             lambda: simcse.sts_spearman(model(), tok(), [(a, b) for a, b, _ in pairs]),
             raises(TypeError, r"pairs\[0\] must be a \(text, text, score\)")),
        Case("sts_spearman-pairs-score-str",
             lambda: simcse.sts_spearman(model(), tok(), [(a, b, "1") for a, b, _ in pairs]),
             raises(TypeError, r"pairs\[0\]")),
        Case("sts_spearman-too-few", lambda: simcse.sts_spearman(model(), tok(), pairs[:2], ("cls",)),
             raises(ValueError, "at least 3")),
        Case("sts_spearman-empty", lambda: simcse.sts_spearman(model(), tok(), [], ("cls",)),
             raises(ValueError, "texts must not be empty")),
        Case("sts_spearman-ok", lambda: simcse.sts_spearman(model(), tok(), pairs, ("last-avg",)),
             returns(lambda r: -1 <= r["raw"]["last-avg"] <= 1 and -1 <= r["whitening"]["last-avg"] <= 1)),
    ]
    return cases


# --------------------------------------------------------------------------- kexue.accumulation


def accumulation_cases() -> list[Case]:
    enc, x = _MLP, _x
    sim = lambda h: simcse_loss(h)  # noqa: E731
    cb = acc.contrastive_backward
    cases = [
        Case("contrastive-micro-zero", lambda: cb(enc(), x(), sim, 0),
             raises(ValueError, "micro_batch_size must be >= 1")),
        Case("contrastive-micro-negative", lambda: cb(enc(), x(), sim, -2), raises(ValueError, "micro_batch_size")),
        Case("contrastive-micro-float", lambda: cb(enc(), x(), sim, 2.0),
             raises(TypeError, "micro_batch_size must be an int")),
        Case("contrastive-micro-bool", lambda: cb(enc(), x(), sim, True), raises(TypeError, "micro_batch_size")),
        Case("contrastive-micro-tensor", lambda: cb(enc(), x(), sim, torch.tensor(2)),
             raises(TypeError, "micro_batch_size")),
        Case("contrastive-micro-str", lambda: cb(enc(), x(), sim, "2"), raises(TypeError, "micro_batch_size")),
        Case("contrastive-micro-none", lambda: cb(enc(), x(), sim, None), raises(TypeError, "micro_batch_size")),
        # a micro-batch size that does not divide the batch leaves a smaller last micro-batch;
        # one larger than the batch is a single micro-batch: both give the full-batch loss
        Case("contrastive-micro-not-dividing", lambda: cb(enc(), x(), sim, 3),
             returns(lambda loss: torch.equal(loss, acc.full_batch_backward(enc(), x(), sim)))),
        Case("contrastive-micro-larger-than-batch", lambda: cb(enc(), x(), sim, 16),
             returns(lambda loss: torch.equal(loss, acc.full_batch_backward(enc(), x(), sim)))),
        Case("contrastive-inputs-empty", lambda: cb(enc(), x()[:0], sim, 2),
             raises(ValueError, r"inputs\[0\] is empty")),
        Case("contrastive-inputs-empty-tuple", lambda: cb(enc(), (), sim, 2), raises(ValueError, "non-empty tuple")),
        Case("contrastive-inputs-list-of-lists", lambda: cb(enc(), x().tolist(), sim, 2),
             raises(TypeError, r"inputs\[0\] must be a tensor, got list")),
        Case("contrastive-inputs-int", lambda: cb(enc(), 8, sim, 2),
             raises(TypeError, "inputs must be a tensor or a tuple")),
        Case("contrastive-inputs-none", lambda: cb(enc(), None, sim, 2), raises(TypeError, "inputs must be")),
        Case("contrastive-inputs-0d", lambda: cb(enc(), torch.tensor(1.0), sim, 1),
             raises(ValueError, "batch dimension")),
        Case("contrastive-inputs-unequal", lambda: cb(enc(), (x(), x(6)), lambda a, b: sim(a), 2),
             raises(ValueError, "same batch size")),
        Case("contrastive-ids-float", lambda: cb(_sentence_encoder(), _ids().double(), sim, 2),
             raises(ValueError, "input_ids must be an integer tensor")),
        Case("contrastive-ids-outside-vocab", lambda: cb(_sentence_encoder(), _ids() + 40, sim, 2),
             raises(ValueError, "vocab_size=40")),
        Case("contrastive-sentence-encoder-ok", lambda: cb(_sentence_encoder(), _ids(), sim, 2),
             returns(lambda loss: loss.shape == ())),
        Case("contrastive-loss-not-callable", lambda: cb(enc(), x(), 0.05, 2),
             raises(TypeError, "loss_fn must be callable")),
        Case("contrastive-loss-vector", lambda: cb(enc(), x(), lambda h: h.sum(0), 2),
             raises(ValueError, "loss_fn must return a floating scalar")),
        Case("contrastive-loss-int", lambda: cb(enc(), x(), lambda h: torch.tensor(1), 2),
             raises(ValueError, "floating scalar")),
        Case("contrastive-loss-float", lambda: cb(enc(), x(), lambda h: 1.0, 2),
             raises(ValueError, "floating scalar tensor, got float")),
        Case("contrastive-loss-detached", lambda: cb(enc(), x(), lambda h: sim(h).detach(), 2),
             raises(ValueError, "loss_fn returned a loss without a gradient")),
        Case("contrastive-loss-nan", lambda: cb(enc(), x(), lambda h: sim(h) * NAN, 2),
             raises(ValueError, "non-finite loss")),
        Case("contrastive-temperature-negative", lambda: cb(enc(), x(), lambda h: simcse_loss(h, -1.0), 2),
             raises(ValueError, "temperature")),
        Case("contrastive-temperature-nan", lambda: cb(enc(), x(), lambda h: simcse_loss(h, NAN), 2),
             raises(ValueError, "temperature")),
        Case("contrastive-temperature-vector", lambda: cb(enc(), x(), lambda h: simcse_loss(h, torch.ones(2)), 2),
             raises((ValueError, TypeError), "temperature")),
        Case("contrastive-temperature-learnable", lambda: _learnable_temperature_grad(),
             returns(lambda g: g[0].shape == () and bool(torch.isclose(g[0], g[1], rtol=1e-10, atol=1e-12)))),
        Case("contrastive-replay-rng-str", lambda: cb(enc(), x(), sim, 2, replay_rng="no"),
             raises(TypeError, "replay_rng must be a bool")),
        Case("contrastive-encoder-lambda", lambda: cb(lambda t: t, x(), sim, 2),
             raises(TypeError, "encoder must be a torch.nn.Module")),
        Case("contrastive-encoder-drops-rows", lambda: cb(_RowDropper(), x(), sim, 2),
             raises(ValueError, "one row per input row")),
        Case("contrastive-batchnorm",
             lambda: cb(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4)).double(),
                                                 x(), sim, 2), raises(ValueError, "BatchNorm")),
        Case("contrastive-one-micro-batch", lambda: cb(enc(), x(), sim, 8), returns(lambda loss: loss.shape == ())),
        Case("full_batch-inputs-list-of-lists", lambda: acc.full_batch_backward(enc(), x().tolist(), sim),
             raises(TypeError, r"inputs\[0\] must be a tensor")),
        Case("full_batch-inputs-empty", lambda: acc.full_batch_backward(enc(), (), sim),
             raises(ValueError, "non-empty")),
        Case("full_batch-inputs-str", lambda: acc.full_batch_backward(enc(), "abc", sim),
             raises(TypeError, "inputs must be")),
        Case("full_batch-loss-not-callable", lambda: acc.full_batch_backward(enc(), x(), None),
             raises(TypeError, "loss_fn")),
        Case("full_batch-micro-none", lambda: acc.full_batch_backward(enc(), x(), sim),
             returns(lambda loss: loss.shape == ())),
        # naive accumulation evaluates the loss per micro-batch: an odd one splits a SimCSE pair
        Case("naive-micro-odd-splits-a-pair", lambda: acc.naive_accumulation_backward(enc(), x(), sim, 3),
             raises(ValueError, "even number of rows")),
        Case("naive-loss-not-callable", lambda: acc.naive_accumulation_backward(enc(), x(), "loss", 2),
             raises(TypeError, "loss_fn")),
        Case("openclip-replay-rng-int", lambda: acc.openclip_style_backward(enc(), x(), sim, 2, replay_rng=1),
             raises(TypeError, "replay_rng")),
        Case("openclip-micro-zero", lambda: acc.openclip_style_backward(enc(), x(), sim, 0),
             raises(ValueError, "micro_batch_size")),
        Case("distributed-no-group", lambda: acc.distributed_contrastive_backward(enc(), x(), sim, 2),
             raises(ValueError, "process group")),
        Case("rank_streams-seeds-negative",
             lambda: acc.rank_streams_reference_backward(enc(), [x(), x()], sim, 2, [0, -1]),
             raises(ValueError, r"seeds\[1\]")),
        Case("rank_streams-seeds-float", lambda: acc.rank_streams_reference_backward(enc(), [x()], sim, 2, [0.5]),
             raises(ValueError, r"seeds\[0\]")),
        Case("rank_streams-lengths", lambda: acc.rank_streams_reference_backward(enc(), [x(), x()], sim, 2, [0]),
             raises(ValueError, "equal length")),
        # SentenceEncoder
        Case("SentenceEncoder-pooling", lambda: _sentence_encoder(pooling="max"),
             raises(ValueError, "pooling must be one of")),
        Case("SentenceEncoder-pad-negative", lambda: _sentence_encoder(pad_token_id=-1),
             raises(ValueError, "pad_token_id")),
        Case("SentenceEncoder-pad-float", lambda: _sentence_encoder(pad_token_id=0.0),
             raises(ValueError, "pad_token_id")),
        Case("SentenceEncoder-encoder-lambda", lambda: acc.SentenceEncoder(lambda ids, mask: ids),
             raises(TypeError, "encoder")),
        Case("SentenceEncoder-ids-float", lambda: _sentence_encoder()(_ids().double()),
             raises(ValueError, "input_ids must be an integer")),
        Case("SentenceEncoder-ids-bool", lambda: _sentence_encoder()(_ids() > 7), raises(ValueError, "input_ids")),
        Case("SentenceEncoder-ids-list", lambda: _sentence_encoder()(_ids().tolist()),
             raises(TypeError, "input_ids must be a torch.Tensor")),
        Case("SentenceEncoder-ids-1d", lambda: _sentence_encoder()(_ids()[0]),
             raises(ValueError, r"input_ids must have shape \(batch, seq\)")),
        Case("SentenceEncoder-ids-outside-vocab", lambda: _sentence_encoder()(_ids() + 40),
             raises(ValueError, "vocab_size=40")),
        Case("SentenceEncoder-all-padding-row",
             lambda: _sentence_encoder()(torch.cat([_ids(), torch.zeros(1, 6, dtype=torch.long)])),
             raises(ValueError, r"every sequence needs at least one real .* rows \[4\]")),
        Case("SentenceEncoder-empty-batch", lambda: _sentence_encoder()(_ids()[:0]),
             returns(lambda h: h.shape == (0, 16))),
        Case("SentenceEncoder-mean-over-real-tokens", lambda: _sentence_encoder()(_ids()),
             returns(lambda h: _close(h, _mean_by_loop(_sentence_encoder(), _ids()), 1e-10))),
        Case("SentenceEncoder-cls", lambda: _sentence_encoder(pooling="cls")(_ids()),
             returns(lambda h: _close(h, _sentence_encoder().encoder(_ids(), _ids() != 0)[:, 0]))),
        # tools
        Case("grad_vector-no-trainable", lambda: acc.grad_vector(_frozen(_MLP(), ("net",))),
             raises(ValueError, "no trainable parameters")),
        Case("grad_vector-not-module", lambda: acc.grad_vector(torch.ones(3)), raises(TypeError, r"modules\[0\]")),
        Case("relative_error-nan", lambda: acc.relative_error(_with(_randn(4), NAN, (1,)), _randn(4)),
             raises(ValueError, "x must be finite")),
        Case("relative_error-reference-inf", lambda: acc.relative_error(_randn(4), _with(_randn(4), INF, (1,))),
             raises(ValueError, "reference must be finite")),
        Case("relative_error-shapes", lambda: acc.relative_error(_randn(4), _randn(3)),
             raises(ValueError, "same shape")),
        Case("relative_error-list", lambda: acc.relative_error([1.0], _randn(1)),
             raises(TypeError, "x must be a torch.Tensor")),
        Case("relative_error-empty", lambda: acc.relative_error(_randn(0), _randn(0)), raises(ValueError, "empty")),
        Case("relative_error-zero-reference", lambda: acc.relative_error(torch.zeros(3), torch.zeros(3)),
             returns(lambda e: e == 0.0)),
        Case("check_no_batchnorm-eval-ok", lambda: acc.check_no_batchnorm(torch.nn.BatchNorm1d(3).eval()),
             returns(lambda r: r is None)),
    ]
    return cases


class _RowDropper(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:-1]


def _learnable_temperature_grad() -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of a learnable (tensor) temperature from two-pass accumulation and from one full batch."""
    grads = []
    for method in (acc.contrastive_backward, acc.full_batch_backward):
        tau = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
        method(_MLP(), _x(), lambda h, tau=tau: simcse_loss(h, tau), 2)
        grads.append(tau.grad)
    return grads[0], grads[1]


# --------------------------------------------------------------------------- kexue.growth


def growth_cases() -> list[Case]:
    m = lambda: _mlm(40)  # noqa: E731
    frozen = ("encoder.token_embedding", "encoder.blocks.0.ffn")
    bad_factors = (("one", 1), ("zero", 0), ("negative", -2), ("float", 2.0), ("str", "2"), ("bool", True),
                   ("none", None))
    cases = [
        *[Case(f"widen-factor-{cid}", lambda f=f: growth.widen(m(), f),
             raises(ValueError, "factor must be an int >= 2"))
          for cid, f in bad_factors],
        *[Case(f"widen-noise-{cid}", lambda n=n: growth.widen(m(), 2, noise=n), raises(err, "noise"))
          for cid, n, err in (("negative", -0.1, ValueError), ("nan", NAN, ValueError), ("inf", INF, ValueError),
                              ("str", "0.1", TypeError), ("tensor", torch.tensor(0.1), TypeError))],
        Case("widen-generator-int", lambda: growth.widen(m(), 2, noise=0.1, generator=0),
             raises(TypeError, "generator must be a torch.Generator")),
        Case("widen-heads", lambda: growth.widen(m(), 2, heads="both"), raises(ValueError, "heads")),
        Case("widen-convention", lambda: growth.widen(m(), 2, convention="hyper"), raises(ValueError, "convention")),
        Case("widen-attention-fix", lambda: growth.widen(m(), 2, attention_fix="scale"),
             raises(ValueError, "attention_fix")),
        Case("widen-model-linear", lambda: growth.widen(torch.nn.Linear(3, 3), 2), raises(ValueError, "model must be")),
        Case("widen-mixer", lambda: growth.widen(MaskedLM(_cfg(mixer="fnet")), 2), raises(ValueError, "mixer")),
        Case("widen-rotary2d-size", lambda: growth.widen(MaskedLM(_cfg(position="rotary2d", dim=32, heads=2)), 2),
             raises(ValueError, "rotary2d")),
        Case("widen-keeps-frozen-flags",
             lambda: growth.widen(_frozen(m(), frozen), 2),
             returns(lambda big: _flags(big) == _flags(_frozen(m(), frozen)))),
        Case("widen-leaves-source-unchanged", lambda: _unchanged_after(lambda model: growth.widen(model, 2, noise=0.1,
                                                                                               generator=_gen())),
             returns(lambda same: same)),
        Case("deepen-positions-int", lambda: growth.deepen(m(), positions=1),
             raises(TypeError, "positions must be a sequence")),
        Case("deepen-positions-str", lambda: growth.deepen(m(), positions="01"), raises(TypeError, "positions")),
        Case("deepen-positions-empty", lambda: growth.deepen(m(), positions=[]),
             raises(ValueError, "positions must name")),
        Case("deepen-positions-out-of-range", lambda: growth.deepen(m(), positions=[2]),
             raises(ValueError, r"positions must be ints in \[0, depth=1\]")),
        Case("deepen-positions-negative", lambda: growth.deepen(m(), positions=[-1]), raises(ValueError, "positions")),
        Case("deepen-positions-float", lambda: growth.deepen(m(), positions=[1.0]), raises(ValueError, "positions")),
        Case("deepen-factor-and-positions", lambda: growth.deepen(m(), 2, positions=[0]),
             raises(ValueError, "either factor or positions")),
        Case("deepen-factor-one", lambda: growth.deepen(m(), 1), raises(ValueError, "factor")),
        Case("deepen-factor-float", lambda: growth.deepen(m(), 2.5), raises(ValueError, "factor")),
        Case("deepen-generator-seed", lambda: growth.deepen(m(), 2, generator=123), raises(TypeError, "generator")),
        Case("deepen-model-linear", lambda: growth.deepen(torch.nn.Linear(3, 3)), raises(ValueError, "model must be")),
        Case("deepen-keeps-frozen-flags-new-blocks-trainable",
             lambda: growth.deepen(_frozen(_mlm(40, depth=2), ("encoder.blocks.1", "encoder.token_embedding")), 2),
             returns(lambda deep: _flags(deep) == {
                 n: not (n.startswith("encoder.blocks.2.") or n.startswith("encoder.token_embedding"))
                 for n in _flags(deep)})),
        Case("deepen-leaves-source-unchanged",
             lambda: _unchanged_after(lambda model: growth.deepen(model, 2, generator=_gen())),
             returns(lambda same: same)),
        # Expansion and the hidden-state maps
        Case("Expansion-coeff-nan", lambda: growth.Expansion((1.0, NAN)),
             raises(ValueError, "coeffs must hold finite")),
        Case("Expansion-coeff-inf", lambda: growth.Expansion((INF,)), raises(ValueError, "coeffs")),
        Case("Expansion-coeff-str", lambda: growth.Expansion(("1",)), raises(ValueError, "coeffs")),
        Case("Expansion-coeffs-list", lambda: growth.Expansion([1.0, 1.0]),
             raises(ValueError, "coeffs must be a non-empty tuple")),
        Case("Expansion-coeffs-empty", lambda: growth.Expansion(()), raises(ValueError, "coeffs")),
        Case("Expansion-coeffs-zero", lambda: growth.Expansion((0.0, 0.0)), raises(ValueError, "must not all be zero")),
        Case("Expansion-group-zero", lambda: growth.Expansion((1.0,), group=0), raises(ValueError, "group")),
        Case("Expansion-repeat-factor-zero", lambda: growth.Expansion.repeat(0), raises(ValueError, "factor")),
        Case("Expansion-repeat-scale-nan", lambda: growth.Expansion.repeat(2, NAN), raises(ValueError, "scale")),
        Case("Expansion-expand-not-multiple", lambda: growth.Expansion.repeat(2, group=2).expand(torch.ones(3)),
             raises(ValueError, "not a multiple")),
        Case("expand_hidden-list", lambda: growth.expand_hidden([1.0, 2.0]),
             raises(TypeError, "h must be a torch.Tensor")),
        Case("expand_hidden-int", lambda: growth.expand_hidden(torch.ones(3, dtype=torch.long)),
             raises(TypeError, "h must be a floating")),
        Case("expand_hidden-0d", lambda: growth.expand_hidden(torch.tensor(1.0)),
             raises(ValueError, "h must have a feature")),
        Case("expand_hidden-factor-one", lambda: growth.expand_hidden(_randn(2, 3), 1), raises(ValueError, "factor")),
        Case("expand_hidden-convention", lambda: growth.expand_hidden(_randn(2, 3), 2, "copies"),
             raises(ValueError, "convention")),
        Case("expand_hidden-empty", lambda: growth.expand_hidden(_randn(0, 3)), returns(lambda h: h.shape == (0, 6))),
        Case("contract_hidden-not-multiple", lambda: growth.contract_hidden(_randn(2, 5), 2),
             raises(ValueError, r"h's last dimension \(5\) must be a multiple of factor=2")),
        Case("contract_hidden-roundtrip", lambda: growth.contract_hidden(growth.expand_hidden(_randn(2, 3), 3), 3),
             returns(lambda h: _close(h, _randn(2, 3)))),
        Case("perturb-noise-negative", lambda: growth.perturb(m(), -0.1), raises(ValueError, "noise")),
        Case("perturb-noise-nan", lambda: growth.perturb(m(), NAN), raises(ValueError, "noise")),
        Case("perturb-model-dict", lambda: growth.perturb({}, 0.1),
             raises(TypeError, "model must be a torch.nn.Module")),
        Case("perturb-generator-int", lambda: growth.perturb(m(), 0.1, 7), raises(TypeError, "generator")),
        Case("symmetry_gap-factor-not-dividing", lambda: growth.symmetry_gap(m(), 3),
             raises(ValueError, "divisible by factor=3")),
        Case("growth_gains-factor", lambda: growth.growth_gains(m(), 1), raises(ValueError, "factor")),
        Case("widen_hf_bert-not-bert", lambda: growth.widen_hf_bert(torch.nn.Linear(2, 2)),
             raises(ValueError, "BertModel")),
    ]
    return cases


def _unchanged_after(grow: Callable[[torch.nn.Module], Any]) -> bool:
    """Whether ``grow`` leaves its source's values, flags and mode as they were."""
    model = _frozen(_mlm(40), ("encoder.blocks.0.attention",)).train()
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    grow(model)
    return model.training and all(
        torch.equal(p, before[n][0]) and p.requires_grad == before[n][1] for n, p in model.named_parameters()
    )


# --------------------------------------------------------------------------- kexue.mlm


def mlm_cases() -> list[Case]:
    def mt(ids: Any = None, mask: Any = None, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ids = _ids() if ids is None else ids
        mask = (_ids() != 0) if mask is None else mask
        base = dict(mask_id=4, vocab_size=40, generator=_gen())
        base.update(kw)
        return mlm.mask_tokens(ids, mask, **base)

    def logits(selected: Any, model: Any = None, mask: Any = None) -> torch.Tensor:
        return mlm.mlm_logits_at(model or _mlm(40), _ids(), (_ids() != 0) if mask is None else mask, selected)

    def one_selected() -> torch.Tensor:
        s = torch.zeros(4, 6, dtype=torch.bool)
        s[0, 1] = True
        return s

    cases = [
        *[Case(f"mask_tokens-mask_prob-{cid}", lambda p=p: mt(mask_prob=p), raises(err, "mask_prob"))
          for cid, p, err in (("negative", -0.1, ValueError), ("above-one", 1.5, ValueError), ("nan", NAN, ValueError),
                              ("str", "0.15", TypeError), ("tensor", torch.tensor(0.15), TypeError))],
        Case("mask_tokens-replace-sum", lambda: mt(replace=(0.9, 0.2)),
             raises(ValueError, "replace probabilities must sum to at most 1")),
        Case("mask_tokens-replace-above-one", lambda: mt(replace=(1.2, 0.0)), raises(ValueError, r"replace\[0\]")),
        Case("mask_tokens-replace-negative", lambda: mt(replace=(0.8, -0.1)), raises(ValueError, r"replace\[1\]")),
        Case("mask_tokens-replace-list", lambda: mt(replace=[0.8, 0.1]), raises(TypeError, "replace must be a pair")),
        Case("mask_tokens-replace-triple", lambda: mt(replace=(0.8, 0.1, 0.1)), raises(TypeError, "replace")),
        Case("mask_tokens-ids-float", lambda: mt(ids=_ids().float()),
             raises(ValueError, "input_ids must be an integer tensor")),
        Case("mask_tokens-ids-list", lambda: mt(ids=_ids().tolist()),
             raises(TypeError, "input_ids must be a torch.Tensor")),
        Case("mask_tokens-ids-outside-vocab", lambda: mt(ids=_ids() + 40),
             raises(ValueError, r"input_ids must hold token ids in \[0, vocab_size=40\)")),
        Case("mask_tokens-ids-negative", lambda: mt(ids=-_ids()), raises(ValueError, "vocab_size=40")),
        Case("mask_tokens-ids-1d", lambda: mt(ids=_ids()[0], mask=_ids()[0] != 0),
             raises(ValueError, "input_ids must have 2 dimensions")),
        Case("mask_tokens-mask-shape", lambda: mt(mask=torch.ones(4, 5, dtype=torch.bool)),
             raises(ValueError, r"input_ids \(4, 6\) and mask \(4, 5\)")),
        Case("mask_tokens-mask-additive", lambda: mt(mask=(_ids() == 0).float() * -1e4),
             raises(TypeError, "additive attention mask")),
        Case("mask_tokens-mask-half", lambda: mt(mask=torch.full((4, 6), 0.5)),
             raises(TypeError, "mask must be bool or integer 0/1")),
        Case("mask_tokens-mask-list", lambda: mt(mask=(_ids() != 0).tolist()),
             raises(TypeError, "mask must be a torch.Tensor")),
        Case("mask_tokens-mask-two", lambda: mt(mask=(_ids() != 0).long() * 2), raises(ValueError, "only 0 and 1")),
        Case("mask_tokens-mask_id-outside", lambda: mt(mask_id=40), raises(ValueError, "mask_id must be an id")),
        Case("mask_tokens-mask_id-negative", lambda: mt(mask_id=-1), raises(ValueError, "mask_id")),
        Case("mask_tokens-vocab-too-small",
             lambda: mt(ids=torch.ones(2, 3, dtype=torch.long), mask=torch.ones(2, 3), vocab_size=5, mask_id=4),
             raises(ValueError, r"n_special \(5\) must be < vocab_size \(5\)")),
        Case("mask_tokens-vocab-zero", lambda: mt(vocab_size=0), raises(ValueError, "vocab_size")),
        Case("mask_tokens-generator-int", lambda: mt(generator=0),
             raises(TypeError, "generator must be a torch.Generator")),
        Case("mask_tokens-empty-batch", lambda: mt(ids=_ids()[:0], mask=_ids()[:0] != 0),
             returns(lambda out: out[1].shape == (0, 6))),
        Case("mask_tokens-all-padding-row-allowed",
             lambda: mt(ids=torch.cat([_ids(), torch.zeros(1, 6, dtype=torch.long)]),
                        mask=torch.cat([_ids() != 0, torch.zeros(1, 6, dtype=torch.bool)])),
             returns(lambda out: not out[1][-1].any())),
        Case("mask_tokens-int-mask", lambda: mt(mask=(_ids() != 0).long()),
             returns(lambda out: torch.equal(out[1], mt()[1]))),
        Case("mask_tokens-prob-zero-selects-one", lambda: mt(mask_prob=0.0),
             returns(lambda out: int(out[1].sum()) == 1)),
        Case("mask_tokens-prob-one-selects-all", lambda: mt(mask_prob=1.0),
             returns(lambda out: torch.equal(out[1], _ids() >= 5))),
        Case("mask_tokens-never-selects-padding", lambda: mt(mask_prob=1.0),
             returns(lambda out: not out[1][_ids() == 0].any())),
        # the loss
        Case("mlm_logits_at-selected-float", lambda: logits(one_selected().float()),
             raises(TypeError, "selected must be a bool")),
        Case("mlm_logits_at-selected-list", lambda: logits(one_selected().tolist()),
             raises(TypeError, "selected must be a torch.Tensor")),
        Case("mlm_logits_at-selected-none", lambda: logits(torch.zeros(4, 6, dtype=torch.bool)),
             raises(ValueError, "selected marks no position")),
        Case("mlm_logits_at-selected-shape", lambda: logits(one_selected()[:, :5]), raises(ValueError, "selected")),
        Case("mlm_logits_at-selected-padding", lambda: logits(_ids() == 0),
             raises(ValueError, "selected marks padded positions")),
        Case("mlm_logits_at-mask-additive", lambda: logits(one_selected(), mask=(_ids() == 0).float() * -1e4),
             raises(TypeError, "additive")),
        Case("mlm_logits_at-model", lambda: logits(one_selected(), model=TransformerEncoder(_cfg())),
             raises(TypeError, "model must be a kexue.nn.MaskedLM")),
        Case("mlm_logits_at-ok", lambda: logits(one_selected()), returns(lambda out: out.shape == (1, 40))),
        Case("mlm_loss-labels-count",
             lambda: mlm.mlm_loss(_mlm(40), _ids(), _ids() != 0, one_selected(), torch.tensor([5, 6])),
             raises(ValueError, r"labels must hold one id per selected position \(1\), got 2")),
        Case("mlm_loss-labels-outside-vocab",
             lambda: mlm.mlm_loss(_mlm(40), _ids(), _ids() != 0, one_selected(), torch.tensor([40])),
             raises(ValueError, "labels must hold token ids")),
        Case("mlm_loss-labels-float",
             lambda: mlm.mlm_loss(_mlm(40), _ids(), _ids() != 0, one_selected(), torch.tensor([5.0])),
             raises(ValueError, "labels")),
        Case("mlm_loss-no-selection",
             lambda: mlm.mlm_loss(_mlm(40), _ids(), _ids() != 0, torch.zeros(4, 6, dtype=torch.bool),
                                                           torch.zeros(0, dtype=torch.long)),
             raises(ValueError, "selected marks no position")),
        Case("mlm_loss-ok", lambda: mlm.mlm_loss(_mlm(40), _ids(), _ids() != 0, one_selected(), _ids()[0, 1:2]),
             returns(lambda loss: loss.shape == () and float(loss.detach()) > 0)),
        Case("mean_mlm_loss-empty", lambda: mlm.mean_mlm_loss(_mlm(40), []),
             raises(ValueError, "batches must be a non-empty")),
        Case("corrupt-then-loss",
             lambda: mlm.mlm_loss(_mlm(40), *mlm.corrupt(_ids(), _ids() != 0, mask_id=4, vocab_size=40,
                                                                              generator=_gen())),
             returns(lambda loss: float(loss.detach()) > 0)),
        # evaluation and packing
        Case("evaluate_mlm-nothing-masked",
             lambda: mlm.evaluate_mlm(_mlm(), _tokenizer(), TEXTS, max_len=16, mask_prob=0.0),
             raises(ValueError, "no position was masked")),
        Case("evaluate_mlm-mask_prob-above-one", lambda: mlm.evaluate_mlm(_mlm(), _tokenizer(), TEXTS, mask_prob=2.0),
             raises(ValueError, "mask_prob")),
        Case("evaluate_mlm-batch-size-zero", lambda: mlm.evaluate_mlm(_mlm(), _tokenizer(), TEXTS, batch_size=0),
             raises(ValueError, "batch_size")),
        Case("evaluate_mlm-empty", lambda: mlm.evaluate_mlm(_mlm(), _tokenizer(), []),
             raises(ValueError, "sentences must not be empty")),
        Case("evaluate_mlm-str", lambda: mlm.evaluate_mlm(_mlm(), _tokenizer(), "今天天气很好"),
             raises(TypeError, "sentences must be a sequence")),
        Case("evaluate_mlm-max-len", lambda: mlm.evaluate_mlm(_mlm(), _tokenizer(), TEXTS, max_len=2),
             raises(ValueError, "max_len")),
        Case("evaluate_mlm-ok", lambda: mlm.evaluate_mlm(_mlm(), _tokenizer(), TEXTS, max_len=16, mask_prob=0.5),
             returns(lambda r: r["n_masked"] > 0 and 0.0 <= r["accuracy"] <= 1.0)),
        Case("PackedSequences-tokenizer", lambda: mlm.PackedSequences(None, TEXTS, 8), raises(TypeError, "tokenizer")),
        Case("PackedSequences-max-len-float", lambda: mlm.PackedSequences(_tokenizer(), TEXTS, 8.0),
             raises(ValueError, "max_len")),
        Case("PackedSequences-text-int", lambda: mlm.PackedSequences(_tokenizer(), ["好", 3], 8),
             raises(TypeError, "text must be a str")),
        Case("PackedSequences-index-empty",
             lambda: mlm.PackedSequences(_tokenizer(), TEXTS, 8).batch(torch.zeros(0, dtype=torch.long)),
             raises(ValueError, "index must be a non-empty 1D integer tensor")),
        Case("PackedSequences-index-float",
             lambda: mlm.PackedSequences(_tokenizer(), TEXTS, 8).batch(torch.tensor([0.0])),
             raises(ValueError, "index")),
        Case("PackedSequences-index-list", lambda: mlm.PackedSequences(_tokenizer(), TEXTS, 8).batch([0, 1]),
             raises(TypeError, "index must be a torch.Tensor")),
        Case("PackedSequences-chunks", lambda: mlm.PackedSequences(_tokenizer(), TEXTS, 4).batch(torch.arange(3)),
             returns(lambda out: out[0].shape == (3, 4) and bool(out[1].all()))),
    ]
    return cases


# --------------------------------------------------------------------------- kexue.pretrained


def pretrained_cases() -> list[Case]:
    nowhere = NOWHERE / "checkpoint"
    load = load_zh_char_bert
    cases = [
        Case("load-missing-dir", lambda: load(nowhere),
             raises(FileNotFoundError, f"checkpoint directory {re.escape(str(nowhere))} does not exist")),
        Case("load-file-not-dir", lambda: load(ZH_CHAR_BERT / "config.json"),
             raises(NotADirectoryError, "must be a checkpoint directory")),
        Case("load-path-int", lambda: load(3), raises(TypeError, "path must be a str or pathlib.Path")),
        Case("load-no-weights", lambda: _in_checkpoint(_delete("model.safetensors"), load),
             raises(FileNotFoundError, r"no model.safetensors in .*ckpt")),
        Case("load-no-vocab", lambda: _in_checkpoint(_delete("vocab.txt"), load),
             raises(FileNotFoundError, r"no vocabulary at .*vocab.txt")),
        Case("load-no-config", lambda: _in_checkpoint(_delete("config.json"), load),
             raises(FileNotFoundError, r"no config.json in .*ckpt")),
        Case("load-config-not-json", lambda: _in_checkpoint(_write("config.json", "{dim: 16"), load),
             raises(ValueError, r"config.json is not valid JSON")),
        Case("load-config-list", lambda: _in_checkpoint(_write("config.json", "[1, 2]"), load),
             raises(ValueError, "JSON object")),
        Case("load-config-unknown-field", lambda: _in_checkpoint(_config_with(width=3), load),
             raises(ValueError, "does not describe a kexue.nn.TransformerConfig")),
        Case("load-config-other-shape", lambda: _in_checkpoint(_config_with(ffn_dim=48), load),
             raises(ValueError, "does not fit")),
        Case("load-weights-damaged",
             lambda: _in_checkpoint(_write("model.safetensors", "not a safetensors file"), load),
             raises(ValueError, "not a readable safetensors file")),
        Case("load-vocab-mismatch",
             lambda: _in_checkpoint(lambda f: CharTokenizer.build(TEXTS + ["龙"], min_count=1).save(f), load),
             raises(ValueError, "vocab.txt has .* tokens but the config says")),
        Case("load-dtype-int", lambda: _in_checkpoint(lambda f: None, lambda f: load(f, dtype=torch.int64)),
             raises(TypeError, "dtype")),
        Case("load-dtype-str", lambda: _in_checkpoint(lambda f: None, lambda f: load(f, dtype="float32")),
             raises(TypeError, "dtype")),
        Case("load-override-shape", lambda: _in_checkpoint(lambda f: None, lambda f: load(f, dim=32)),
             raises(ValueError, "overrides")),
        Case("load-override-dropout-bad", lambda: _in_checkpoint(lambda f: None, lambda f: load(f, dropout=1.5)),
             raises(ValueError, "dropout")),
        Case("load-ok-eval-mode", lambda: _in_checkpoint(lambda f: None, lambda f: load(f, dtype=torch.float64)[0]),
             returns(lambda model: not model.training and next(model.parameters()).dtype == torch.float64)),
        Case("training_record-missing", lambda: _in_checkpoint(lambda f: None, training_record),
             raises(FileNotFoundError, "no training_record.json in")),
        Case("training_record-missing-dir", lambda: training_record(nowhere),
             raises(FileNotFoundError, "does not exist")),
        Case("save-vocab-mismatch", lambda: save_pretrained(_mlm(12), _tokenizer(), nowhere),
             raises(ValueError, "tokenizer has")),
        Case("save-model-encoder", lambda: save_pretrained(TransformerEncoder(_cfg()), _tokenizer(), nowhere),
             raises(TypeError, "model must be")),
        Case("save-tokenizer-none", lambda: save_pretrained(_mlm(), None, nowhere),
             raises(TypeError, "tokenizer must be")),
        Case("save-out-int", lambda: save_pretrained(_mlm(), _tokenizer(), 3), raises(TypeError, "out must be")),
    ]
    return cases


# --------------------------------------------------------------------------- kexue.tokenizer


def tokenizer_cases() -> list[Case]:
    tok = _tokenizer
    return [
        Case("call-texts-str", lambda: tok()("今天", 8), raises(TypeError, "texts must be a sequence of str")),
        Case("call-texts-int-item", lambda: tok()(["好", 3], 8),
             raises(TypeError, r"texts\[1\] must be a str, got int")),
        Case("call-texts-none", lambda: tok()(None, 8), raises(TypeError, "texts")),
        Case("call-max-len-one", lambda: tok()(TEXTS, 1), raises(ValueError, "max_len must be an int >= 2")),
        Case("call-max-len-bool", lambda: tok()(TEXTS, True), raises(ValueError, "max_len")),
        Case("call-max-len-float", lambda: tok()(TEXTS, 8.0), raises(ValueError, "max_len")),
        Case("call-pad-to-max-str", lambda: tok()(TEXTS, 8, "yes"), raises(TypeError, "pad_to_max must be a bool")),
        Case("call-empty", lambda: tok()([], 8),
             returns(lambda out: out[0].shape == (0, 2) and out[1].shape == (0, 2))),
        Case("call-empty-padded", lambda: tok()([], 8, pad_to_max=True), returns(lambda out: out[0].shape == (0, 8))),
        Case("call-empty-text", lambda: tok()([""], 8), returns(lambda out: out[0].tolist() == [[2, 3]])),
        Case("decode-float-tensor", lambda: tok().decode(torch.tensor([5.0, 6.7])),
             raises(TypeError, "ids must be an integer tensor")),
        Case("decode-bool-tensor", lambda: tok().decode(torch.tensor([True])),
             raises(TypeError, "ids must be an integer tensor")),
        Case("decode-float-list", lambda: tok().decode([5, 6.7]), raises(TypeError, "ids must be integers, got float")),
        Case("decode-bool-list", lambda: tok().decode([True]), raises(TypeError, "ids must be integers")),
        Case("decode-str", lambda: tok().decode("56"), raises(TypeError, "ids must be integers")),
        Case("decode-outside", lambda: tok().decode([10_000]), raises(ValueError, r"ids must lie in \[0, ")),
        Case("decode-negative", lambda: tok().decode([-1]), raises(ValueError, "ids must lie")),
        Case("decode-2d", lambda: tok().decode(torch.ones(2, 2, dtype=torch.long)),
             raises(ValueError, "one-dimensional")),
        Case("decode-numpy-ints", lambda: tok().decode(np.array(tok().encode("好"))), returns(lambda s: s == "好")),
        Case("decode-empty", lambda: tok().decode([]), returns(lambda s: s == "")),
        Case("encode-int", lambda: tok().encode(3), raises(TypeError, "text must be a str")),
        Case("build-min-count-zero", lambda: CharTokenizer.build(TEXTS, min_count=0), raises(ValueError, "min_count")),
        Case("build-texts-ints", lambda: CharTokenizer.build([1, 2]), raises(TypeError, "texts must hold str")),
        Case("init-no-specials", lambda: CharTokenizer(["a", "b"]), raises(ValueError, "tokens must start with")),
        Case("init-duplicates", lambda: CharTokenizer(list(tok().id_to_token) + ["好"]),
             raises(ValueError, "tokens must be unique")),
        Case("init-long-token", lambda: CharTokenizer(list(tok().id_to_token[:5]) + ["ab"]),
             raises(ValueError, "one character")),
        Case("load-missing", lambda: CharTokenizer.load(NOWHERE),
             raises(FileNotFoundError, "no vocabulary at")),
    ]


# --------------------------------------------------------------------------- kexue.data (argument checks only)


def data_cases() -> list[Case]:
    return [
        Case("load_sts_b-split", lambda: data.load_sts_b("dev"), raises(ValueError, "split must be one of")),
        Case("load_sts_b-lang", lambda: data.load_sts_b("test", "fr"), raises(ValueError, "lang")),
        Case("load_msra-split", lambda: data.load_msra("valid"), raises(ValueError, "split")),
        Case("load_peoples_daily-unit", lambda: data.load_peoples_daily("word"), raises(ValueError, "unit")),
        Case("load_pretraining_corpus-min-chars-bool", lambda: data.load_pretraining_corpus(min_chars=True),
             raises(ValueError, "min_chars")),
        Case("load_pretraining_corpus-min-chars-zero", lambda: data.load_pretraining_corpus(min_chars=0),
             raises(ValueError, "min_chars")),
        Case("load_pretraining_corpus-sources-str", lambda: data.load_pretraining_corpus("reviews"),
             raises(ValueError, "sources")),
        Case("load_pretraining_corpus-sources-unknown", lambda: data.load_pretraining_corpus(("wiki",)),
             raises(ValueError, "sources")),
        Case("load_silver_nested-min-len-bool", lambda: data.load_silver_nested("test", min_len=True),
             raises(ValueError, "min_len")),
        Case("load_silver_nested-split", lambda: data.load_silver_nested("dev"), raises(ValueError, "split")),
        Case("load_silver_nested-lexicon-split", lambda: data.load_silver_nested("test", "dev"),
             raises(ValueError, "lexicon_split")),
        Case("entity_lexicon-split", lambda: data.entity_lexicon("dev"), raises(ValueError, "split")),
        Case("normalize_char-two", lambda: data.normalize_char("ab"),
             raises(ValueError, "char must be a single character")),
        Case("normalize_char-int", lambda: data.normalize_char(3), raises(ValueError, "char")),
        Case("normalize_text-int", lambda: data.normalize_text(3), raises(TypeError, "text must be a str")),
        Case("split_sentences-none", lambda: data.split_sentences(None), raises(TypeError, "text must be a str")),
        Case("package_path-int", lambda: data.package_path(3), raises(TypeError, "name must be a str")),
        Case("package_path-missing", lambda: data.package_path("kexue_no_such_data_package"),
             raises(data.MissingDataPackageError, "pip install --no-deps")),
        Case("load_fashion_mnist-split", lambda: data.load_fashion_mnist("val"), raises(ValueError, "split")),
        Case("load_fashion_mnist-root-int", lambda: data.load_fashion_mnist("test", 3),
             raises(TypeError, "root must be")),
        Case("load_fashion_mnist-root-missing",
             lambda: data.load_fashion_mnist("test", NOWHERE),
             raises(FileNotFoundError, "no-such-folder.*apt-get install dataset-fashion-mnist")),
        Case("normalize_text-fullwidth", lambda: data.normalize_text("Ａ１，  b"), returns(lambda s: s == "a1, b")),
    ]


# --------------------------------------------------------------------------- kexue.experiments.pretrain


def pretrain_cases() -> list[Case]:
    cfg = _pretrain_config
    shipped = str(ZH_CHAR_BERT)
    inside = str(Path(pretrain_run.PACKAGE_DIR) / "results" / "a_run")
    cases = [
        Case("config-default-out-outside-package", lambda: pretrain_run.PretrainConfig(steps=1),
             returns(lambda c: c.out == str(Path("runs") / "pretrain") and not pretrain_run._inside_package(c.out))),
        Case("config-tiny-default-out", lambda: pretrain_run.PretrainConfig(steps=1, tiny=True),
             returns(lambda c: c.out == str(Path("runs") / "pretrain_tiny"))),
        Case("config-refresh-shipped", lambda: pretrain_run.PretrainConfig(steps=1, refresh_shipped=True),
             returns(lambda c: Path(c.out).resolve() == ZH_CHAR_BERT.resolve())),
        Case("config-refresh-shipped-explicit-out",
             lambda: pretrain_run.PretrainConfig(steps=1, refresh_shipped=True, out=shipped),
             returns(lambda c: c.refresh_shipped)),
        Case("config-tiny-refresh-shipped",
             lambda: pretrain_run.PretrainConfig(steps=1, tiny=True, refresh_shipped=True),
             raises(ValueError, "a tiny run must not overwrite the shipped checkpoint")),
        Case("config-shipped-out-without-flag", lambda: cfg(out=shipped),
             raises(ValueError, r"refresh_shipped \(--refresh-shipped\)")),
        Case("config-tiny-shipped-out", lambda: cfg(out=shipped, tiny=True),
             raises(ValueError, "a tiny run must not overwrite")),
        Case("config-refresh-other-out", lambda: cfg(refresh_shipped=True), raises(ValueError, "drop one of them")),
        Case("config-out-inside-package", lambda: cfg(out=inside),
             raises(ValueError, "out must not be inside the kexue package")),
        Case("config-out-package-root", lambda: cfg(out=str(pretrain_run.PACKAGE_DIR)),
             raises(ValueError, "inside the kexue package")),
        Case("config-out-int", lambda: cfg(out=3), raises(TypeError, "out must be a str")),
        Case("config-refresh-str", lambda: cfg(refresh_shipped="no"),
             raises(TypeError, "refresh_shipped must be a bool")),
        Case("config-tiny-int", lambda: cfg(tiny=1), raises(TypeError, "tiny must be a bool")),
        Case("config-bf16-str", lambda: cfg(bf16="yes"), raises(TypeError, "bf16")),
        Case("config-lr-nan", lambda: cfg(lr=NAN), raises(ValueError, "lr")),
        Case("config-lr-inf", lambda: cfg(lr=INF), raises(ValueError, "lr")),
        Case("config-lr-zero", lambda: cfg(lr=0.0), raises(ValueError, "lr")),
        Case("config-weight-decay-negative", lambda: cfg(weight_decay=-0.01), raises(ValueError, "weight_decay")),
        Case("config-grad-clip-negative", lambda: cfg(grad_clip=-1.0), raises(ValueError, "grad_clip")),
        Case("config-mask-prob-one", lambda: cfg(mask_prob=1.0), raises(ValueError, "mask_prob")),
        Case("config-steps-zero", lambda: cfg(steps=0), raises(ValueError, "steps")),
        Case("config-steps-and-minutes-none", lambda: cfg(steps=None), raises(ValueError, "give steps or minutes")),
        Case("config-minutes-nan", lambda: cfg(minutes=NAN), raises(ValueError, "minutes")),
        Case("config-stop-at-zero", lambda: cfg(stop_at=0), raises(ValueError, "stop_at")),
        Case("config-eval-every-negative", lambda: cfg(eval_every=-1), raises(ValueError, "eval_every")),
        Case("config-seed-negative", lambda: cfg(seed=-1), raises(ValueError, "seed")),
        Case("config-min-count-zero", lambda: cfg(min_count=0), raises(ValueError, "min_count")),
        Case("config-warmup-one", lambda: cfg(warmup=1.0), raises(ValueError, "warmup")),
        Case("config-max-len-three", lambda: cfg(max_len=3), raises(ValueError, "max_len")),
        Case("pretrain-config-dict", lambda: pretrain_run.pretrain({"steps": 1}),
             raises(TypeError, "config must be a PretrainConfig")),
        Case("pretrain-sentences-str", lambda: pretrain_run.pretrain(cfg(), "今天天气很好"),
             raises(TypeError, "sentences must be a sequence")),
        Case("heldout_split-n-zero", lambda: pretrain_run.heldout_split(TEXTS, 0),
             raises(ValueError, r"n must be in \(0, 6\)")),
        Case("heldout_split-n-all", lambda: pretrain_run.heldout_split(TEXTS, 6), raises(ValueError, "n must be")),
    ]
    return cases


# --------------------------------------------------------------------------- kexue.experiments.simcse_training


def simcse_training_cases() -> list[Case]:
    texts = [f"第{i}句话说的是{'天地人和山水'[i % 6]}" for i in range(8)]
    tok = lambda: CharTokenizer.build(texts, min_count=1)  # noqa: E731
    model = lambda: _mlm(tok().vocab_size)  # noqa: E731

    def train(**kw: Any) -> Any:
        base = dict(batch_size=4, steps=1, max_len=16)
        base.update(kw)
        return train_simcse(base.pop("model", None) or model(), base.pop("tokenizer", None) or tok(),
                            base.pop("sentences", texts), **base)

    cases = [
        *[Case(f"train-temperature-{cid}", lambda t=t: train(temperature=t), raises(err, "temperature"))
          for cid, t, err in (("zero", 0.0, ValueError), ("negative", -0.05, ValueError), ("nan", NAN, ValueError),
                              ("inf", INF, ValueError), ("str", "0.05", TypeError),
                              ("tensor", torch.tensor(0.05), TypeError))],
        Case("train-lr-negative", lambda: train(lr=-1e-5), raises(ValueError, "lr")),
        Case("train-batch-size-one", lambda: train(batch_size=1), raises(ValueError, "batch_size must be an int >= 2")),
        Case("train-batch-size-float", lambda: train(batch_size=4.0), raises(ValueError, "batch_size")),
        Case("train-too-few-sentences", lambda: train(batch_size=16), raises(ValueError, "at least batch_size=16")),
        Case("train-micro-zero", lambda: train(micro_batch_size=0), raises(ValueError, "micro_batch_size")),
        Case("train-micro-float", lambda: train(micro_batch_size=2.0), raises(ValueError, "micro_batch_size")),
        Case("train-max-len-two", lambda: train(max_len=2), raises(ValueError, "max_len")),
        Case("train-weight-decay-negative", lambda: train(optimizer="adamw", weight_decay=-0.1),
             raises(ValueError, "weight_decay")),
        Case("train-seed-negative", lambda: train(seed=-1), raises(ValueError, "seed")),
        Case("train-seed-float", lambda: train(seed=0.5), raises(ValueError, "seed")),
        Case("train-steps-zero", lambda: train(steps=0), raises(ValueError, "steps")),
        Case("train-epochs-zero", lambda: train(steps=None, epochs=0), raises(ValueError, "epochs")),
        Case("train-optimizer", lambda: train(optimizer="sgd"), raises(ValueError, "optimizer")),
        Case("train-trainable", lambda: train(trainable="head"), raises(ValueError, "trainable")),
        Case("train-pooling", lambda: train(pooling="pooler"), raises(ValueError, "pooling")),
        Case("train-progress-str", lambda: train(progress="no"), raises(TypeError, "progress")),
        Case("train-sentences-str", lambda: train(sentences="".join(texts)),
             raises(TypeError, "sentences must be a sequence")),
        Case("train-sentences-int-item", lambda: train(sentences=texts[:3] + [3] + texts[4:]),
             raises(TypeError, r"sentences\[3\]")),
        Case("train-tokenizer-none", lambda: train(tokenizer=object()), raises(TypeError, "tokenizer must be")),
        Case("train-tokenizer-larger", lambda: train(model=_mlm(12)), raises(ValueError, "tokenizer has")),
        Case("train-model-linear", lambda: train(model=torch.nn.Linear(2, 2)), raises(TypeError, "model must be")),
        Case("train-one-step", lambda: train(), returns(lambda res: len(res.losses) == 1)),
        Case("PooledEncoder-encoder-linear", lambda: PooledEncoder(torch.nn.Linear(2, 2), "cls"),
             raises(TypeError, "encoder must be")),
        Case("PooledEncoder-pooling", lambda: PooledEncoder(model().encoder, "max"), raises(ValueError, "pooling")),
        Case("PooledEncoder-pad-negative", lambda: PooledEncoder(model().encoder, "cls", pad_id=-1),
             raises(ValueError, "pad_id")),
        Case("PooledEncoder-ids-float", lambda: PooledEncoder(model().encoder, "cls")(torch.ones(2, 3)),
             raises(ValueError, "input_ids")),
        Case("PooledEncoder-ids-outside", lambda: PooledEncoder(model().encoder, "cls")(torch.full((2, 3), 10_000)),
             raises(ValueError, "vocab_size")),
        Case("PooledEncoder-all-padding-row",
             lambda: PooledEncoder(model().encoder, "last-avg")(torch.tensor([[2, 5, 3], [0, 0, 0]])),
             raises(ValueError, "at least one real")),
    ]
    return cases


# --------------------------------------------------------------------------- the suite

TABLES: list[Callable[[], list[Case]]] = [
    simcse_cases, accumulation_cases, growth_cases, mlm_cases, pretrained_cases, tokenizer_cases, data_cases,
    pretrain_cases, simcse_training_cases,
]
CASES: list[Case] = [case for table in TABLES for case in table()]
#: the suite must keep at least this many cases (it only grows)
FLOOR = 400
TRIED: list[str] = []


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_methods(case: Case):
    TRIED.append(case.id)
    run_case(case)


def test_zz_case_count(capsys):
    """Prints how many cases ran (runs last: pytest keeps the file's order)."""
    with capsys.disabled():
        print(f"\nbad-input suite (methods of chapters 01, 06, 07, pretraining): {len(TRIED)} of {len(CASES)} "
              "cases tried")
    assert len(CASES) >= FLOOR, f"the suite shrank to {len(CASES)} cases (floor {FLOOR})"
    if len(TRIED) < len(CASES):
        pytest.skip(f"only {len(TRIED)} of the {len(CASES)} cases were selected in this session")
    assert len(TRIED) >= FLOOR
