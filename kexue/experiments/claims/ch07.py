"""Chapter 07's claims: exact gradient accumulation for contrastive losses.

Derivation and exactness claims are :class:`~kexue.experiments.claims.Exact`
checks: small float64 recomputations through :mod:`kexue.accumulation` and
:mod:`kexue.losses` (the chapter's asserting cells show the same checks in full).
Cost claims read the benchmark record ``benchmarks/accumulation``; the SimCSE
training claims read the book-scale records ``ch07_accumulation_book`` (batch 32
vs 128) and ``ch07_accumulation_book_b64_512`` (batch 64 vs 512).

Every check runs under :func:`torch.random.fork_rng`, so evaluating the claims
does not move the caller's random state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch

import kexue.accumulation as acc
from kexue.experiments.claims import Claim, Difference, Exact, FromRecord, PerSeed, Within
import kexue.experiments.ch07_accumulation as _ch07_module
import kexue.nn as _nn

__all__ = ["CLAIMS", "BOOK", "BOOK_64_512", "BENCH"]

BOOK = "ch07_accumulation_book"
#: the book profile at the paper's batch sizes, 64 vs 512 (``--set small_batch=64 large_batch=512 micro_batch=64``)
BOOK_64_512 = "ch07_accumulation_book_b64_512"
BENCH = "benchmarks/accumulation"

#: the chapter's toy encoder: one Transformer block of width 16, dropout on
TINY = dict(vocab_size=30, dim=16, depth=1, heads=2, ffn_dim=32, max_len=8, dropout=0.2, attention_dropout=0.2)
TOY_SCALE = "float64, toy encoder (1 block, width 16, dropout 0.2), 6 sentences = 12 rows"


# ---------------------------------------------------------------------------
# float64 checks
# ---------------------------------------------------------------------------
def _toy(seed: int = 0) -> tuple[acc.SentenceEncoder, torch.Tensor]:
    """The toy float64 sentence encoder and 6 sentences of token ids, two views on adjacent rows."""
    TransformerConfig = _nn.TransformerConfig
    TransformerEncoder = _nn.TransformerEncoder

    torch.manual_seed(seed)
    encoder = acc.SentenceEncoder(TransformerEncoder(TransformerConfig(**TINY))).double()
    ids = torch.randint(1, 30, (6, 6)).repeat_interleave(2, dim=0)
    return encoder, ids


def _grad(encoder: torch.nn.Module, method: Any, ids: torch.Tensor, loss_fn: Any, rows: int, seed: int,
          **kwargs: Any) -> torch.Tensor:
    """The encoder gradient that ``method`` accumulates from zero, after ``torch.manual_seed(seed)``."""
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    method(encoder, ids, loss_fn, rows, **kwargs)
    out = acc.grad_vector(encoder).clone()
    encoder.zero_grad(set_to_none=True)
    return out


def _floor_ratio(floor: float, value: float) -> float:
    """``floor / value``: at most 1 exactly when ``value >= floor`` (``inf`` for a zero value)."""
    return floor / value if value > 0 else math.inf


def check_naive_biased() -> tuple[float, float]:
    """Naive accumulation (3 micro-batches of 2 sentences) vs the full batch, eval mode."""
    with torch.random.fork_rng():
        toy, ids = _toy()
        toy.eval()
        full = _grad(toy, acc.full_batch_backward, ids, acc.simcse_loss, 12, 0)
        naive = _grad(toy, acc.naive_accumulation_backward, ids, acc.simcse_loss, 4, 0)
    return _floor_ratio(0.05, acc.relative_error(naive, full)), 1.0


def check_one_sentence_zero() -> tuple[float, float]:
    """One sentence (two rows) per micro-batch: the naive loss and gradient vanish."""
    with torch.random.fork_rng():
        toy, ids = _toy()
        toy.eval()
        toy.zero_grad(set_to_none=True)
        loss = acc.naive_accumulation_backward(toy, ids, acc.simcse_loss, 2)
        grad = acc.grad_vector(toy)
        toy.zero_grad(set_to_none=True)
    return max(abs(loss.item()), grad.abs().max().item()), 1e-12


def check_surrogate() -> tuple[float, float]:
    """Gradient of the stop-gradient surrogate vs autograd's; the values must differ."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        h = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    loss = acc.simcse_loss(h, 1.5, normalize=False)
    (dl_dh,) = torch.autograd.grad(loss, h)
    surrogate = acc.simcse_surrogate(h, 1.5)
    (ds_dh,) = torch.autograd.grad(surrogate, h)
    if abs((surrogate - loss).item()) <= 1e-3:  # the claim is "different value, same gradient"
        return math.inf, 1e-12
    return acc.relative_error(ds_dh, dl_dh), 1e-12


