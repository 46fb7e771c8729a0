"""Benchmark for book chapter 05 (token mixers): forward time against sequence length,
throughput of the experiment's encoders, and a side-by-side check with lucidrains' peers.

Every timing goes through :func:`timing.compare`: at each sequence length all the mixers
still running are timed together (warm-up, interleaved rounds on the same input, median and
interquartile range, one intra-op thread), and so are the encoders of the throughput table
and each of ours against its peer. Ratios are ``median / median``, with ``[q1 / q3, q3 / q1]`` of
the two interquartile ranges as their spread.

The allocator is fixed first (glibc ``mallopt``: freed blocks below 1 GiB are kept for reuse,
Linux only). With glibc's defaults large blocks are mapped afresh and zeroed by the kernel,
under a threshold that moves as blocks are freed, so a small mixer's time depended on whether
attention's large buffers had just been freed (several-fold differences, in a probe).

Writes the record ``benchmarks/mixers`` (``kexue/results/benchmarks/mixers.json``, through
``kexue.experiments.records.write_record``); the chapter only reads it.

    .venv/bin/python benchmarks/mixers.py            # ~3 minutes on 2 CPU cores
    .venv/bin/python benchmarks/mixers.py --quick    # lengths up to 1024, few repeats, no record

Peers: ``mlp-mixer-pytorch`` (token-mixing FeedForward of ``MLPMixer``) and
``g-mlp-pytorch`` (``gMLPBlock`` with its ``SpatialGatingUnit``), when installed. Each is
first checked for output equality with ``kexue.mixers`` on the same weights; only then is
it timed. timm is not used (it is not installed: it pulls in torchvision).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling timing module

from timing import compare, environment, ratio, reuse_freed_memory  # noqa: E402

from kexue.experiments.ch05_mixers import CONFIGS, CharTagger, PatchClassifier, encoder_config  # noqa: E402
from kexue.experiments.records import write_record  # noqa: E402
from kexue.mixers import MIXERS  # noqa: E402
from kexue.nn import patchify  # noqa: E402
from kexue.utils import seed_everything  # noqa: E402

DIM, BATCH, HEADS = 64, 2, 4
LENGTHS = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
SCALING = ["attention", "fnet", "external_attention", "aft_simple", "resmlp", "gmlp", "mixer"]
TIED_MAX = 2048  # position-tied mixers carry an n x n (or n x D_S) weight; capped for time and memory
STOP_AFTER_S = 0.6  # once one forward's median passes this, longer lengths are skipped (recorded as such)
THREADS = 1  # one thread: the 2-core machine is shared, and thread hand-offs add noise
REPEATS = 21
MIN_SAMPLE_S = 0.1  # each sample spans several scheduler slices of a shared machine


ALLOCATOR = "mallopt(M_MMAP_THRESHOLD, 1 GiB), mallopt(M_TRIM_THRESHOLD, 1 GiB): freed blocks are reused"




def no_grad(fn, *args):
    """A no-argument callable running ``fn(*args)`` without autograd, for :func:`compare`."""

    def call():
        with torch.no_grad():
            return fn(*args)

    return call


def timed(fns: dict, repeats: int) -> dict:
    """:func:`compare` at the benchmark's thread count."""
    return compare(fns, repeats=repeats, threads=THREADS, min_sample_s=MIN_SAMPLE_S)


def spread_ms(report: dict, name: str) -> dict:
    r = report["results"][name]
    return {"ms": 1e3 * r["median_s"], "q1_ms": 1e3 * r["q1_s"], "q3_ms": 1e3 * r["q3_s"]}


def ratio_spread(report: dict, other: str, base: str) -> dict:
    """``ratio(other, base)`` and its spread: from ``other``'s fast quartile over ``base``'s slow one
    to ``other``'s slow quartile over ``base``'s fast one (an interval that holds the ratio)."""
    a, b = report["results"][other], report["results"][base]
    q1, q3 = a["q1_s"] / b["q3_s"], a["q3_s"] / b["q1_s"]
    return {"ratio": ratio(report, other, base), "q1": q1, "q3": q3}


def options(name: str) -> dict:
    if name in ("attention", "synthesizer_random", "synthesizer_dense"):
        return {"heads": HEADS}
    if name == "external_attention":
        return {"heads": HEADS, "slots": 64}
    return {}


