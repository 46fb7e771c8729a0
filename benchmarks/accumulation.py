"""Benchmark for book chapter 07: exact contrastive gradient accumulation, ours vs the peers.

Runs, on the same model (the shipped character BERT, float32, dropout 0.1 on) and the
same Chinese STS-B training sentences:

* gradient equality against the full-batch reference (same seed, same micro-batches),
  for ``contrastive_backward``, GradCache (``gradcache`` on PyPI) and sentence-transformers'
  ``CachedMultipleNegativesRankingLoss``; naive accumulation and an open_clip-style loop
  (no RNG replay) as counter-examples;
* wall-clock time per gradient computation, as a ratio to the full-batch step: all the
  methods of one table are timed together by :func:`timing.compare` (warm-up, interleaved
  rounds on the same batch, median and interquartile range, intra-op threads fixed); each
  timed call zeroes the gradients and then computes them, the same on every side;
  ratios are ``median / median`` with ``[q1 / q3, q3 / q1]`` of the two
  interquartile ranges as spread;
* peak bytes saved for backward (activation memory, weights excluded), measured apart.

The allocator is fixed first (glibc ``mallopt``: freed blocks below 1 GiB are kept for reuse,
Linux only), so that what one method pays for fresh, kernel-zeroed pages does not depend on
which method ran before it in the interleaved rounds.

Writes the record ``benchmarks/accumulation`` (``kexue/results/benchmarks/accumulation.json``,
read with ``kexue.experiments.records.load_record``). Usage::

    .venv/bin/python benchmarks/accumulation.py [--repeats 9] [--threads 1]   # ~3 minutes
    .venv/bin/python benchmarks/accumulation.py --quick    # 3 repeats, no record written
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import kexue.accumulation as acc
from kexue.data import load_sts_b
from kexue.experiments.ch07_accumulation import CONFIGS, load_sentence_encoder
from kexue.experiments.records import write_record
from kexue.pretrained import ZH_CHAR_BERT

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling timing module
from timing import compare, environment, ratio, reuse_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECORD = "benchmarks/accumulation"
TAU = 0.05


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


ALLOCATOR = "mallopt(M_MMAP_THRESHOLD, 1 GiB), mallopt(M_TRIM_THRESHOLD, 1 GiB): freed blocks are reused"




def load_gradcache() -> Any:
    """GradCache's class. The PyPI wheel ``gradcache==0.0.1`` installs the package as ``gradcache``
    but its modules import ``grad_cache``; alias it so the class loads."""
    import gradcache

    sys.modules.setdefault("grad_cache", gradcache)
    sys.modules.setdefault("grad_cache.context_managers", importlib.import_module("gradcache.context_managers"))
    return importlib.import_module("gradcache.grad_cache").GradCache


class STModule(nn.Module):
    """Our SentenceEncoder as a sentence-transformers module (features dict in, sentence_embedding out)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features["sentence_embedding"] = self.encoder(features["input_ids"])
        return features


def sentence_transformers_losses(encoder: nn.Module, micro_rows: int) -> tuple[Any, Any]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    model = SentenceTransformer(modules=[STModule(encoder)], device="cpu")
    cached = CachedMultipleNegativesRankingLoss(model, scale=1 / TAU, mini_batch_size=micro_rows)
    plain = MultipleNegativesRankingLoss(model, scale=1 / TAU)
    return cached, plain


