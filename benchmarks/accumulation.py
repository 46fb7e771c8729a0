"""Benchmark for book chapter 07: exact contrastive gradient accumulation, ours vs the peers.

Runs, on the same model (the shipped character BERT, float32, dropout 0.1 on) and the
same Chinese STS-B training sentences:

* gradient equality against the full-batch reference (same seed, same micro-batches),
  for ``contrastive_backward``, GradCache (``gradcache`` on PyPI) and sentence-transformers'
  ``CachedMultipleNegativesRankingLoss``; naive accumulation and an open_clip-style loop
  (no RNG replay) as counter-examples;
* wall-clock time per gradient computation (median over repeats), as a ratio to the
  full-batch step;
* peak bytes saved for backward (activation memory, weights excluded).

Writes the record ``benchmarks/accumulation`` (``kexue/results/benchmarks/accumulation.json``,
read with ``kexue.experiments.records.load_record``). Usage::

    .venv/bin/python benchmarks/accumulation.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import kexue.accumulation as acc
from kexue.data import load_sts_b
from kexue.experiments.ch07_accumulation import CONFIGS, load_sentence_encoder
from kexue.experiments.records import write_record
from kexue.pretrained import ZH_CHAR_BERT

ROOT = Path(__file__).resolve().parents[1]
RECORD = "benchmarks/accumulation"
TAU = 0.05


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


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


def measure(
    methods: dict[str, Callable[[], Any]], encoder: nn.Module, repeats: int
) -> dict[str, tuple[float, float, float]]:
    """Per method: (median wall seconds, median CPU seconds of this process, peak MiB saved for backward).

    Each callable fills ``encoder``'s grads. CPU time (``time.process_time``, summed over threads) is
    reported beside wall time because the machine may be shared: other jobs stretch wall time
    unevenly, while the CPU work a method does is what the ratios should compare.

    The repeats go round-robin over the methods (after one warm-up round), so that a machine
    shared with other jobs slows every method alike rather than whichever ran last.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(repeats + 1):
        for name, fn in methods.items():
            encoder.zero_grad(set_to_none=True)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if round_:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    out = {}
    for name, fn in methods.items():
        encoder.zero_grad(set_to_none=True)
        with acc.SavedTensorMeter(exclude=encoder.parameters()) as meter:
            fn()
        out[name] = (statistics.median(times[name]), statistics.median(cpu[name]), meter.peak / 2**20)
    encoder.zero_grad(set_to_none=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=32, help="sentences per batch")
    parser.add_argument("--micro", type=int, default=8, help="sentences per micro-batch")
    parser.add_argument("--max-chars", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
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
    timed: dict[str, Callable[[], Any]] = {
        "full batch (one graph)": lambda: acc.full_batch_backward(encoder, simcse_ids, simcse),
        "kexue contrastive_backward": simcse_methods["kexue contrastive_backward"][0],
        "open_clip-style": simcse_methods["open_clip-style (no RNG replay)"][0],
    }
    if "GradCache" in simcse_methods:
        timed["GradCache"] = simcse_methods["GradCache"][0]
    if st_cached is not None:
        # MNRL on the SimCSE-sized batch: 2 x sentences rows, as two columns
        timed["sentence-transformers MNRL (full batch)"] = lambda: st_plain(
            [features(anchors), features(positives)], labels).backward()
        timed["sentence-transformers CachedMNRL"] = mnrl_methods["sentence-transformers CachedMNRL"][0]
        timed["kexue contrastive_backward, 2 inputs"] = mnrl_methods["kexue contrastive_backward"][0]
    rows_memory = []
    for name, (seconds, cpu_seconds, mib) in measure(timed, encoder, args.repeats).items():
        rows_timing.append(dict(method=name, seconds=seconds, cpu_seconds=cpu_seconds))
        rows_memory.append(dict(method=name, saved_mib=mib))
        print(f"{name:>45}: wall {seconds * 1e3:8.1f} ms  cpu {cpu_seconds * 1e3:8.1f} ms  {mib:7.1f} MiB", flush=True)
    full = next(r["cpu_seconds"] for r in rows_timing if r["method"] == "full batch (one graph)")
    full_mib = next(r["saved_mib"] for r in rows_memory if r["method"] == "full batch (one graph)")
    full_wall = next(r["seconds"] for r in rows_timing if r["method"] == "full batch (one graph)")
    st_full = next((r["cpu_seconds"] for r in rows_timing if r["method"].endswith("MNRL (full batch)")), None)
    for row in rows_timing:  # ratios of CPU time; wall-time ratio kept beside it
        row["ratio_to_full"] = row["cpu_seconds"] / full
        row["wall_ratio_to_full"] = row["seconds"] / full_wall
        if st_full is not None:
            row["ratio_to_st_mnrl"] = row["cpu_seconds"] / st_full
    for row in rows_memory:
        row["ratio_to_full"] = row["saved_mib"] / full_mib

    # ---- time overhead against the micro-batch size (the extra no-graph pass costs more when it is small) ----
    rows_by_micro = []
    for micro in [m for m in (2, 4, 8, 16) if args.sentences % m == 0 and m < args.sentences]:
        methods: dict[str, Callable[[], Any]] = {
            "full": lambda: acc.full_batch_backward(encoder, simcse_ids, simcse),
            "two-pass": lambda m=micro: acc.contrastive_backward(encoder, simcse_ids, simcse, 2 * m),
        }
        if peers["gradcache"]:
            methods["GradCache"] = lambda m=micro: GradCache(models=[encoder], chunk_sizes=2 * m, loss_fn=simcse)(simcse_ids)
        res = measure(methods, encoder, args.repeats)
        row = dict(micro_batch_sentences=micro, ratio_to_full=res["two-pass"][1] / res["full"][1],
                   saved_mib=res["two-pass"][2], full_saved_mib=res["full"][2])
        if "GradCache" in res:
            row["gradcache_ratio_to_full"] = res["GradCache"][1] / res["full"][1]
        rows_by_micro.append(row)
        print(f"micro-batch {micro:>3} sentences: two-pass {row['ratio_to_full']:.2f}x full batch (CPU time)"
              + (f", GradCache {row['gradcache_ratio_to_full']:.2f}x" if "gradcache_ratio_to_full" in row else ""), flush=True)

    result = dict(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        device="cpu",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        load_average=list(os.getloadavg()),
        timing_note="ratios compare CPU time of this process (time.process_time); wall time is also given",
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
    print(f"wrote {write_record(RECORD, result)}")


if __name__ == "__main__":
    main()
