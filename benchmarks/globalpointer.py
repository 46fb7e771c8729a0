"""Benchmark for chapter 02: GlobalPointer against a CRF, head only and end to end.

Every measurement goes through :func:`timing.compare` (warm-up, one calibrated
call count for all sides, interleaved rotated rounds, median and quartiles,
threads fixed and recorded, load average before and after). Both sides get the
same inputs and the same preparation outside the timed region: labels are
built once (span indices for GlobalPointer, tag ids for the CRF), gradients
are reset to None on every call.

**Head only** (batch 32, hidden 256, 3 types, head size 64, 7 BIO tags,
``n`` = 32 ... 512, on the same random hidden states):

* inference: GlobalPointer scoring + threshold decoding (``decode_spans``)
  against the emission layer + Viterbi, of pytorch-crf and of our
  :class:`~kexue.globalpointer.LinearChainCRF`; GlobalPointer's scoring alone;
* training: forward + backward of the GlobalPointer scores and loss against
  the emission layer + CRF negative log-likelihood (pytorch-crf, ours);
* GlobalPointer's optional bf16 path (``torch.autocast("cpu", torch.bfloat16)``);
* a 1024³ matmul in fp32 and bf16, in the same interleaved rounds: its
  throughput turns the heads' matmul FLOPs into a compute floor;
* filling a fresh logits-sized buffer against refilling one that exists: the
  cost of the allocation itself (beyond 32 MB glibc maps every buffer fresh
  from the OS, whose pages are zeroed on first touch).

The GlobalPointer heads' scores are shifted below 0 (:func:`negative_`),
so that, as after training, almost every cell is a negative and decoding
returns few spans (a random head scores half the grid above 0, and decoding it
would time the building of Python sets); the record keeps the spans decoded
per text.

**End to end** (:func:`kexue.pretrained.load_zh_char_bert`, 4 layers of width
256, batch 16, ``n`` = 64, 128, 256, dropout on in training): one training step
(forward, backward, AdamW step, encoder fine-tuned) and inference (encoder +
head + decoding to ``(type, start, end)`` spans; the CRF's tag paths go through
``bio_to_spans``), GlobalPointer against the CRF heads. The shipped encoder has
128 positions; at ``n`` = 256 its position table is tiled to 256 rows (the cost
is the same; the values do not matter for a timing).

Writes the record ``benchmarks/globalpointer``
(``kexue/results/benchmarks/globalpointer.json``) through
:func:`kexue.experiments.records.write_record`; chapter 02 reads it with
``load_record``. Run: ``python benchmarks/globalpointer.py`` (several minutes on
2 CPU cores; ``--quick`` for a small check).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchcrf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import compare, environment  # noqa: E402

from kexue import globalpointer as gp  # noqa: E402
from kexue.experiments.records import write_record  # noqa: E402
from kexue.nn import TransformerConfig, TransformerEncoder  # noqa: E402
from kexue.pretrained import load_zh_char_bert  # noqa: E402
from kexue.spans import bio_to_spans  # noqa: E402

RECORD = "benchmarks/globalpointer"
GEMM = 1024  # the floor's matmul: (GEMM x GEMM) @ (GEMM x GEMM)


def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return fn()
    return run


def bf16(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()
    return run


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Per callable: median, quartiles, min, max (seconds); plus the call count and both load readings."""
    res = {name: {k: r[k] for k in ("median_s", "q1_s", "q3_s", "min_s", "max_s")}
           for name, r in report["results"].items()}
    return {"results": res, "calls_per_sample": report["calls_per_sample"], "repeats": report["repeats"],
            "load_before": report["env_before"]["load_avg"], "load_after": report["env_after"]["load_avg"]}


def planted_spans(gen: torch.Generator, b: int, n: int, m: int, per_text: int = 5) -> list[list[tuple[int, int, int]]]:
    """About ``per_text`` spans of 1 to 4 tokens per text, at random types and places."""
    out = []
    for _ in range(b):
        t = torch.randint(0, m, (per_text,), generator=gen).tolist()
        i = torch.randint(0, n - 4, (per_text,), generator=gen).tolist()
        w = torch.randint(0, 4, (per_text,), generator=gen).tolist()
        out.append(sorted({(a, s, s + d) for a, s, d in zip(t, i, w)}))
    return out


def negative_(head: gp.GlobalPointer) -> gp.GlobalPointer:
    """``head`` with its scores moved below 0 almost everywhere, as after training (in place).

    Each type's q and k biases get ``±c`` in the slowest RoPE plane (it turns
    by less than 0.1 rad over 512 positions), which adds ``-c²/√d = -0.5``
    to every score; the weights are halved. A random head would score half the
    grid above 0, and decoding it would time the building of Python sets.
    """
    m, d = head.num_types, head.head_size
    c = (0.5 * d ** 0.5) ** 0.5
    with torch.no_grad():
        head.dense.weight.mul_(0.5)
        bias = head.dense.bias.view(m, 2, d)
        bias.zero_()
        bias[:, 0, -2], bias[:, 1, -2] = c, -c
    return head