def features(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def timed(
    methods: dict[str, Callable[[], Any]], encoder: nn.Module, repeats: int, threads: int
) -> dict[str, Any]:
    """:func:`compare` of the methods; each timed call zeroes ``encoder``'s grads, then fills them."""

    def with_fresh_grads(fn: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            encoder.zero_grad(set_to_none=True)
            fn()

        return call

    report = compare({name: with_fresh_grads(fn) for name, fn in methods.items()},
                     repeats=repeats, warmup=1, min_sample_s=0.0, threads=threads)
    encoder.zero_grad(set_to_none=True)
    return report


def ratio_spread(report: dict[str, Any], other: str, base: str) -> tuple[float, list[float]]:
    """``ratio(other, base)`` and its spread: from ``other``'s fast quartile over ``base``'s slow one
    to ``other``'s slow quartile over ``base``'s fast one (an interval that holds the ratio)."""
    a, b = report["results"][other], report["results"][base]
    q1, q3 = a["q1_s"] / b["q3_s"], a["q3_s"] / b["q1_s"]
    return ratio(report, other, base), [q1, q3]


def saved_mib(methods: dict[str, Callable[[], Any]], encoder: nn.Module) -> dict[str, float]:
    """Per method: peak MiB saved for backward (weights excluded), from one call."""
    out = {}
    for name, fn in methods.items():
        encoder.zero_grad(set_to_none=True)
        with acc.SavedTensorMeter(exclude=encoder.parameters()) as meter:
            fn()
        out[name] = meter.peak / 2**20
    encoder.zero_grad(set_to_none=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=32, help="sentences per batch")
    parser.add_argument("--micro", type=int, default=8, help="sentences per micro-batch")
    parser.add_argument("--max-chars", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=9, help="interleaved timing rounds (at least 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads while timing")
    parser.add_argument("--quick", action="store_true", help="3 repeats, micro-batches 4 and 8, no record")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    fixed = reuse_freed_memory()
    env = environment()
    torch.manual_seed(0)
    cfg = CONFIGS["smoke"]
    path = ZH_CHAR_BERT if (ZH_CHAR_BERT / "model.safetensors").is_file() else ZH_CHAR_BERT / "checkpoint"
    encoder, tokenizer = load_sentence_encoder(cfg, path)
    encoder.train()  # dropout on

    # full-width rows only, so that no peer trims padding columns and every call draws the same masks
    pairs = [(a, b) for a, b, _ in load_sts_b("train") if min(len(a), len(b)) >= args.max_chars]
    pairs = pairs[: args.sentences]
    if len(pairs) < args.sentences:
        raise SystemExit(f"only {len(pairs)} long enough pairs")
    anchors = tokenizer([a for a, _ in pairs], args.max_chars, pad_to_max=True)[0]
    positives = tokenizer([b for _, b in pairs], args.max_chars, pad_to_max=True)[0]
    simcse_ids = anchors.repeat_interleave(2, dim=0)  # SimCSE: two dropout views on adjacent rows
    micro_rows = 2 * args.micro

    def simcse(h: torch.Tensor) -> torch.Tensor:
        return acc.simcse_loss(h, TAU)

    def mnrl(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return acc.info_nce(a, p, TAU)

    def grads_of(fn: Callable[[], Any], seed: int = 11) -> torch.Tensor:
        encoder.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        fn()
        g = acc.grad_vector(encoder).clone()
        encoder.zero_grad(set_to_none=True)
        return g

    rows_gradients: list[dict[str, Any]] = []
    rows_timing: list[dict[str, Any]] = []
    peers: dict[str, str | None] = {"sentence-transformers": _version("sentence-transformers"), "gradcache": _version("gradcache")}

    # ---- SimCSE (one input, adjacent views) ----
    simcse_methods: dict[str, tuple[Callable[[], Any], bool]] = {
        "kexue contrastive_backward": (lambda: acc.contrastive_backward(encoder, simcse_ids, simcse, micro_rows), True),
        "naive accumulation": (lambda: acc.naive_accumulation_backward(encoder, simcse_ids, simcse, micro_rows), False),
        "open_clip-style (no RNG replay)": (
            lambda: acc.openclip_style_backward(encoder, simcse_ids, simcse, micro_rows), False),
    }
    if peers["gradcache"]:
        GradCache = load_gradcache()
        gc = GradCache(models=[encoder], chunk_sizes=micro_rows, loss_fn=simcse)
        simcse_methods["GradCache"] = (lambda: gc(simcse_ids), True)
    reference = grads_of(lambda: acc.full_batch_backward(encoder, simcse_ids, simcse, micro_rows))
    for name, (fn, exact) in simcse_methods.items():
        rows_gradients.append(dict(loss="SimCSE", method=name, exact_expected=exact,
                                   rel_error=acc.relative_error(grads_of(fn), reference)))

    # ---- MNRL / InfoNCE (two inputs: anchors and positives) ----
    mnrl_methods: dict[str, tuple[Callable[[], Any], bool]] = {
        "kexue contrastive_backward": (
            lambda: acc.contrastive_backward(encoder, (anchors, positives), mnrl, args.micro), True),
    }
    st_cached = st_plain = None
    if peers["sentence-transformers"]:
        st_cached, st_plain = sentence_transformers_losses(encoder, args.micro)
        labels = torch.zeros(args.sentences)
        mnrl_methods["sentence-transformers CachedMNRL"] = (
            lambda: st_cached([features(anchors), features(positives)], labels).backward(), True)
    reference = grads_of(lambda: acc.full_batch_backward(encoder, (anchors, positives), mnrl, args.micro))
    for name, (fn, exact) in mnrl_methods.items():
        rows_gradients.append(dict(loss="MNRL", method=name, exact_expected=exact,
                                   rel_error=acc.relative_error(grads_of(fn), reference)))

    # ---- time and memory, SimCSE batch ----
    timed_methods: dict[str, Callable[[], Any]] = {
        "full batch (one graph)": lambda: acc.full_batch_backward(encoder, simcse_ids, simcse),
        "kexue contrastive_backward": simcse_methods["kexue contrastive_backward"][0],
        "open_clip-style": simcse_methods["open_clip-style (no RNG replay)"][0],
    }
    if "GradCache" in simcse_methods:
        timed_methods["GradCache"] = simcse_methods["GradCache"][0]
    if st_cached is not None:
        # MNRL on the SimCSE-sized batch: 2 x sentences rows, as two columns
        timed_methods["sentence-transformers MNRL (full batch)"] = lambda: st_plain(
            [features(anchors), features(positives)], labels).backward()
        timed_methods["sentence-transformers CachedMNRL"] = mnrl_methods["sentence-transformers CachedMNRL"][0]
        timed_methods["kexue contrastive_backward, 2 inputs"] = mnrl_methods["kexue contrastive_backward"][0]
    full_name, st_full_name = "full batch (one graph)", "sentence-transformers MNRL (full batch)"
    report = timed(timed_methods, encoder, args.repeats, args.threads)
    loads = {"main table": report["env_after"]["load_avg"]}
    for name, res in report["results"].items():
        row = dict(method=name, seconds=res["median_s"], iqr_s=[res["q1_s"], res["q3_s"]])
        row["ratio_to_full"], row["ratio_to_full_iqr"] = ratio_spread(report, name, full_name)
        if st_full_name in report["results"]:
            row["ratio_to_st_mnrl"], row["ratio_to_st_mnrl_iqr"] = ratio_spread(report, name, st_full_name)
        rows_timing.append(row)
    mib = saved_mib(timed_methods, encoder)
    rows_memory = [dict(method=name, saved_mib=m, ratio_to_full=m / mib[full_name]) for name, m in mib.items()]
    for row in rows_timing:
        print(f"{row['method']:>45}: {row['seconds'] * 1e3:8.1f} ms (IQR {row['iqr_s'][0] * 1e3:.1f}-"
              f"{row['iqr_s'][1] * 1e3:.1f})  x{row['ratio_to_full']:.2f} of full  {mib[row['method']]:7.1f} MiB",
              flush=True)

    # ---- time overhead against the micro-batch size (the extra no-graph pass costs more when it is small) ----
    rows_by_micro = []
    micros = (4, 8) if args.quick else (2, 4, 8, 16)
    for micro in [m for m in micros if args.sentences % m == 0 and m < args.sentences]:
        methods: dict[str, Callable[[], Any]] = {
            "full": lambda: acc.full_batch_backward(encoder, simcse_ids, simcse),
            "two-pass": lambda m=micro: acc.contrastive_backward(encoder, simcse_ids, simcse, 2 * m),
        }
        if peers["gradcache"]:
            gc_micro = GradCache(models=[encoder], chunk_sizes=2 * micro, loss_fn=simcse)  # built once, untimed
            methods["GradCache"] = lambda g=gc_micro: g(simcse_ids)
        report = timed(methods, encoder, args.repeats, args.threads)
        loads[f"micro-batch {micro}"] = report["env_after"]["load_avg"]
        mib = saved_mib({k: methods[k] for k in ("full", "two-pass")}, encoder)
        row = dict(micro_batch_sentences=micro, full_seconds=report["results"]["full"]["median_s"],
                   saved_mib=mib["two-pass"], full_saved_mib=mib["full"])
        row["ratio_to_full"], row["ratio_to_full_iqr"] = ratio_spread(report, "two-pass", "full")
        if "GradCache" in methods:
            row["gradcache_ratio_to_full"], row["gradcache_ratio_to_full_iqr"] = ratio_spread(report, "GradCache", "full")
            row["ratio_to_gradcache"], row["ratio_to_gradcache_iqr"] = ratio_spread(report, "two-pass", "GradCache")
        rows_by_micro.append(row)
        print(f"micro-batch {micro:>3} sentences: two-pass {row['ratio_to_full']:.2f}x full batch "
              f"(IQR {row['ratio_to_full_iqr'][0]:.2f}-{row['ratio_to_full_iqr'][1]:.2f})"
              + (f", GradCache {row['gradcache_ratio_to_full']:.2f}x" if "gradcache_ratio_to_full" in row else ""),
              flush=True)

    result = dict(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        device=f"cpu ({env['cpu']})",
        torch=torch.__version__,
        threads=args.threads,
        allocator=ALLOCATOR if fixed else "glibc defaults (mallopt unavailable)",
        environment=env,
        load_average=environment()["load_avg"],
        load_average_after=loads,
        timing_note="benchmarks/timing.py compare: wall time, warm-up, interleaved rotated rounds, median and IQR; "
                    "ratio = median / median, its spread (_iqr) = [q1 / q3, q3 / q1] of the two quartiles",
        peers=peers,
        model=str(path.relative_to(ROOT)),
        setup=dict(sentences=args.sentences, micro_batch_sentences=args.micro, max_chars=args.max_chars,
                   temperature=TAU, dtype="float32", dropout=cfg.dropout, repeats=args.repeats),
        gradients=rows_gradients,
        timing=rows_timing,
        memory=rows_memory,
        time_by_micro_batch=rows_by_micro,
    )
    for row in rows_gradients:
        print(f"{row['loss']:>6} {row['method']:>40}: rel. error {row['rel_error']:.2e}")
    print("--quick: no record written" if args.quick else f"wrote {write_record(RECORD, result)}")


if __name__ == "__main__":
    main()