def scaling(lengths: list[int], repeats: int) -> tuple[dict, dict]:
    """Forward time of every mixer at every length (one comparison per length), and the ratios
    of attention's time to FNet's, External Attention's and AFT's at 512 and 2048."""
    times: dict[str, list[dict]] = {name: [] for name in SCALING}
    stop: dict[str, str] = {}
    ratios, loads = {}, {}
    for n in lengths:
        fns = {}
        for name in SCALING:
            if MIXERS[name].fixed_length and n > TIED_MAX:
                times[name].append({"seq_len": n, "ms": None,
                                    "note": f"skipped: position-tied weights, capped at {TIED_MAX}"})
            elif name in stop:
                times[name].append({"seq_len": n, "ms": None, "note": stop[name]})
            else:
                seed_everything(0)
                fns[name] = no_grad(MIXERS[name](DIM, n, **options(name)).eval(), torch.randn(BATCH, n, DIM))
        report = timed(fns, repeats)
        loads[n] = report["env_after"]["load_avg"]
        for name in fns:
            times[name].append({"seq_len": n, **spread_ms(report, name)})
            t = report["results"][name]["median_s"]
            if t > STOP_AFTER_S:
                stop[name] = f"skipped: the previous length already took {t:.2f} s"
            print(f"{name:20s} n={n:5d} {1e3 * t:9.2f} ms", flush=True)
        if n in (512, 2048):
            ratios.update({f"attention_over_{k}_at_{n}": ratio_spread(report, "attention", k)
                           for k in ("fnet", "external_attention", "aft_simple") if k in fns and "attention" in fns})
    slopes = {}
    for name, rows in times.items():
        # least-squares slope of log time on log n, from n = 256 up (below, call overhead dominates)
        pts = [(math.log(r["seq_len"]), math.log(r["ms"])) for r in rows if r["ms"] is not None and r["seq_len"] >= 256]
        if len(pts) >= 2:
            mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            slopes[name] = sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)
    return {"lengths": lengths, "dim": DIM, "batch": BATCH, "times": times, "log_log_slope": slopes,
            "slope_fit": "least squares of log(median ms) on log(n) over the measured n >= 256",
            "load_avg_after": loads}, ratios


def throughput(repeats: int) -> dict:
    cfg = CONFIGS["smoke"]
    images = torch.rand(497, 8, 8)
    patches = patchify(images, cfg.patch)
    ids = torch.randint(2, 3000, (64, cfg.msra_len))
    mask = torch.ones_like(ids, dtype=torch.bool)
    digits, msra, params = {}, {}, {}
    for name in MIXERS:
        seed_everything(0)
        clf = PatchClassifier(encoder_config(name, cfg, vocab_size=1, max_len=patches.shape[1]),
                              patches.shape[2], 10).eval()
        tagger = CharTagger(encoder_config(name, cfg, vocab_size=3000, max_len=cfg.msra_len)).eval()
        digits[name], msra[name] = no_grad(clf, patches), no_grad(tagger, ids, mask)
        params[name] = sum(p.numel() for p in clf.parameters())
    rep_d, rep_m = timed(digits, repeats), timed(msra, repeats)
    out = {}
    for name in MIXERS:
        d, m = rep_d["results"][name], rep_m["results"][name]
        # rates from the median time; the spread as the rates at the time quartiles (q3 time -> low rate)
        out[name] = {"digits_per_s": len(images) / d["median_s"], "msra_per_s": len(ids) / m["median_s"],
                     "digits_per_s_iqr": [len(images) / d["q3_s"], len(images) / d["q1_s"]],
                     "msra_per_s_iqr": [len(ids) / m["q3_s"], len(ids) / m["q1_s"]],
                     "parameters_digits": params[name]}
        print(f"{name:20s} digits {out[name]['digits_per_s']:9.0f}/s  msra {out[name]['msra_per_s']:8.0f}/s", flush=True)
    return out


def compare_with_peer(ours, peer, package: str, batch: int, n: int, dim: int, repeats: int) -> dict:
    """Output equality on one input first; only an equal peer is timed (ratio ours / peer)."""
    x = torch.randn(batch, n, dim)
    with torch.no_grad():
        diff = (ours(x) - peer(x)).abs().max().item()
    row = {"package": f"{package}=={version(package)}", "seq_len": n, "dim": dim,
           "batch": batch, "max_abs_diff": diff, "equal": diff < 1e-5}
    if row["equal"]:
        report = timed({"ours": no_grad(ours, x), "peer": no_grad(peer, x)}, repeats)
        r = ratio_spread(report, "ours", "peer")
        ours_ms, peer_ms = spread_ms(report, "ours"), spread_ms(report, "peer")
        row.update(ours_ms=ours_ms["ms"], peer_ms=peer_ms["ms"],
                   ours_iqr_ms=[ours_ms["q1_ms"], ours_ms["q3_ms"]], peer_iqr_ms=[peer_ms["q1_ms"], peer_ms["q3_ms"]],
                   ratio_ours_over_peer=r["ratio"], ratio_iqr=[r["q1"], r["q3"]],
                   load_avg_after=report["env_after"]["load_avg"])
    return row