def head_only(n: int, args: argparse.Namespace, head: gp.GlobalPointer) -> dict[str, Any]:
    """Every head-only variant at length ``n``, interleaved in one comparison."""
    b, d, m, hs = args.batch, args.hidden, args.types, args.head_size
    k = 2 * m + 1
    gen = torch.Generator().manual_seed(n)
    h = torch.randn(b, n, d, generator=gen)
    mask = torch.ones(b, n, dtype=torch.bool)
    spans = planted_spans(gen, b, n, m)
    idx = gp.span_indices(spans, m, n)
    tags = torch.tensor([gp.spans_to_bio(s, n) for s in spans])
    torch.manual_seed(n)
    tagger = gp.CrfTagger(d, m)
    ref = torchcrf.CRF(k, batch_first=True)
    with torch.no_grad():  # the same CRF scores on both sides
        ref.transitions.copy_(tagger.crf.trans)
        ref.start_transitions.copy_(tagger.crf.start)
        ref.end_transitions.copy_(tagger.crf.end)
    params = [*head.parameters(), *tagger.parameters(), *ref.parameters()]
    a32 = torch.randn(GEMM, GEMM, generator=gen)
    b32 = torch.randn(GEMM, GEMM, generator=gen)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    grid = torch.empty(b * m, n, n)  # one logits-sized buffer, kept

    def reset() -> None:
        for p in params:
            p.grad = None

    def gp_train() -> None:
        reset()
        gp.global_pointer_loss(head(h, mask), idx).backward()

    def gp_train_bf16() -> None:
        reset()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = gp.global_pointer_loss(head(h, mask), idx)
        loss.backward()

    def crf_train_torchcrf() -> None:
        reset()
        (-ref(tagger(h), tags, mask, reduction="mean")).backward()

    def crf_train_ours() -> None:
        reset()
        tagger.crf(tagger(h), tags, mask).backward()

    fns = {
        "gp_infer": no_grad(lambda: gp.decode_spans(head(h, mask))),
        "gp_infer_bf16": no_grad(bf16(lambda: gp.decode_spans(head(h, mask)))),
        "gp_score": no_grad(lambda: head(h, mask)),
        "crf_infer_torchcrf": no_grad(lambda: ref.decode(tagger(h), mask)),
        "crf_infer_ours": no_grad(lambda: tagger.crf.decode(tagger(h), mask)),
        "gp_train": gp_train,
        "gp_train_bf16": gp_train_bf16,
        "crf_train_torchcrf": crf_train_torchcrf,
        "crf_train_ours": crf_train_ours,
        "gemm_fp32": lambda: a32 @ b32,
        "gemm_bf16": lambda: a16 @ b16,
        # the price of a fresh logits-sized buffer (the allocator's, the OS's first touch)
        # against writing the same bytes into a buffer that exists
        "grid_fresh": lambda: torch.empty(b * m, n, n).fill_(1.0),
        "grid_reused": lambda: grid.fill_(1.0),
    }
    with torch.no_grad():
        decoded = sum(map(len, gp.decode_spans(head(h, mask)))) / b
    report = summary(compare(fns, repeats=args.repeats, threads=args.threads))
    proj = 2 * b * n * d * 2 * m * hs  # q and k of every type, one matmul
    scores = 2 * b * m * n * n * hs  # q kᵀ of every type
    return {
        "n": n, **report, "spans_decoded_per_text": decoded,
        "flops": {
            "gp_score": proj + scores,
            # backward: the projection's weight gradient and the two gradients of q kᵀ
            # (the hidden states are inputs here: no gradient for them)
            "gp_train": 2 * proj + 3 * scores,
            "crf_emissions": 2 * b * n * d * k,
            "gemm": 2 * GEMM ** 3,
        },
        "bytes": {"gp_logits": b * m * n * n * 4, "crf_emissions": b * n * k * 4},
    }


def encoder_at(base: TransformerEncoder, n: int) -> TransformerEncoder:
    """``base`` itself, or (n beyond its position table) a copy whose table is tiled to ``n`` rows."""
    cfg = base.config
    if n <= cfg.max_len:
        return base
    long = TransformerEncoder(TransformerConfig(**{**cfg.to_dict(), "max_len": n}))
    state = base.state_dict()
    w = state["position_embedding.weight"]
    state["position_embedding.weight"] = w.repeat(math.ceil(n / len(w)), 1)[:n]
    long.load_state_dict(state)
    return long


