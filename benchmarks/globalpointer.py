"""Benchmark for chapter 02: GlobalPointer vs CRF, head only, as the sequence grows.

Times, at batch 32 and sequence length 32..1024 on the same random hidden states:

* decode: GlobalPointer thresholding (:func:`kexue.globalpointer.decode_spans`,
  on logits with about 5 entities per sample) against CRF Viterbi (ours,
  :class:`kexue.globalpointer.LinearChainCRF`, and pytorch-crf's
  ``CRF.decode``); and each head's scoring alone (GlobalPointer's n×n
  scores; the CRF's emission layer), so that scoring + decoding compares too;
* loss: forward + backward of the GlobalPointer loss (scores included) against
  the CRF negative log-likelihood by the forward algorithm (ours and pytorch-crf);
* memory of the ``(batch, types, n, n)`` logits.

Writes ratios to the record ``benchmarks/globalpointer``
(``kexue/results/benchmarks/globalpointer.json``, see :mod:`kexue.experiments.records`).
Run: ``python benchmarks/globalpointer.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
import torchcrf

from kexue import globalpointer as gp
from kexue.experiments.records import write_record

RECORD = "benchmarks/globalpointer"


def timeit(fn, reps: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--types", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=RECORD, help=f"record name (default {RECORD!r})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, m, d = args.batch, args.types, args.hidden
    k = 2 * m + 1
    rows = []
    for n in args.lengths:
        reps = 5 if n <= 256 else 2
        h = torch.randn(b, n, d)
        mask = torch.ones(b, n, dtype=torch.bool)
        head = gp.GlobalPointer(d, m)
        tagger = gp.CrfTagger(d, m)
        ref = torchcrf.CRF(k, batch_first=True)
        with torch.no_grad():
            ref.transitions.copy_(tagger.crf.trans)
            ref.start_transitions.copy_(tagger.crf.start)
            ref.end_transitions.copy_(tagger.crf.end)
        # realistic logits: about 5 entities per sample, everything else negative
        spans = [[(int(t), int(i), int(i) + 2) for t, i in zip(torch.randint(0, m, (5,)), torch.randint(0, n - 3, (5,)))]
                 for _ in range(b)]
        y = gp.span_targets(spans, m, n)
        logits = gp.mask_span_logits(torch.where(y.bool(), 5.0, -5.0) + 0.1 * torch.randn(b, m, n, n), mask)
        with torch.no_grad():
            em = tagger(h)
        tags = torch.randint(0, k, (b, n))
        r = {"n": n, "reps": reps}
        with torch.no_grad():
            r["gp_decode_s"] = timeit(lambda: gp.decode_spans(logits), reps)
            # scoring alone (a random head's scores are positive half the time, so
            # decoding them would time Python set building, not the method)
            r["gp_score_s"] = timeit(lambda: head(h, mask), reps)
            r["crf_emit_s"] = timeit(lambda: tagger(h), reps)
            r["crf_viterbi_ours_s"] = timeit(lambda: tagger.crf.decode(em, mask), reps)
            r["crf_viterbi_torchcrf_s"] = timeit(lambda: ref.decode(em, mask), reps)

        def gp_loss() -> None:
            gp.global_pointer_loss(head(h, mask), y).backward()

        def crf_loss_ours() -> None:
            tagger.crf(tagger(h), tags, mask).backward()

        def crf_loss_ref() -> None:
            (-ref(tagger(h), tags, mask, reduction="mean")).backward()

        r["gp_loss_s"] = timeit(gp_loss, reps)
        r["crf_loss_ours_s"] = timeit(crf_loss_ours, reps)
        r["crf_loss_torchcrf_s"] = timeit(crf_loss_ref, reps)
        r["logits_bytes"] = b * m * n * n * 4
        r["emissions_bytes"] = b * n * k * 4
        r["decode_speedup_vs_torchcrf"] = r["crf_viterbi_torchcrf_s"] / r["gp_decode_s"]
        r["decode_speedup_vs_ours"] = r["crf_viterbi_ours_s"] / r["gp_decode_s"]
        r["score_decode_speedup"] = (r["crf_emit_s"] + r["crf_viterbi_ours_s"]) / (r["gp_score_s"] + r["gp_decode_s"])
        r["loss_speedup_vs_ours"] = r["crf_loss_ours_s"] / r["gp_loss_s"]
        r["loss_speedup_vs_torchcrf"] = r["crf_loss_torchcrf_s"] / r["gp_loss_s"]
        rows.append(r)
        print({key: (round(v, 5) if isinstance(v, float) else v) for key, v in r.items()}, flush=True)
    out = {
        "what": "chapter 02: GlobalPointer vs CRF, head only (ratios > 1 mean GlobalPointer is faster)",
        "torch": torch.__version__,
        "torchcrf": getattr(torchcrf, "__version__", "0.7.2"),
        "threads": torch.get_num_threads(),
        "device": f"cpu ({platform.processor() or platform.machine()})",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch": b, "hidden": d, "types": m, "head_size": 64, "tags": k,
        "rows": rows,
    }
    print("wrote", write_record(args.name, out))


if __name__ == "__main__":
    main()