def check_closed_form() -> tuple[float, float]:
    """Su's closed form h~ (``simcse_embedding_grad``) vs autograd's dL/dh."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        h = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    (dl_dh,) = torch.autograd.grad(acc.simcse_loss(h, 1.5, normalize=False), h)
    return acc.relative_error(acc.simcse_embedding_grad(h.detach(), 1.5), dl_dh), 1e-12


#: rows per micro-batch in the toy checks: 1, 2 and 6 sentences, and two sizes that do not divide 12
TOY_ROWS = (2, 4, 12, 5, 8)


def _two_pass_errors(replay: bool) -> dict[int, float]:
    with torch.random.fork_rng():
        toy, ids = _toy()
        toy.train()
        out = {}
        for rows in TOY_ROWS:
            full = _grad(toy, acc.full_batch_backward, ids, acc.simcse_loss, rows, 123)
            two = _grad(toy, acc.contrastive_backward, ids, acc.simcse_loss, rows, 123, replay_rng=replay)
            out[rows] = acc.relative_error(two, full)
    return out


def check_two_pass_toy() -> tuple[float, float]:
    """Two-pass (with RNG replay) vs full batch, dropout on, every size in :data:`TOY_ROWS`."""
    return max(_two_pass_errors(True).values()), 1e-10


def check_replay_needed() -> tuple[float, float]:
    """Without RNG replay, every size that re-encodes a micro-batch is off by more than 1e-3."""
    errors = _two_pass_errors(False)
    return _floor_ratio(1e-3, min(errors[r] for r in (2, 4, 5, 8))), 1.0


def check_bert() -> tuple[float, float]:
    """Two-pass vs full batch on the shipped character BERT, float64, dropout 0.1, 4 sentences."""
    ch07 = _ch07_module

    cfg = ch07.CONFIGS["smoke"]
    with torch.random.fork_rng():
        bert, tokenizer = ch07.load_sentence_encoder(cfg, device="cpu")
        bert.double()
        ids = ch07.pair_rows(tokenizer, ch07.train_sentences()[:4], cfg.max_chars)
        full = _grad(bert, acc.full_batch_backward, ids, acc.simcse_loss, 2, 7)
        two = _grad(bert, acc.contrastive_backward, ids, acc.simcse_loss, 2, 7)
    return acc.relative_error(two, full), 1e-10


def _logit_scale_grads(openclip_replay: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Encoder and log-scale gradients of full batch, two-pass and the open_clip replica (3 micro-batches)."""
    methods = {
        "full": acc.full_batch_backward,
        "two-pass": acc.contrastive_backward,
        "open_clip": functools.partial(acc.openclip_style_backward, replay_rng=openclip_replay),
    }
    with torch.random.fork_rng():
        toy, ids = _toy()
        toy.train()
        scale = acc.LogitScale(0.1, dtype=torch.float64)
        out = {}
        for name, method in methods.items():
            scale.zero_grad(set_to_none=True)
            enc = _grad(toy, method, ids, lambda h: acc.simcse_loss(h, scale.temperature()), 4, 5)
            out[name] = (enc, scale.log_scale.grad.clone())
    return out


