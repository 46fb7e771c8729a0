"""Benchmark: kexue's 2D RoPE against rotary-embedding-torch's axial rotary (book chapter 03).

Forward plus backward of the rotation of ``x`` of shape ``(batch, heads, tokens, head_dim)``
on a square patch grid, for four implementations:

* ``kexue``: :func:`kexue.rope.apply_rope_2d`, angles formed from the positions on every call;
* ``rotary_embedding_torch``: ``RotaryEmbedding(head_dim // 2).get_axial_freqs(H, W)`` (computed
  once, outside the timed region) then ``apply_rotary_emb`` (which takes cos/sin on every call);
* ``elementwise_bound``: ``x * cos + rot(x) * sin`` with full-width cos/sin tables precomputed,
  the plain element-wise lower bound;
* ``matrix``: one explicit ``(head_dim, head_dim)`` matrix per token, precomputed (einsum).

Equivalence is checked first (float32, tolerance 1e-5); then each variant is timed with
``torch.utils.benchmark``. Ratios are written to the record ``benchmarks/rope``
(``kexue/results/benchmarks/rope.json``, read by the chapter through ``load_record``)::

    python benchmarks/rope.py            # all sizes
    python benchmarks/rope.py --quick    # one small size (smoke)

Timings are the best of interleaved rounds at 1 and 2 intra-op threads; the JSON
records the machine's load average, since a shared CPU makes absolute times noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform

import torch
from torch.utils import benchmark

from kexue.experiments.records import write_record
from kexue.rope import apply_rope_2d, grid_positions, rope_2d_matrix

SIZES = [(8, 8, 1024, 64), (8, 8, 256, 64), (8, 8, 1024, 128), (2, 8, 4096, 64)]
RECORD = "benchmarks/rope"


def _rot(x: torch.Tensor) -> torch.Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def make_variants(n: int, d: int, device: torch.device):
    from rotary_embedding_torch import RotaryEmbedding, apply_rotary_emb

    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"tokens must be a square number, got {n}")
    pos = grid_positions(side, side, device=device)  # (n, 2)
    freqs = RotaryEmbedding(d // 2).to(device).get_axial_freqs(side, side).reshape(n, d)  # (n, d)
    cos, sin = freqs.cos(), freqs.sin()
    mats = torch.stack([rope_2d_matrix(p, d, dtype=torch.float32, device=device) for p in pos.cpu()])  # (n, d, d)
    return {
        "kexue": lambda x: apply_rope_2d(x, pos),
        "rotary_embedding_torch": lambda x: apply_rotary_emb(freqs, x),
        "elementwise_bound": lambda x: x * cos + _rot(x) * sin,
        "matrix": lambda x: torch.einsum("nij,bhnj->bhni", mats, x),
    }


def check_equivalence(variants, shape, device) -> float:
    x = torch.randn(shape, device=device)
    ref = variants["kexue"](x)
    worst = 0.0
    for name, fn in variants.items():
        out = fn(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        worst = max(worst, (out - ref).abs().max().item())
    return worst


def time_fwd_bwd(variants, shape, device, min_run_time: float, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` milliseconds per forward+backward for each variant.

    Variants are measured in interleaved rounds and the minimum over rounds is
    kept, which is robust to other processes sharing the CPU.
    """
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    best = {name: math.inf for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():

            def step(fn=fn):
                x.grad = None
                fn(x).backward(grad)

            step()  # warm-up
            timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
            best[name] = min(best[name], timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small size, short timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts")
    parser.add_argument("--name", default=RECORD, help="record name (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = [(2, 4, 256, 64)] if args.quick else SIZES
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in sizes:
            b, h, n, d = shape
            variants = make_variants(n, d, device)
            err = check_equivalence(variants, shape, device)
            ms = time_fwd_bwd(variants, shape, device, args.min_run_time, args.rounds)
            row = {
                "shape": list(shape),
                "threads": threads,
                "equivalent": True,
                "max_abs_diff": err,
                **{f"{name}_ms": t for name, t in ms.items()},
                "peer_over_kexue": ms["rotary_embedding_torch"] / ms["kexue"],
                "kexue_over_bound": ms["kexue"] / ms["elementwise_bound"],
                "matrix_over_kexue": ms["matrix"] / ms["kexue"],
            }
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    import rotary_embedding_torch

    report = {
        "benchmark": "2D RoPE forward+backward, float32",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device) if device.type != "cpu" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "rotary_embedding_torch": getattr(rotary_embedding_torch, "__version__", "0.9.1"),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "min_run_time_s": args.min_run_time,
        "results": rows,
    }
    print(f"wrote {write_record(args.name, report)}")


if __name__ == "__main__":
    main()