def peers(repeats: int) -> dict:
    result: dict[str, dict] = {}
    n, dim, batch = 256, 128, 8
    # lucidrains/mlp-mixer-pytorch: the token-mixing branch of MLPMixer (Conv1d over patches).
    try:
        import mlp_mixer_pytorch

        seed_everything(0)
        # 64x64 image, patch 4 -> 256 patches; the paper's widths need expansion_factor=0.5 (token) here.
        model = mlp_mixer_pytorch.MLPMixer(image_size=64, channels=3, patch_size=4, dim=dim, depth=1,
                                           num_classes=10, expansion_factor=0.5, expansion_factor_token=4)
        token_ff = model[2][0].fn  # Sequential(Conv1d, GELU, Dropout, Conv1d, Dropout)
        ours = MIXERS["mixer"](dim, n, hidden=token_ff[0].out_channels)
        with torch.no_grad():
            ours.w1.copy_(token_ff[0].weight[..., 0])
            ours.b1.copy_(token_ff[0].bias)
            ours.w2.copy_(token_ff[3].weight[..., 0])
            ours.b2.copy_(token_ff[3].bias)
        token_ff.eval()
        result["mixer_token_mlp"] = compare_with_peer(ours, token_ff, "mlp-mixer-pytorch", batch, n, dim, repeats)
    except ImportError:
        result["mixer_token_mlp"] = {"package": "mlp-mixer-pytorch not installed"}
    # lucidrains/g-mlp-pytorch: gMLPBlock = proj_in + GELU, SpatialGatingUnit, proj_out.
    try:
        import g_mlp_pytorch

        seed_everything(0)
        block = g_mlp_pytorch.gMLPBlock(dim=dim, dim_ff=2 * dim, seq_len=n).eval()
        ours = MIXERS["gmlp"](dim, n, hidden=dim)
        with torch.no_grad():
            block.sgu.weight.normal_(0, 0.05)  # away from the near-zero init, so the test can fail
            block.sgu.bias.uniform_(0.5, 1.5)
            ours.proj_in.load_state_dict(block.proj_in[0].state_dict())
            ours.norm.load_state_dict(block.sgu.norm.state_dict())
            ours.weight.copy_(block.sgu.weight[0])
            ours.bias.copy_(block.sgu.bias[0])
            ours.proj_out.load_state_dict(block.proj_out.state_dict())
        # lucidrains applies exact GELU via nn.GELU(); ours uses F.gelu (exact): same function.
        result["gmlp_block"] = compare_with_peer(ours, block, "g-mlp-pytorch", batch, n, dim, repeats)
    except ImportError:
        result["gmlp_block"] = {"package": "g-mlp-pytorch not installed"}
    result["timm"] = {"package": "not installed (needs torchvision); not compared"}
    for k, v in result.items():
        print(k, v, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths up to 1024, 5 repeats, no record written")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="interleaved rounds per comparison")
    args = parser.parse_args()
    repeats = 5 if args.quick else args.repeats
    lengths = [n for n in LENGTHS if n <= 1024] if args.quick else LENGTHS
    t0 = time.time()
    fixed = reuse_freed_memory()
    env = environment()
    meta = {"torch": torch.__version__, "threads": THREADS,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": f"cpu ({env['cpu']})", "dim": DIM, "batch": BATCH, "repeats": repeats,
            "min_sample_s": MIN_SAMPLE_S,
            "allocator": ALLOCATOR if fixed else "glibc defaults (mallopt unavailable)",
            "environment": env,
            "timing": "benchmarks/timing.py compare: warm-up, interleaved rotated rounds, median and IQR; "
                      "ratio = median / median, its spread = [q1 / q3, q3 / q1] of the two quartiles",
            "note": "shared 2-core CPU with other jobs running; the load average is recorded"}
    scaled, ratios = scaling(lengths, repeats)
    data = {"meta": meta, "peers": peers(repeats), "scaling": scaled, "throughput": throughput(repeats),
            "ratios": ratios}
    meta["wall_s"] = time.time() - t0
    meta["load_avg_end"] = environment()["load_avg"]
    if args.quick:
        print(f"--quick: no record written ({meta['wall_s']:.0f} s)")
        return
    out = write_record("benchmarks/mixers", data)
    print(f"wrote {out} in {meta['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