def check_scale_two_pass() -> tuple[float, float]:
    """Two-pass vs full batch with a learnable temperature: log-scale and encoder gradients."""
    g = _logit_scale_grads()
    return max(acc.relative_error(g["two-pass"][1], g["full"][1]),
               acc.relative_error(g["two-pass"][0], g["full"][0])), 1e-10


def check_scale_openclip() -> tuple[float, float]:
    """The open_clip replica (with replay): log-scale gradient / full = 3 for 3 micro-batches."""
    g = _logit_scale_grads()
    ratio = (g["open_clip"][1] / g["full"][1]).item()
    return abs(ratio - 3.0), 1e-9


def check_openclip_no_replay() -> tuple[float, float]:
    """The open_clip replica as shipped (no replay), dropout on: encoder gradient off by > 1e-3."""
    g = _logit_scale_grads(openclip_replay=False)
    return _floor_ratio(1e-3, acc.relative_error(g["open_clip"][0], g["full"][0])), 1.0


def check_misscaled_updates() -> tuple[float, float]:
    """The five effects of a gradient 3x too large on one parameter (the chapter's replay)."""
    ch07 = _ch07_module

    by = {(r["optimizer"], r["clip"]): r for r in ch07.misscaled_gradient_updates(3.0)}
    holds = [
        abs(by["Adam", False]["scale_update"] - 1) < 1e-6,  # Adam: cancels up to eps
        by["Adam", False]["others_update"] == 1,  # Adam: the others are untouched
        abs(by["SGD", False]["scale_update"] - 3.0) < 1e-9,  # SGD: k times the step
        by["SGD", True]["others_update"] < 0.95,  # global-norm clipping shrinks the others' steps
        all(r["logged_norm"] > 1.05 for r in by.values()),  # the logged norm is inflated
    ]
    return float(holds.count(False)), 0.0


def _bn_encoder() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 8)).double()


def check_batchnorm_couples() -> tuple[float, float]:
    """Training-mode BatchNorm: a micro-batch encoded alone vs inside the full batch."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder, x = _bn_encoder(), torch.randn(8, 12, dtype=torch.float64)
        with torch.no_grad():
            alone, inside = encoder(x[:4]), encoder(x)[:4]
    return _floor_ratio(1e-3, acc.relative_error(alone, inside)), 1.0


def check_batchnorm_refused() -> tuple[float, float]:
    """``contrastive_backward`` refuses a training-mode BatchNorm and accepts an eval-mode one."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder, x = _bn_encoder(), torch.randn(8, 12, dtype=torch.float64)
        failures = 0
        try:
            acc.contrastive_backward(encoder, x, acc.simcse_loss, 4)
            failures += 1
        except ValueError:
            pass
        acc.contrastive_backward(encoder.eval(), x, acc.simcse_loss, 4)  # raises if refused
    return float(failures), 0.0


@functools.lru_cache(maxsize=1)
def _distributed_error() -> float:
    """Worst relative gradient error of 2 gloo ranks (two-pass and all-gather recipes) vs one process."""
    ch07 = _ch07_module

    with torch.random.fork_rng():
        torch.manual_seed(0)
        spec = dict(encoder_config=TINY, ids=torch.randint(1, 30, (4, 6)).repeat_interleave(2, dim=0),
                    micro_batch_size=2, seed=3, temperature=0.1)
        ranks = ch07.run_distributed_check(spec, world_size=2)
        encoder, scale = ch07.build_check_model(spec)
        acc.rank_streams_reference_backward(
            encoder, list(spec["ids"].chunk(2)), lambda h: acc.simcse_loss(h, scale.temperature()), 2,
            [spec["seed"] + 1 + r for r in range(2)])
    ref = acc.grad_vector(encoder)
    worst = 0.0
    for out in ranks:
        worst = max(worst, acc.relative_error(out["log_scale_grad"], scale.log_scale.grad))
        for kind in ("two_pass", "gather"):
            got = torch.cat([out[f"{kind}.{n}"].reshape(-1) for n, _ in encoder.named_parameters()])
            worst = max(worst, acc.relative_error(got, ref))
    return worst


