"""Benchmark: kexue's 2D RoPE against rotary-embedding-torch's axial rotary (book chapter 03).

Forward plus backward of the rotation of ``x`` of shape ``(batch, heads, tokens, head_dim)``
(float32) on a square patch grid, for four equivalent implementations:

* ``kexue``: :func:`kexue.rope.apply_rope_2d`, angles formed from the positions on every call;
* ``rotary_embedding_torch``: ``RotaryEmbedding(head_dim // 2).get_axial_freqs(H, W)`` (built
  once, outside the timing, as that library intends) then ``apply_rotary_emb`` (which takes
  cos/sin on every call); so ours pays for forming its angles and the peer does not;
* ``real_formula``: ``x * cos + rot(x) * sin`` with full-width cos/sin tables precomputed,
  the textbook real-arithmetic formula (not a bound: it makes a rotated copy of ``x``);
* ``matrix``: one explicit ``(head_dim, head_dim)`` matrix per token, precomputed (einsum).

The physical floor. Any implementation must, at least, read ``x`` and write the output in the
forward pass, and read the output's gradient and write ``x``'s gradient in the backward pass:
``4 * numel * 4`` bytes in float32, over four buffers the size of ``x``. Not counted: the
cos/sin tables or positions (at most ``tokens * head_dim`` numbers, ``1 / (batch * heads)`` of
``x``), and the zeroing of freshly allocated output pages. ``copy`` times ``y.copy_(src)``
with ``src`` and ``y`` of ``2 * numel`` float32 each: it reads and writes ``2 * numel * 4``
bytes, the same ``16 * numel`` bytes over the same footprint (so the same cache level: a
copy of ``x``'s size alone would sit in a cache the rotation's working set does not fit in).
Its bandwidth ``16 * numel / t_copy`` is this machine's measured copy bandwidth, and the floor,
bytes moved over that bandwidth, is ``t_copy`` itself. Each row reports ours as a multiple of it.

The allocator. By default glibc maps large blocks afresh from the kernel, which zeroes their
pages on first touch, and it raises that size threshold as blocks are freed: how much a call
pays for fresh pages depends on what ran before it, which interleaving changes from round to
round. So the benchmark first times ``kexue``, the peer and the copy with glibc's defaults (the
record's ``default_allocator`` table: what a fresh process sees, page zeroing included), then
fixes the allocator (``mallopt``: keep freed blocks below 1 GiB for reuse, Linux only) and times
everything for the main table (``results``), where the cost of a call no longer depends on its
neighbours. The copy writes into a buffer it owns, so it pays for no fresh pages either way.

Equivalence is checked first (float32, tolerance 1e-5). All variants and the copy are then
timed together by :func:`timing.compare` (warm-up, interleaved rounds on the same inputs,
median and interquartile range, threads fixed), and the record ``benchmarks/rope``
(``kexue/results/benchmarks/rope.json``, read by the chapter through ``load_record``) holds the
median times with their spread and the ratios with their spread ``[q1 / q3, q3 / q1]``::

    python benchmarks/rope.py            # all sizes, about two minutes
    python benchmarks/rope.py --quick    # one small size (smoke), writes no record
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from importlib.metadata import version
from pathlib import Path

import torch

from kexue.experiments.records import write_record
from kexue.rope import apply_rope_2d, grid_positions, rope_2d_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling timing module, also when loaded by path
from timing import compare, environment, ratio, reuse_freed_memory  # noqa: E402

SIZES = [(8, 8, 1024, 64), (8, 8, 256, 64), (8, 8, 1024, 128), (2, 8, 4096, 64)]
RECORD = "benchmarks/rope"
VARIANTS = ("kexue", "rotary_embedding_torch", "real_formula", "matrix")
BYTES_PER_ELEMENT_MOVED = 4 * 4  # float32: read x, write out, read grad out, write grad x
MIN_SAMPLE_S = 0.1  # each sample spans several scheduler slices of a shared machine


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
        "real_formula": lambda x: x * cos + _rot(x) * sin,
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


def ratio_spread(report, other: str, base: str) -> dict[str, float]:
    """``ratio(other, base)`` and its spread: from ``other``'s fast quartile over ``base``'s slow one
    to ``other``'s slow quartile over ``base``'s fast one (an interval that holds the ratio)."""
    a, b = report["results"][other], report["results"][base]
    q1, q3 = a["q1_s"] / b["q3_s"], a["q3_s"] / b["q1_s"]
    return {"ratio": ratio(report, other, base), "q1": q1, "q3": q3}


ALLOCATOR = "mallopt(M_MMAP_THRESHOLD, 1 GiB), mallopt(M_TRIM_THRESHOLD, 1 GiB): freed blocks are reused"




def time_fwd_bwd(variants, shape, device, threads: int, repeats: int) -> dict:
    """One :func:`compare` of forward+backward of every variant and of the copy, on one input."""
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    src = torch.randn(2 * math.prod(shape), device=device)  # moves 16 B per element of x, see above
    dst = torch.empty_like(src)

    def step(fn):
        def run():
            x.grad = None
            fn(x).backward(grad)
        return run

    fns = {name: step(fn) for name, fn in variants.items()}
    fns["copy"] = lambda: dst.copy_(src)
    return compare(fns, repeats=repeats, threads=threads, min_sample_s=MIN_SAMPLE_S)


def row_of(shape, threads: int, err: float, report) -> dict:
    numel = math.prod(shape)
    res = report["results"]
    t_copy = res["copy"]["median_s"]
    ms = {name: {"median": 1e3 * r["median_s"], "q1": 1e3 * r["q1_s"], "q3": 1e3 * r["q3_s"]}
          for name, r in res.items()}
    return {
        "shape": list(shape),
        "threads": threads,
        "equivalent": True,
        "max_abs_diff": err,
        "ms": ms,
        "floor_ms": 1e3 * t_copy,
        "bytes_moved": BYTES_PER_ELEMENT_MOVED * numel,
        "copy_gb_per_s": BYTES_PER_ELEMENT_MOVED * numel / t_copy / 1e9,
        "ratios": {
            key: ratio_spread(report, other, base)
            for key, other, base in (("peer_over_kexue", "rotary_embedding_torch", "kexue"),
                                     ("kexue_over_floor", "kexue", "copy"),
                                     ("real_formula_over_kexue", "real_formula", "kexue"),
                                     ("matrix_over_kexue", "matrix", "kexue"))
            if other in res
        },
        "calls_per_sample": report["calls_per_sample"],
        "repeats": report["repeats"],
        "load_avg_before": report["env_before"]["load_avg"],
        "load_avg_after": report["env_after"]["load_avg"],
        "samples_s": {name: r["samples_s"] for name, r in res.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small size, few repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=31, help="interleaved rounds per size")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch intra-op thread counts")
    parser.add_argument("--name", default=None,
                        help=f"record name (default: {RECORD}; --quick writes none unless named)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = [(2, 4, 256, 64)] if args.quick else SIZES
    repeats = 5 if args.quick else args.repeats
    env = environment()

    def table(names) -> list[dict]:
        rows = []
        for threads in args.threads:
            for shape in sizes:
                variants = make_variants(shape[2], shape[3], device)
                err = check_equivalence(variants, shape, device)
                variants = {k: v for k, v in variants.items() if k in names}
                row = row_of(shape, threads, err, time_fwd_bwd(variants, shape, device, threads, repeats))
                rows.append(row)
                r = row["ratios"]
                print(f"{tuple(shape)} threads={threads} kexue {row['ms']['kexue']['median']:.2f} ms, "
                      f"floor {row['floor_ms']:.2f} ms ({row['copy_gb_per_s']:.1f} GB/s copy), "
                      f"peer/kexue {r['peer_over_kexue']['ratio']:.2f}, "
                      f"kexue/floor {r['kexue_over_floor']['ratio']:.2f}, load {row['load_avg_after']}", flush=True)
        return rows

    print("glibc's default allocator:", flush=True)
    default_allocator = {"setting": "glibc defaults (dynamic mmap threshold), fresh process",
                         "results": table(("kexue", "rotary_embedding_torch"))}
    fixed = reuse_freed_memory()
    print(f"allocator fixed (mallopt): {fixed}", flush=True)
    rows = table(VARIANTS)
    report = {
        "benchmark": "2D RoPE forward+backward, float32",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device) if device.type != "cpu" else f"cpu ({env['cpu']})",
        "torch": torch.__version__,
        "rotary_embedding_torch": version("rotary-embedding-torch"),
        "threads": args.threads,
        "repeats": repeats,
        "min_sample_s": MIN_SAMPLE_S,
        "environment": env,
        "load_avg_end": environment()["load_avg"],
        "timing": "benchmarks/timing.py compare: warm-up, interleaved rotated rounds, median and IQR; "
                  "ratio = median / median, its spread = [q1 / q3, q3 / q1] of the two quartiles",
        "floor": "bytes moved = 4 x numel x 4 B (forward: read x, write out; backward: read grad out, "
                 "write grad x) over the copy bandwidth measured in the same rounds by y.copy_(src) "
                 "of 2 x numel float32 (same bytes, same footprint), i.e. floor = t(copy); "
                 "cos/sin tables and page zeroing not counted",
        "results": rows,
        "allocator": ALLOCATOR if fixed else "glibc defaults (mallopt unavailable)",
        "default_allocator": default_allocator,
    }
    name = args.name or (None if args.quick else RECORD)
    print(f"wrote {write_record(name, report)}" if name else "--quick: no record written")


if __name__ == "__main__":
    main()
