"""Benchmark for book chapter 05 (token mixers): forward time against sequence length,
throughput of the experiment's encoders, and a side-by-side check with lucidrains' peers.

Writes the record ``benchmarks/mixers`` (``kexue/results/benchmarks/mixers.json``, through
``kexue.experiments.records.write_record``); the chapter only reads it.

    .venv/bin/python benchmarks/mixers.py            # ~1-2 minutes on 2 CPU cores

Peers: ``mlp-mixer-pytorch`` (token-mixing FeedForward of ``MLPMixer``) and
``g-mlp-pytorch`` (``gMLPBlock`` with its ``SpatialGatingUnit``), when installed. Each is
first checked for output equality with ``kexue.mixers`` on the same weights; only then is
it timed. timm is not used (it is not installed: it pulls in torchvision).
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kexue.experiments.ch05_mixers import CONFIGS, CharTagger, PatchClassifier, encoder_config  # noqa: E402
from kexue.experiments.records import write_record  # noqa: E402
from kexue.mixers import MIXERS  # noqa: E402
from kexue.nn import patchify  # noqa: E402
from kexue.utils import seed_everything  # noqa: E402

DIM, BATCH, HEADS = 64, 2, 4
LENGTHS = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
SCALING = ["attention", "fnet", "external_attention", "aft_simple", "resmlp", "gmlp", "mixer"]
TIED_MAX = 2048  # position-tied mixers carry an n x n (or n x D_S) weight; capped for time and memory
STOP_AFTER_S = 0.6  # once one forward takes this long, longer lengths are skipped (recorded as such)


def timed(fn, repeats: int = 5, budget_s: float = 0.25) -> float:
    """Best wall time of at least ``repeats`` calls (more while under ``budget_s``), after a warm-up.

    The minimum, not the mean: on a shared machine pre-emption only ever adds time.
    """
    with torch.no_grad():
        fn()
        best, spent, calls = math.inf, 0.0, 0
        while calls < repeats or (spent < budget_s and calls < 50):
            t0 = time.perf_counter()
            fn()
            dt_ = time.perf_counter() - t0
            best, spent, calls = min(best, dt_), spent + dt_, calls + 1
    return best


def options(name: str) -> dict:
    if name in ("attention", "synthesizer_random", "synthesizer_dense"):
        return {"heads": HEADS}
    if name == "external_attention":
        return {"heads": HEADS, "slots": 64}
    return {}


def scaling() -> dict:
    times: dict[str, list[dict]] = {}
    for name in SCALING:
        rows, stop = [], None
        tied = MIXERS[name].fixed_length
        for n in LENGTHS:
            if tied and n > TIED_MAX:
                rows.append({"seq_len": n, "ms": None, "note": f"skipped: position-tied weights, capped at {TIED_MAX}"})
                continue
            if stop is not None:
                rows.append({"seq_len": n, "ms": None, "note": stop})
                continue
            seed_everything(0)
            m = MIXERS[name](DIM, n, **options(name)).eval()
            x = torch.randn(BATCH, n, DIM)
            t = timed(lambda: m(x), repeats=2 if n >= 4096 else 5)
            rows.append({"seq_len": n, "ms": 1e3 * t})
            if t > STOP_AFTER_S:
                stop = f"skipped: the previous length already took {t:.2f} s"
            print(f"{name:20s} n={n:5d} {1e3 * t:9.2f} ms", flush=True)
        times[name] = rows
    slopes = {}
    for name, rows in times.items():
        # least-squares slope of log time on log n, from n = 256 up (below, call overhead dominates)
        pts = [(math.log(r["seq_len"]), math.log(r["ms"])) for r in rows if r["ms"] is not None and r["seq_len"] >= 256]
        if len(pts) >= 2:
            mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            slopes[name] = sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)
    return {"lengths": LENGTHS, "dim": DIM, "batch": BATCH, "times": times, "log_log_slope": slopes,
            "slope_fit": "least squares of log(ms) on log(n) over the measured n >= 256"}


def throughput() -> dict:
    cfg = CONFIGS["smoke"]
    out = {}
    images = torch.rand(497, 8, 8)
    patches = patchify(images, cfg.patch)
    ids = torch.randint(2, 3000, (64, cfg.msra_len))
    mask = torch.ones_like(ids, dtype=torch.bool)
    for name in MIXERS:
        seed_everything(0)
        clf = PatchClassifier(encoder_config(name, cfg, vocab_size=1, max_len=patches.shape[1]),
                              patches.shape[2], 10).eval()
        tagger = CharTagger(encoder_config(name, cfg, vocab_size=3000, max_len=cfg.msra_len)).eval()
        t_d = timed(lambda: clf(patches))
        t_m = timed(lambda: tagger(ids, mask))
        out[name] = {"digits_per_s": len(images) / t_d, "msra_per_s": len(ids) / t_m,
                     "parameters_digits": sum(p.numel() for p in clf.parameters())}
        print(f"{name:20s} digits {out[name]['digits_per_s']:9.0f}/s  msra {out[name]['msra_per_s']:8.0f}/s", flush=True)
    return out


def compare_with_peer(ours, peer, package: str, batch: int, n: int, dim: int) -> dict:
    """Output equality on one input first; only an equal peer is timed (ratio ours / peer)."""
    x = torch.randn(batch, n, dim)
    with torch.no_grad():
        diff = (ours(x) - peer(x)).abs().max().item()
    row = {"package": f"{package}=={version(package)}", "seq_len": n, "dim": dim,
           "batch": batch, "max_abs_diff": diff, "equal": diff < 1e-5}
    if row["equal"]:
        t_ours, t_peer = timed(lambda: ours(x), 30), timed(lambda: peer(x), 30)
        row.update(ours_ms=1e3 * t_ours, peer_ms=1e3 * t_peer, ratio_ours_over_peer=t_ours / t_peer)
    return row


def peers() -> dict:
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
        result["mixer_token_mlp"] = compare_with_peer(ours, token_ff, "mlp-mixer-pytorch", batch, n, dim)
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
        result["gmlp_block"] = compare_with_peer(ours, block, "g-mlp-pytorch", batch, n, dim)
    except ImportError:
        result["gmlp_block"] = {"package": "g-mlp-pytorch not installed"}
    result["timm"] = {"package": "not installed (needs torchvision); not compared"}
    for k, v in result.items():
        print(k, v, flush=True)
    return result


def main() -> None:
    torch.set_num_threads(1)  # one thread: the 2-core machine is shared, and thread hand-offs add noise
    t0 = time.time()
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "device": "cpu", "dim": DIM, "batch": BATCH,
            "note": "shared 2-core CPU with other jobs running; absolute times are pessimistic"}
    data = {"meta": meta, "peers": peers(), "scaling": scaling(), "throughput": throughput()}
    times = {k: {r["seq_len"]: r["ms"] for r in v} for k, v in data["scaling"]["times"].items()}
    data["ratios"] = {
        f"attention_over_{k}_at_{n}": times["attention"][n] / times[k][n]
        for k in ("fnet", "external_attention", "aft_simple")
        for n in (512, 2048) if times["attention"].get(n) and times[k].get(n)
    }
    meta["wall_s"] = time.time() - t0
    out = write_record("benchmarks/mixers", data)
    print(f"wrote {out} in {meta['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