def check_distributed() -> tuple[float, float]:
    """Two gloo processes vs the one-process reference (spawns processes: a few seconds, run once)."""
    return _distributed_error(), 1e-10


# ---------------------------------------------------------------------------
# the benchmark record (medians over 9 interleaved rounds, IQR brackets)
# ---------------------------------------------------------------------------
def _repeats(rec: Mapping[str, Any]) -> int:
    return int(rec["setup"]["repeats"])


def slowest_overhead(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """The largest two-pass / full-batch time ratio over micro-batch sizes, with its IQR bracket."""
    row = max(rec["time_by_micro_batch"], key=lambda r: r["ratio_to_full"])
    lo, hi = row["ratio_to_full_iqr"]
    return row["ratio_to_full"], lo, hi, _repeats(rec)


def overhead_drop(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """Time ratio at the smallest micro-batch minus at the largest; bracket from the two IQR brackets."""
    rows = sorted(rec["time_by_micro_batch"], key=lambda r: r["micro_batch_sentences"])
    small, large = rows[0], rows[-1]
    (s1, s3), (l1, l3) = small["ratio_to_full_iqr"], large["ratio_to_full_iqr"]
    return small["ratio_to_full"] - large["ratio_to_full"], s1 - l3, s3 - l1, _repeats(rec)


def memory_excess(rec: Mapping[str, Any]) -> tuple[float, None, None, int]:
    """Largest relative excess of saved activations over (micro-batch / batch) x full batch."""
    sentences = rec["setup"]["sentences"]
    worst = max(abs(r["saved_mib"] / (r["full_saved_mib"] * r["micro_batch_sentences"] / sentences) - 1)
                for r in rec["time_by_micro_batch"])
    return worst, None, None, 1


def vs_gradcache(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """The largest two-pass / GradCache time ratio over micro-batch sizes; bracket: max of the brackets."""
    rows = [r for r in rec["time_by_micro_batch"] if "ratio_to_gradcache" in r]
    return (max(r["ratio_to_gradcache"] for r in rows), max(r["ratio_to_gradcache_iqr"][0] for r in rows),
            max(r["ratio_to_gradcache_iqr"][1] for r in rows), _repeats(rec))


OURS_MNRL = "kexue contrastive_backward, 2 inputs"
ST_CACHED = "sentence-transformers CachedMNRL"


def vs_sentence_transformers(rec: Mapping[str, Any]) -> tuple[float, float, float, int]:
    """Our MNRL time / sentence-transformers' cached loss; bracket [q1/q3', q3/q1'] of the quartiles."""
    timing = {r["method"]: r for r in rec["timing"]}
    a, b = timing[OURS_MNRL], timing[ST_CACHED]
    return (a["seconds"] / b["seconds"], a["iqr_s"][0] / b["iqr_s"][1], a["iqr_s"][1] / b["iqr_s"][0],
            _repeats(rec))


def memory_vs_sentence_transformers(rec: Mapping[str, Any]) -> tuple[float, None, None, int]:
    """|our saved activations / sentence-transformers' - 1| on the matched two-input MNRL row."""
    saved = {r["method"]: r["saved_mib"] for r in rec["memory"]}
    return abs(saved[OURS_MNRL] / saved[ST_CACHED] - 1), None, None, 1


def float32_bert_error(rec: Mapping[str, Any]) -> tuple[float, None, None, int]:
    """Relative gradient error of our SimCSE two-pass step vs the full batch, float32 character BERT."""
    row = next(r for r in rec["gradients"]
               if r["loss"] == "SimCSE" and r["method"] == "kexue contrastive_backward")
    return row["rel_error"], None, None, 1


BENCH_SCALE = "benchmark: character BERT, 32 sentences, float32, CPU, 1 thread, 9 interleaved rounds"
DETERMINISTIC = "a deterministic computation (counted bytes or a fixed-seed gradient), not a timing"
BOOK_SCALE = ("book profile: character BERT, STS-B train sentences, batch 32 vs 128 "
              "(micro-batches of 32), 120 AdamW steps, all 1361 test pairs, 3 seeds")
BOOK_64_512_SCALE = ("book profile at batch 64 vs 512 (micro-batches of 64): character BERT, STS-B train "
                     "sentences, 120 AdamW steps, all 1361 test pairs, 3 seeds")
MEMORY_SCALE = ("book profile: character BERT in float32, sentences padded to 32 characters, "
                "batches of 8 to 128 sentences, micro-batches of 8; bytes saved for backward")


def _memory_growth(kind: str):  # noqa: ANN202 - a small closure factory
    """Per seed: memory at the largest batch / at the smallest (``kind``: ``full`` or ``twopass``)."""
    def fn(recs):  # noqa: ANN001, ANN202
        (rec,) = recs
        sizes = sorted(int(k.rsplit("_", 1)[1]) for k in rec["per_seed"][0] if k.startswith(f"memory_{kind}_"))
        return [m[f"memory_{kind}_{sizes[-1]}"] / m[f"memory_{kind}_{sizes[0]}"] for m in rec["per_seed"]]
    return fn


def _full_growth_share(recs):  # noqa: ANN001, ANN202
    """Per seed: the full batch's memory growth as a share of the growth in batch size."""
    (rec,) = recs
    cfg = rec["config"]
    ratio = max(cfg["memory_batches"]) / min(cfg["memory_batches"])
    return [g / ratio for g in _memory_growth("full")(recs)]

CLAIMS: list[Claim] = [
    Claim(
        id="07.naive-biased",
        statement="Adding up the contrastive losses of micro-batches does not give the large batch's "
                  "gradient: naive accumulation is biased (relative error above 5% here).",
        source="article", scale=TOY_SCALE + ", eval mode, 3 micro-batches",
        evidence="cell: ch07-naive",
        criterion=Exact(check_naive_biased, what="0.05 ÷ (naive gradient's relative error to the full batch)"),
    ),
    Claim(
        id="07.one-sentence-zero",
        statement="With one sentence per micro-batch, naive accumulation has zero loss and zero gradient.",
        source="ours", scale=TOY_SCALE + ", eval mode", evidence="cell: ch07-naive",
        criterion=Exact(check_one_sentence_zero, what="max(|loss|, max |gradient|)"),
        note="The extreme case of the article's argument: each row's only candidate is its positive.",
    ),
    Claim(
        id="07.surrogate",
        statement="The stop-gradient surrogate has the loss's gradient, though not its value.",
        source="article", scale="float64 identity, 10 random rows of width 6", evidence="cell: ch07-derivation",
        criterion=Exact(check_surrogate, what="relative gradient error of the surrogate (values differ by > 1e-3)"),
    ),
    Claim(
        id="07.closed-form",
        statement="For inner-product similarities the gradient is that of Σ⟨h_i, h̃_i⟩ with Su's closed "
                  "form h̃ (times 1/(Bτ) under our mean reduction).",
        source="article", scale="float64 identity, 10 random rows of width 6", evidence="cell: ch07-derivation",
        criterion=Exact(check_closed_form, what="relative error of the closed form h̃ vs autograd's ∂L/∂h"),
    ),
    Claim(
        id="07.two-pass-exact",
        statement="A gradient-free pass plus micro-batch backward passes (with RNG replay) gives the "
                  "large-batch gradient exactly, dropout on, for micro-batches that split pairs or "
                  "do not divide the batch.",
        source="article", scale=TOY_SCALE + ", micro-batches of 2, 4, 12, 5 and 8 rows",
        evidence="cell: ch07-two-pass",
        criterion=Exact(check_two_pass_toy, what="worst relative gradient error vs the full batch"),
    ),
    Claim(
        id="07.two-pass-bert",
        statement="The same holds on the shipped character BERT with dropout 0.1.",
        source="ours", scale="float64, character BERT (4 layers, width 256), 4 STS-B sentences, "
                             "micro-batches of 2 rows",
        evidence="cell: ch07-two-pass",
        criterion=Exact(check_bert, what="relative gradient error vs the full batch"),
    ),
    Claim(
        id="07.two-pass-float32",
        statement="In float32 the two-pass gradient stays within 1e-6 (relative) of the full batch's.",
        source="ours", scale=BENCH_SCALE + ", micro-batches of 8 sentences", evidence=BENCH,
        criterion=FromRecord(BENCH, float32_bert_error, what="relative gradient error, SimCSE two-pass",
                             at_most=1e-6, digits=2),
        one_run=DETERMINISTIC,
        note="The chapter's live cell checks the same on 4 sentences (micro-batches of 2 rows).",
    ),
    Claim(
        id="07.replay-needed",
        statement="The two passes must agree: without replaying the random state, SimCSE's dropout makes "
                  "the gradient wrong (relative error above 1e-3) whenever a micro-batch is re-encoded.",
        source="article", scale=TOY_SCALE + ", micro-batches of 2, 4, 5 and 8 rows",
        evidence="cell: ch07-two-pass",
        criterion=Exact(check_replay_needed, what="1e-3 ÷ (smallest relative error without replay)"),
        note="The article's point as reported by a secondary digest; its wording could not be checked. "
             "A single micro-batch keeps its pass-1 graph and needs no replay.",
    ),
    Claim(
        id="07.batchnorm-couples",
        statement="Training-mode BatchNorm makes a row's embedding depend on the rest of its micro-batch, "
                  "so no accumulation can reproduce the full batch.",
        source="article", scale="float64, Linear-BatchNorm-Linear, 8 rows, micro-batch of 4",
        evidence="cell: ch07-batchnorm",
        criterion=Exact(check_batchnorm_couples,
                        what="1e-3 ÷ (relative difference: micro-batch alone vs inside the batch)"),
    ),
    Claim(
        id="07.batchnorm-refused",
        statement="contrastive_backward refuses a training-mode BatchNorm (ValueError) and accepts an "
                  "eval-mode one.",
        source="ours", scale="float64, Linear-BatchNorm-Linear, 8 rows", evidence="cell: ch07-batchnorm",
        criterion=Exact(check_batchnorm_refused, what="training-mode BatchNorm accepted (1) or refused (0)"),
    ),
    Claim(
        id="07.scale-two-pass",
        statement="A parameter inside the loss (a learnable logit scale) gets its exact gradient, once, "
                  "from the two-pass method.",
        source="ours", scale=TOY_SCALE + ", 3 micro-batches, learnable temperature",
        evidence="cell: ch07-scale",
        criterion=Exact(check_scale_two_pass, what="worst relative error, log-scale and encoder gradients"),
    ),
    Claim(
        id="07.scale-openclip",
        statement="open_clip's accumulation scheme gives the logit scale k times its gradient for k "
                  "micro-batches (k = 3 here).",
        source="ours", scale=TOY_SCALE + ", 3 micro-batches, replica with RNG replay",
        evidence="cell: ch07-scale",
        criterion=Exact(check_scale_openclip, what="|log-scale gradient ratio − 3|"),
        note="Peer: open_clip's --accum-freq, replicated as openclip_style_backward.",
    ),
    Claim(
        id="07.openclip-no-replay",
        statement="As shipped, without RNG replay, open_clip's scheme gives wrong encoder gradients when "
                  "dropout is on (relative error above 1e-3).",
        source="ours", scale=TOY_SCALE + ", 3 micro-batches", evidence="cell: ch07-scale",
        criterion=Exact(check_openclip_no_replay, what="1e-3 ÷ (relative encoder-gradient error)"),
        note="The benchmark record's open_clip-style row shows the same on the character BERT.",
    ),
    Claim(
        id="07.misscaled-optimisers",
        statement="A gradient k times too large on one parameter nearly cancels under Adam, scales SGD's "
                  "step by k, shrinks the other parameters' steps under global-norm clipping and inflates "
                  "the logged norm.",
        source="ours", scale="float64 replay of 5 fixed random gradients, 1 + 32 parameters, k = 3",
        evidence="cell: ch07-scale",
        criterion=Exact(check_misscaled_updates, what="effects (of 5) that fail"),
        note="A replay of random gradients, not a training run.",
    ),
    Claim(
        id="07.distributed",
        statement="Across two processes, the two-pass method and Princeton SimCSE's all-gather recipe both "
                  "reproduce the one-process gradient.",
        source="ours", scale="float64, 2 gloo CPU processes, toy encoder, 4 sentences per rank",
        evidence="cell: ch07-distributed",
        criterion=Exact(check_distributed, what="worst relative gradient error vs one process"),
        note="The check spawns two processes (a few seconds), once per Python session.",
    ),
    Claim(
        id="07.cost-third",
        statement="The method costs one extra forward pass, at most a third of a training step: the "
                  "two-pass step takes at most 4/3 of the full-batch step at every micro-batch size.",
        source="article", scale=BENCH_SCALE + ", micro-batches of 2 to 16 sentences", evidence=BENCH,
        criterion=FromRecord(BENCH, slowest_overhead, at_most=4 / 3,
                             what="slowest two-pass ÷ full-batch time (median, IQR bracket)"),
        note="The article's bound counts compute with backward ≈ 2 forward passes; wall time at small "
             "micro-batches also pays for using the hardware less well.",
    ),
    Claim(
        id="07.overhead-falls",
        statement="The overhead falls as the micro-batch grows: the smallest micro-batch (2 sentences) is "
                  "slower, relative to the full batch, than the largest (16 of 32).",
        source="ours", scale=BENCH_SCALE, evidence=BENCH,
        criterion=FromRecord(BENCH, overhead_drop, at_least=0,
                             what="time ratio at the smallest − at the largest micro-batch (IQR bracket)"),
    ),
    Claim(
        id="07.memory-one-micro-batch",
        statement="The two-pass step holds the activations of one micro-batch: its saved activations are "
                  "(micro-batch ÷ batch) of the full batch's, within 5%, at every micro-batch size.",
        source="article", scale=BENCH_SCALE + ", micro-batches of 2 to 16 sentences", evidence=BENCH,
        criterion=FromRecord(BENCH, memory_excess, at_most=0.05,
                             what="largest relative excess over (micro-batch ÷ batch) × full batch"),
        one_run=DETERMINISTIC,
        note="Bytes saved for backward, weights excluded (SavedTensorMeter). The chapter's live curve "
             "shows the same against the batch size.",
    ),
    Claim(
        id="07.faster-than-gradcache",
        statement="Our two-pass step is faster than GradCache at every micro-batch size in the benchmark.",
        source="ours", scale=BENCH_SCALE + ", micro-batches of 2 to 16 sentences", evidence=BENCH,
        criterion=FromRecord(BENCH, vs_gradcache, at_most=1,
                             what="largest two-pass ÷ GradCache time (bracket: largest of the brackets)"),
    ),
    Claim(
        id="07.tie-sentence-transformers",
        statement="On the two-input MNRL loss ours takes at most 5% longer than sentence-transformers' "
                  "cached loss (a tie or better).",
        source="ours", scale=BENCH_SCALE + ", micro-batch of 8 sentences", evidence=BENCH,
        criterion=FromRecord(BENCH, vs_sentence_transformers, at_most=1.05,
                             what="ours ÷ CachedMNRL time (median, quartile bracket)"),
    ),
    Claim(
        id="07.memory-sentence-transformers",
        statement="On the matched two-input MNRL row, our saved activations agree with "
                  "sentence-transformers' cached loss within 5%.",
        source="ours", scale=BENCH_SCALE + ", micro-batch of 8 sentences", evidence=BENCH,
        criterion=FromRecord(BENCH, memory_vs_sentence_transformers, at_most=0.05,
                             what="|ours ÷ CachedMNRL saved activations − 1|"),
        one_run=DETERMINISTIC,
    ),
    Claim(
        id="07.training-helps",
        statement="SimCSE fine-tuning with the accumulated large batch improves the STS-B test Spearman "
                  "of the character BERT over the starting model.",
        source="ours", scale=BOOK_SCALE, evidence=BOOK,
        criterion=Difference(BOOK, "spearman_large", "spearman_before", at_least=0, scale=100,
                             unit=" Spearman points"),
    ),
    Claim(
        id="07.large-batch-helps",
        statement="A larger batch (through exact accumulation) gives a higher STS-B Spearman than a small "
                  "one at the same step count.",
        source="ours", scale=BOOK_SCALE, evidence=BOOK,
        criterion=Difference(BOOK, "spearman_large", "spearman_small", at_least=0, scale=100,
                             unit=" Spearman points"),
        note="The experiment's motivation, not in the article. Same step count, so the large run also "
             "sees 4x the sentences: batch size and data are mixed.",
    ),
    Claim(
        id="07.batch-insensitive",
        statement="Unsupervised SimCSE is insensitive to the batch size: large and small batch within one "
                  "Spearman point of each other.",
        source="paper: Gao et al. 2021 (SimCSE)", scale=BOOK_SCALE, evidence=BOOK,
        criterion=Within(BOOK, "spearman_large", "spearman_small", tol=1.0, scale=100,
                         unit=" Spearman points"),
        note="The paper's finding is for English BERT over batches of 64 to 512; reading "
             "'insensitive' as within one point is ours.",
    ),
    Claim(
        id="07.large-batch-helps-64-512",
        statement="At the paper's sizes too, batch 512 (through exact accumulation) gives a higher STS-B "
                  "Spearman than batch 64 at the same step count.",
        source="ours", scale=BOOK_64_512_SCALE, evidence=BOOK_64_512,
        criterion=Difference(BOOK_64_512, "spearman_large", "spearman_small", at_least=0, scale=100,
                             unit=" Spearman points"),
        note="Same step count, so the batch-512 run sees 8x the sentences: batch size and data are mixed.",
    ),
    Claim(
        id="07.batch-insensitive-64-512",
        statement="Unsupervised SimCSE is insensitive to the batch size between 64 and 512: the two within "
                  "one Spearman point of each other.",
        source="paper: Gao et al. 2021 (SimCSE)", scale=BOOK_64_512_SCALE, evidence=BOOK_64_512,
        criterion=Within(BOOK_64_512, "spearman_large", "spearman_small", tol=1.0, scale=100,
                         unit=" Spearman points"),
        note="The paper's range (64 to 512), on a Chinese character BERT; reading 'insensitive' as within "
             "one point is ours.",
    ),
    Claim(
        id="07.memory-full-linear",
        statement="The full batch's activation memory grows in proportion to the batch.",
        source="article", scale=MEMORY_SCALE, evidence=BOOK,
        criterion=PerSeed((BOOK,), _full_growth_share,
                          what="(memory at the largest / smallest batch) / (largest / smallest batch)",
                          at_least=0.7),
        one_run=DETERMINISTIC,
    ),
    Claim(
        id="07.memory-twopass-flat",
        statement="The two-pass method's activation memory stays at the level of one micro-batch as the "
                  "batch grows (at most 20% more from the smallest to the largest batch).",
        source="article", scale=MEMORY_SCALE, evidence=BOOK,
        criterion=PerSeed((BOOK,), _memory_growth("twopass"),
                          what="two-pass memory at the largest / smallest batch", at_most=1.2),
        one_run=DETERMINISTIC,
        note="What still grows is the cache of B embeddings and the B x B similarities.",
    ),
]