class Tagger(torch.nn.Module):
    """Encoder + head, one of ``gp``, ``crf_torchcrf`` (emission layer + pytorch-crf), ``crf_ours``."""

    def __init__(self, encoder: TransformerEncoder, kind: str, m: int, head_size: int) -> None:
        super().__init__()
        self.encoder, self.kind = copy.deepcopy(encoder), kind
        dim = encoder.config.dim
        if kind == "gp":
            self.head = negative_(gp.GlobalPointer(dim, m, head_size))
        else:
            self.head = gp.CrfTagger(dim, m)
            self.ref = torchcrf.CRF(2 * m + 1, batch_first=True)

    def loss(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.encoder(ids, mask)
        if self.kind == "gp":
            return gp.global_pointer_loss(self.head(h, mask), labels)
        if self.kind == "crf_ours":
            return self.head.crf(self.head(h), labels, mask)
        return -self.ref(self.head(h), labels, mask, reduction="mean")

    def predict(self, ids: torch.Tensor, mask: torch.Tensor) -> list[set[tuple[int, int, int]]]:
        h = self.encoder(ids, mask)
        if self.kind == "gp":
            return gp.decode_spans(self.head(h, mask))
        em = self.head(h)
        paths = self.head.crf.decode(em, mask) if self.kind == "crf_ours" else self.ref.decode(em, mask)
        return [bio_to_spans(p) for p in paths]


def end_to_end(n: int, args: argparse.Namespace, base: TransformerEncoder, vocab: int) -> dict[str, Any]:
    b, m = args.e2e_batch, args.types
    gen = torch.Generator().manual_seed(100 + n)
    ids = torch.randint(5, vocab, (b, n), generator=gen)
    mask = torch.ones(b, n, dtype=torch.bool)
    spans = planted_spans(gen, b, n, m)
    labels = {"gp": gp.span_indices(spans, m, n),
              "crf": torch.tensor([gp.spans_to_bio(s, n) for s in spans])}
    encoder = encoder_at(base, n)
    fns: dict[str, Callable[[], Any]] = {}
    for kind in ("gp", "crf_torchcrf", "crf_ours"):
        torch.manual_seed(n)
        model = Tagger(encoder, kind, m, args.head_size)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        y = labels["gp" if kind == "gp" else "crf"]

        def train(model: Tagger = model, opt: torch.optim.Optimizer = opt, y: torch.Tensor = y) -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            model.loss(ids, mask, y).backward()
            opt.step()

        def infer(model: Tagger = model) -> list[set[tuple[int, int, int]]]:
            model.eval()
            with torch.no_grad():
                return model.predict(ids, mask)

        fns[f"{kind}_train"], fns[f"{kind}_infer"] = train, infer
    decoded = {kind: sum(map(len, fns[f"{kind}_infer"]())) / b for kind in ("gp", "crf_ours")}
    return {"n": n, **summary(compare(fns, repeats=args.e2e_repeats, threads=args.threads)),
            "spans_decoded_per_text": decoded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--e2e-lengths", type=int, nargs="*", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--e2e-batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--types", type=int, default=3)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--e2e-repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="n = 32, 64 and one short end-to-end length; no record")
    parser.add_argument("--name", default=RECORD, help=f"record name (default {RECORD!r})")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.e2e_lengths, args.repeats, args.e2e_repeats = [32, 64], [32], 3, 3
    torch.manual_seed(0)
    env = environment()
    torch.manual_seed(1)
    head = negative_(gp.GlobalPointer(args.hidden, args.types, args.head_size))
    rows = []
    for n in args.lengths:
        rows.append(head_only(n, args, head))
        r = rows[-1]["results"]
        print(f"n={n:4d} " + " ".join(f"{k}={v['median_s'] * 1e3:.2f}ms" for k, v in r.items()), flush=True)
    e2e = []
    if args.e2e_lengths:
        bert, tok = load_zh_char_bert()
        for n in args.e2e_lengths:
            e2e.append(end_to_end(n, args, bert.encoder, tok.vocab_size))
            r = e2e[-1]["results"]
            print(f"e2e n={n:4d} " + " ".join(f"{k}={v['median_s'] * 1e3:.1f}ms" for k, v in r.items()), flush=True)
    out = {
        "what": "chapter 02: GlobalPointer vs CRF, head only and end to end (times in seconds per call)",
        "torchcrf": getattr(torchcrf, "__version__", "0.7.2"),
        "env": env, "threads": args.threads,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch": args.batch, "hidden": args.hidden, "types": args.types, "head_size": args.head_size,
        "tags": 2 * args.types + 1, "gemm_size": GEMM, "e2e_batch": args.e2e_batch,
        "e2e_encoder": "kexue.pretrained.load_zh_char_bert (4 layers, width 256, 128 positions; tiled beyond)",
        "rows": rows, "e2e": e2e, "load_at_end": environment()["load_avg"],
    }
    if args.quick:
        print("quick run: no record written")
        return
    print("wrote", write_record(args.name, out))


if __name__ == "__main__":
    main()
