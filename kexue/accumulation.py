"""Exact gradient accumulation for in-batch contrastive losses (book chapter 07).

Source: Su Jianlin, "对比学习可以使用梯度累积吗？" (Can contrastive learning use
gradient accumulation?), Scientific Spaces, 2021-06-17,
https://kexue.fm/archives/8471. The same computation is GradCache
(Gao, Zhang, Han, Callan, arXiv:2101.06983).

An in-batch contrastive loss ``L(h_1, ..., h_N)`` couples every row with every
other row, so summing the losses of micro-batches is a different (weaker)
objective. The exact large-batch gradient is still reachable with one micro-batch
of activations in memory, because by the chain rule

    grad_theta L = sum_i J_i(theta)^T dL/dh_i                      (eq. ch07-chain)

and ``dL/dh_i`` (Su's ``h~_i``) needs only the embeddings, not the graph:

1. encode every micro-batch without a graph and cache the embeddings, recording
   the RNG state before each micro-batch;
2. evaluate the loss on the cached embeddings (detached leaves) and back-propagate
   to them: the leaves' ``.grad`` are ``dL/dh``; parameters that live inside the
   loss (a learnable temperature) get their whole gradient here, once;
3. re-encode each micro-batch with a graph under its recorded RNG state (so the
   dropout masks match) and back-propagate ``dL/dh`` of that micro-batch.

Public API
----------
* losses (defined in :mod:`kexue.losses`, re-exported here): :func:`info_nce`,
  :func:`symmetric_info_nce`, :func:`simcse_loss`, and their loop references
  :func:`info_nce_reference`, :func:`simcse_loss_reference`; Su's closed form
  :func:`simcse_embedding_grad` and the stop-gradient surrogate
  :func:`simcse_surrogate`; :class:`LogitScale` (learnable temperature).
* accumulation: :func:`contrastive_backward` (the two-pass method),
  :func:`full_batch_backward` (its definition of "exact"),
  :func:`naive_accumulation_backward` (per-micro-batch losses, the biased way),
  :func:`openclip_style_backward` (a replica of a peer's scheme).
* distributed: :func:`all_gather_with_grad`, :func:`distributed_contrastive_backward`,
  and its one-process reference :func:`rank_streams_reference_backward`.
* tools: :class:`SentenceEncoder`, :func:`check_no_batchnorm`,
  :class:`SavedTensorMeter`, :func:`grad_vector`, :func:`relative_error`.

Book chapter 07, "Exact gradient accumulation for contrastive losses".
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kexue import checks, losses
from kexue.losses import (  # noqa: F401  (re-exported: readers import them from here)
    LogitScale,
    info_nce,
    info_nce_reference,
    simcse_embedding_grad,
    simcse_loss,
    simcse_loss_reference,
    simcse_surrogate,
    simcse_targets,
    symmetric_info_nce,
)

__all__ = [
    *(name for name in losses.__all__ if not name.startswith("check_")),  # the losses, re-exported
    "SentenceEncoder",
    "check_no_batchnorm",
    "contrastive_backward",
    "full_batch_backward",
    "naive_accumulation_backward",
    "openclip_style_backward",
    "all_gather_with_grad",
    "distributed_contrastive_backward",
    "rank_streams_reference_backward",
    "SavedTensorMeter",
    "grad_vector",
    "relative_error",
]

Inputs = Tensor | Sequence[Tensor]
LossFn = Callable[..., Tensor]


# ---------------------------------------------------------------------------
# a sentence encoder around kexue.nn.TransformerEncoder
# ---------------------------------------------------------------------------
class SentenceEncoder(nn.Module):
    """Token ids ``(batch, seq)`` -> one vector per sentence ``(batch, dim)``.

    The mask is ``input_ids != pad_token_id``; pooling is the mean over real tokens
    (``"mean"``) or the first token (``"cls"``). ``input_ids`` must be an integer
    ``(batch, seq)`` tensor whose every row holds a real token (``ValueError``
    otherwise: an all-padding row has no mean); the encoder checks the ids
    against its vocabulary. Padded positions are removed with ``masked_fill``,
    so whatever the encoder leaves there never reaches the pooled vector.
    """

    def __init__(self, encoder: nn.Module, pooling: str = "mean", pad_token_id: int = 0) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        self.encoder = encoder
        self.pooling = checks.choice("pooling", pooling, ("mean", "cls"))
        self.pad_token_id = checks.nonnegative_int("pad_token_id", pad_token_id)

    def forward(self, input_ids: Tensor) -> Tensor:
        checks.tensor("input_ids", input_ids)
        if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(f"input_ids must be an integer tensor of token ids, got {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
        mask = checks.token_mask("input_ids != pad_token_id", input_ids != self.pad_token_id, *input_ids.shape)
        hidden = self.encoder(input_ids, mask)  # (batch, seq, dim)
        if self.pooling == "cls":
            return hidden[:, 0]
        count = mask.sum(1, keepdim=True).to(hidden.dtype)  # (batch, 1), >= 1
        return checks.zero_padding(hidden, mask).sum(1) / count


# ---------------------------------------------------------------------------
# RNG snapshots (CPU plus every accelerator device the encoder or inputs touch)
# ---------------------------------------------------------------------------
def _rng_devices(encoder: nn.Module, tensors: Iterable[Tensor]) -> list[torch.device]:
    """Non-CPU devices holding the encoder's parameters/buffers or the inputs.

    Taking the parameters' devices as well as the inputs' avoids the GradCache /
    sentence-transformers bug class where non-tensor (or CPU) inputs left the CUDA
    RNG unreplayed.
    """
    seen: dict[tuple[str, int | None], torch.device] = {}
    for t in list(encoder.parameters()) + list(encoder.buffers()) + list(tensors):
        d = t.device
        if d.type in ("cpu", "meta"):
            continue
        if d.index is None and d.type != "mps":
            d = torch.device(d.type, torch.get_device_module(d.type).current_device())
        seen[(d.type, d.index)] = d
    return list(seen.values())


class _RngState:
    """A snapshot of the CPU RNG and the RNG of each listed accelerator device."""

    def __init__(self, devices: Sequence[torch.device]) -> None:
        self.cpu = torch.get_rng_state()
        self.devices = [(d, torch.get_device_module(d.type).get_rng_state(d)) for d in devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.devices:
            torch.get_device_module(device.type).set_rng_state(state, device)


# ---------------------------------------------------------------------------
# input checks shared by every accumulation routine
# ---------------------------------------------------------------------------
def check_no_batchnorm(encoder: nn.Module) -> None:
    """Raise ``ValueError`` if ``encoder`` has a BatchNorm layer in training mode.

    Training-mode BatchNorm normalises each micro-batch with that micro-batch's
    statistics, which couples samples inside the encoder; no accumulation scheme
    can then reproduce full-batch BatchNorm. (Eval-mode BatchNorm is per-sample and fine.)
    """
    for name, module in encoder.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"encoder contains a BatchNorm layer in training mode ({name or 'the encoder itself'}: "
                f"{type(module).__name__}): its batch statistics couple the samples of a micro-batch, so "
                "the full-batch gradient cannot be reproduced by accumulation. Use LayerNorm, or put the "
                "BatchNorm layers in eval mode."
            )


def _check_inputs(inputs: Any) -> tuple[Tensor, ...]:
    """``inputs`` as a non-empty tuple of tensors with one common, non-zero batch size."""
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    elif isinstance(inputs, (tuple, list)):
        if len(inputs) == 0:
            raise ValueError("inputs must be a tensor or a non-empty tuple of tensors, got an empty tuple")
        for i, x in enumerate(inputs):
            if not isinstance(x, Tensor):
                raise TypeError(f"inputs[{i}] must be a tensor, got {type(x).__name__}")
        inputs = tuple(inputs)
    else:
        raise TypeError(f"inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}")
    for i, x in enumerate(inputs):
        if x.dim() == 0:
            raise ValueError(f"inputs[{i}] must have a batch dimension, got a 0-d tensor")
        if x.shape[0] == 0:
            raise ValueError(f"inputs[{i}] is empty (batch size 0)")
    lengths = [x.shape[0] for x in inputs]
    if len(set(lengths)) != 1:
        raise ValueError(f"all inputs must have the same batch size, got {lengths}")
    return inputs


def _prepare(
    encoder: Any, inputs: Any, micro_batch_size: Any, loss_fn: Any, replay_rng: Any = True
) -> tuple[tuple[Tensor, ...], int]:
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (loss_fn(*embeddings) -> scalar), got {type(loss_fn).__name__}")
    checks.boolean("replay_rng", replay_rng)
    inputs = _check_inputs(inputs)
    lengths = [x.shape[0] for x in inputs]
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int):
        raise TypeError(f"micro_batch_size must be an int, got {type(micro_batch_size).__name__} {micro_batch_size!r}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    check_no_batchnorm(encoder)
    # a micro_batch_size that does not divide the batch leaves a smaller last micro-batch
    return inputs, -(-lengths[0] // micro_batch_size)


def _check_output(out: Any, rows: int) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != rows:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"encoder must return a tensor with one row per input row ({rows}), got {shape}")
    return out


def _check_loss(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        what = f"{loss.dtype} tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a floating scalar tensor, got {what}")
    if not loss.requires_grad:
        raise ValueError(
            "loss_fn returned a loss without a gradient: it must be computed from the embeddings it is given "
            "(no .detach(), no torch.no_grad())"
        )
    if not torch.isfinite(loss.detach()).all():
        raise ValueError(f"loss_fn returned a non-finite loss ({loss.item()})")
    return loss.reshape(())


# ---------------------------------------------------------------------------
# single process
# ---------------------------------------------------------------------------
def _encode_no_grad(
    encoder: nn.Module,
    inputs: tuple[Tensor, ...],
    micro_batch_size: int,
    devices: list[torch.device],
    keep_last: bool = False,
) -> tuple[list[list[Tensor]], list[list[_RngState]], Tensor | None]:
    """Pass 1: every micro-batch, input-major order, no graph; RNG snapshot before each.

    With ``keep_last`` the final micro-batch is encoded *with* a graph, which is returned
    (its cached copy is detached): pass 2 then back-propagates it directly instead of
    encoding it a second time. Only one micro-batch of activations is alive either way.
    """
    cached: list[list[Tensor]] = []
    states: list[list[_RngState]] = []
    live: Tensor | None = None
    for i, x in enumerate(inputs):
        cached.append([])
        states.append([])
        chunks = x.split(micro_batch_size)
        for k, chunk in enumerate(chunks):
            states[-1].append(_RngState(devices))
            if keep_last and i == len(inputs) - 1 and k == len(chunks) - 1:
                with torch.enable_grad():
                    live = _check_output(encoder(chunk), chunk.shape[0])
                cached[-1].append(live.detach())
            else:
                with torch.no_grad():
                    cached[-1].append(_check_output(encoder(chunk), chunk.shape[0]))
    return cached, states, live


def _replay_backward(
    encoder: nn.Module,
    inputs: tuple[Tensor, ...],
    grads: list[Tensor | None],
    states: list[list[_RngState]] | None,
    micro_batch_size: int,
    skip_last: bool = False,
) -> None:
    """Pass 2: re-encode each micro-batch (under its recorded RNG) and back-propagate its dL/dh.

    ``skip_last``: the final micro-batch was already back-propagated from pass 1's graph.
    """
    with torch.enable_grad():
        for i, x in enumerate(inputs):
            if grads[i] is None:  # the loss does not depend on this input
                continue
            chunks = x.split(micro_batch_size)
            for k, (chunk, g) in enumerate(zip(chunks, grads[i].split(micro_batch_size))):
                if skip_last and i == len(inputs) - 1 and k == len(chunks) - 1:
                    continue
                if states is not None:
                    states[i][k].restore()
                out = encoder(chunk)
                if out.requires_grad:
                    out.backward(g.to(out.dtype))  # vector-Jacobian product J_k^T dL/dh_k


def contrastive_backward(
    encoder: nn.Module,
    inputs: Inputs,
    loss_fn: LossFn,
    micro_batch_size: int,
    *,
    replay_rng: bool = True,
) -> Tensor:
    r"""Accumulate into ``.grad`` the exact full-batch gradient of ``loss_fn``, one micro-batch at a time.

    Args:
        encoder: module mapping one micro-batch of an input to embeddings ``(rows, ...)``.
            It must not contain training-mode BatchNorm (``ValueError``).
        inputs: a tensor, or a tuple of tensors with equal length ``N`` (e.g. queries and
            documents); each is split along dim 0 into micro-batches of ``micro_batch_size``.
        loss_fn: ``loss_fn(*embeddings) -> scalar``, one full-batch embedding tensor per input.
            Parameters it uses (a learnable temperature) receive their gradient exactly once.
        micro_batch_size: rows per micro-batch; if it does not divide ``N`` the last
            micro-batch is smaller. The loss sees the whole batch at once, so a micro-batch
            may split a SimCSE pair (rows ``2k``, ``2k+1``): no alignment is required.
        replay_rng: restore each micro-batch's RNG state in the second pass (keep ``True``;
            ``False`` exists to show what goes wrong without it).

    Returns:
        The full-batch loss, detached.

    "Exact" means: with the same RNG seed, the accumulated gradient equals that of
    :func:`full_batch_backward` (encode the same micro-batches in the same order inside
    one graph, then call ``backward`` once), dropout included. Activations of only one
    micro-batch are alive at a time; the cost is one extra forward pass without a graph
    over every micro-batch but the last, which keeps its pass-1 graph and is not encoded
    again. After the call the global RNG is where :func:`full_batch_backward` would leave it.

    .. math:: \nabla_\theta\mathcal L = \sum_k J_k(\theta)^\top\,\frac{\partial\mathcal L}{\partial H_k}

    Implements eqs. ``ch07-chain`` and ``ch07-htilde``.
    """
    inputs, _ = _prepare(encoder, inputs, micro_batch_size, loss_fn, replay_rng)
    devices = _rng_devices(encoder, inputs)
    cached, states, live = _encode_no_grad(encoder, inputs, micro_batch_size, devices, keep_last=True)
    after_pass_1 = _RngState(devices)

    leaves = [torch.cat(chunks).detach().requires_grad_(True) for chunks in cached]
    del cached
    with torch.enable_grad():
        loss = _check_loss(loss_fn(*leaves))
        loss.backward()  # dL/dh into the leaves, dL/d(loss parameters) into their .grad, once
    grads = [leaf.grad for leaf in leaves]
    del leaves

    # the last micro-batch kept its graph from pass 1: back-propagate it now, encode it only once
    if live is not None and live.requires_grad and grads[-1] is not None:
        live.backward(grads[-1][-live.shape[0]:].to(live.dtype))
    del live
    _replay_backward(encoder, inputs, grads, states if replay_rng else None, micro_batch_size, skip_last=True)
    after_pass_1.restore()
    return loss.detach()


def full_batch_backward(encoder: nn.Module, inputs: Inputs, loss_fn: LossFn, micro_batch_size: int | None = None) -> Tensor:
    """The reference that defines exactness: encode the micro-batches in :func:`contrastive_backward`'s
    order (input-major, then micro-batch) inside one autograd graph, concatenate, call ``backward`` once.

    With ``micro_batch_size=None`` each input is encoded in one call (a plain full-batch step).
    All activations of the whole batch are alive at once.
    """
    n = _check_inputs(inputs)[0].shape[0]
    inputs, _ = _prepare(encoder, inputs, n if micro_batch_size is None else micro_batch_size, loss_fn)
    size = inputs[0].shape[0] if micro_batch_size is None else micro_batch_size
    with torch.enable_grad():
        embeddings = [
            torch.cat([_check_output(encoder(chunk), chunk.shape[0]) for chunk in x.split(size)]) for x in inputs
        ]
        loss = _check_loss(loss_fn(*embeddings))
        loss.backward()
    return loss.detach()


def naive_accumulation_backward(encoder: nn.Module, inputs: Inputs, loss_fn: LossFn, micro_batch_size: int) -> Tensor:
    r"""Ordinary gradient accumulation: each micro-batch is its own contrastive problem.

    Accumulates :math:`\frac1n\sum_k \nabla_\theta\mathcal L(H_k)` (negatives only from the same
    micro-batch). This is a *different* objective from the full-batch loss; it is here to be
    compared against :func:`contrastive_backward`. Returns the mean micro-batch loss (each
    micro-batch weighted ``1/n`` for ``n`` micro-batches, a smaller last one included). Here
    ``loss_fn`` sees one micro-batch, so for SimCSE ``micro_batch_size`` must be even (a
    micro-batch must not split a pair); :func:`kexue.losses.simcse_loss` raises otherwise.

    The biased estimate of eq. ``ch07-naive-eq``.
    """
    inputs, n_micro = _prepare(encoder, inputs, micro_batch_size, loss_fn)
    total = 0.0
    with torch.enable_grad():
        for chunks in zip(*(x.split(micro_batch_size) for x in inputs)):
            loss = _check_loss(loss_fn(*(encoder(c) for c in chunks))) / n_micro
            loss.backward()
            total = total + loss.detach()
    return total


def openclip_style_backward(
    encoder: nn.Module, inputs: Inputs, loss_fn: LossFn, micro_batch_size: int, *, replay_rng: bool = False
) -> Tensor:
    """A replica of open_clip's ``--accum-freq`` scheme, for the chapter's peer check.

    Pass 1 caches all embeddings without a graph. Then, for each micro-batch ``k``, it
    re-encodes ``k`` with a graph, splices it into the cached embeddings, evaluates the
    **full** loss and calls ``backward``. Encoder gradients come out exact (each pass
    contributes ``J_k^T dL/dH_k``) only if the re-encoding reproduces the cache: dropout
    off, or ``replay_rng=True``, which open_clip itself does not do (its default here is
    ``False``, as shipped). Either way a parameter inside the loss (``logit_scale``)
    receives ``dL/d(scale)`` once per micro-batch: ``n`` times too much. A micro-batch
    size that does not divide the batch leaves a smaller last micro-batch.
    """
    inputs, _ = _prepare(encoder, inputs, micro_batch_size, loss_fn, replay_rng)
    devices = _rng_devices(encoder, inputs)
    cached, states, _ = _encode_no_grad(encoder, inputs, micro_batch_size, devices)
    loss = None
    with torch.enable_grad():
        for i, x in enumerate(inputs):
            for k, chunk in enumerate(x.split(micro_batch_size)):
                if replay_rng:
                    states[i][k].restore()
                live = encoder(chunk)
                embeddings = [
                    torch.cat([live if (j == i and m == k) else c for m, c in enumerate(chunks)])
                    for j, chunks in enumerate(cached)
                ]
                loss = _check_loss(loss_fn(*embeddings))
                loss.backward()
    assert loss is not None
    return loss.detach()


# ---------------------------------------------------------------------------
# distributed (torch.distributed; tested with gloo on CPU)
# ---------------------------------------------------------------------------
class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def all_gather_with_grad(x: Tensor, group: Any = None) -> Tensor:
    r"""Concatenate ``x`` from every rank (rank order) and let gradients flow back to each rank's slice.

    Backward sums the incoming gradient over ranks and returns this rank's slice: the
    adjoint of the gather for the objective :math:`\sum_r \mathcal L_r` (one loss per rank).
    When every rank computes the *same* global loss, each rank's slice receives
    :math:`W\,\partial\mathcal L/\partial H_r`, and DDP's gradient *averaging* over the
    :math:`W` ranks then yields exactly :math:`\nabla_\theta\mathcal L` (Princeton SimCSE's recipe).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("all_gather_with_grad needs an initialised torch.distributed process group")
    return _AllGatherWithGrad.apply(x, group)


def distributed_contrastive_backward(
    encoder: nn.Module,
    inputs: Inputs,
    loss_fn: LossFn,
    micro_batch_size: int,
    *,
    group: Any = None,
    replay_rng: bool = True,
) -> Tensor:
    r""":func:`contrastive_backward` over ``W`` processes: exact for the global batch.

    Each rank passes its local shard (the same ``N`` on every rank). Embeddings are
    all-gathered (rank order), every rank evaluates the global loss and its gradient
    with respect to all embeddings, back-propagates its own slice
    :math:`\partial\mathcal L/\partial H_r` through its micro-batches, and the encoder
    gradients are summed over ranks. Afterwards every rank's encoder ``.grad`` holds
    :math:`\nabla_\theta\mathcal L` of the global batch (added to what was there), and
    parameters inside ``loss_fn`` hold their exact gradient (computed identically on each
    rank, not summed). Pass the plain module, not a ``DistributedDataParallel`` wrapper:
    this function does the gradient reduction itself.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("distributed_contrastive_backward needs an initialised torch.distributed process group")
    if isinstance(encoder, nn.parallel.DistributedDataParallel):
        raise TypeError(
            "encoder must be the plain module, not DistributedDataParallel: "
            "distributed_contrastive_backward reduces the gradients itself"
        )
    inputs, _ = _prepare(encoder, inputs, micro_batch_size, loss_fn, replay_rng)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    rows = inputs[0].shape[0]
    # collective tensors live on the encoder's device (NCCL needs CUDA tensors, gloo takes CPU ones)
    where = next(iter(encoder.parameters()), inputs[0]).device
    sizes = [torch.zeros(1, dtype=torch.int64, device=where) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([rows], device=where), group=group)
    if any(int(s) != rows for s in sizes):
        raise ValueError(f"every rank must pass the same local batch size, got {[int(s) for s in sizes]}")

    devices = _rng_devices(encoder, inputs)
    cached, states, _ = _encode_no_grad(encoder, inputs, micro_batch_size, devices)
    after_pass_1 = _RngState(devices)
    local = [torch.cat(chunks) for chunks in cached]
    del cached
    gathered = []
    for h in local:
        parts = [torch.empty_like(h) for _ in range(world)]
        dist.all_gather(parts, h.contiguous(), group=group)
        gathered.append(torch.cat(parts).requires_grad_(True))

    with torch.enable_grad():
        loss = _check_loss(loss_fn(*gathered))
        loss.backward()  # identical on every rank; loss parameters get their exact gradient here
    grads = [None if g.grad is None else g.grad[rank * rows : (rank + 1) * rows] for g in gathered]
    del gathered

    params = [p for p in encoder.parameters() if p.requires_grad]
    before = [p.grad for p in params]
    for p in params:
        p.grad = None
    _replay_backward(encoder, inputs, grads, states if replay_rng else None, micro_batch_size)
    contributions = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    if contributions:
        flat = torch.cat([c.reshape(-1) for c in contributions])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)  # sum_r J_r^T dL/dH_r
        for p, prev, piece in zip(params, before, flat.split([c.numel() for c in contributions])):
            piece = piece.view_as(p)
            p.grad = piece.clone() if prev is None else prev + piece
    after_pass_1.restore()
    return loss.detach()


def rank_streams_reference_backward(
    encoder: nn.Module,
    shards: Sequence[Inputs],
    loss_fn: LossFn,
    micro_batch_size: int,
    seeds: Sequence[int],
) -> Tensor:
    """One-process reference for :func:`distributed_contrastive_backward` with dropout on.

    Shard ``r`` is encoded (micro-batches in order, inside one graph) right after
    ``torch.manual_seed(seeds[r])``, the seed rank ``r`` used; the embeddings of all shards
    are concatenated in rank order per input and ``loss_fn`` is back-propagated once.
    """
    if len(shards) != len(seeds) or not shards:
        raise ValueError(f"shards and seeds must be non-empty and of equal length, got {len(shards)} and {len(seeds)}")
    for r, seed in enumerate(seeds):
        checks.nonnegative_int(f"seeds[{r}]", seed)
    per_rank = []
    with torch.enable_grad():
        for shard, seed in zip(shards, seeds):
            shard_inputs, _ = _prepare(encoder, shard, micro_batch_size, loss_fn)
            torch.manual_seed(seed)
            per_rank.append([torch.cat([encoder(c) for c in x.split(micro_batch_size)]) for x in shard_inputs])
        embeddings = [torch.cat(parts) for parts in zip(*per_rank)]
        loss = _check_loss(loss_fn(*embeddings))
        loss.backward()
    return loss.detach()


# ---------------------------------------------------------------------------
# measuring memory and comparing gradients
# ---------------------------------------------------------------------------
class _Held:
    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor: Tensor, meter: "SavedTensorMeter", key: int) -> None:
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Count the bytes autograd keeps alive for backward (activations), and their peak.

    Inside ``with SavedTensorMeter(exclude=model.parameters()) as m:``, every tensor saved
    for backward is counted once per storage while some graph still holds it; storages of
    the excluded tensors (the weights) are not counted. ``m.peak`` is the largest number
    of bytes held at once, ``m.live`` the current number. This is a CPU-friendly stand-in
    for ``torch.cuda.max_memory_allocated`` that isolates activation memory.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._refs: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0
        self._ctx: Any = None

    def _pack(self, t: Tensor) -> Any:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._excluded or t.device.type == "meta":
            return t
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        return _Held(t, self, key)

    @staticmethod
    def _unpack(held: Any) -> Tensor:
        return held.tensor if isinstance(held, _Held) else held

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= self._sizes.pop(key)

    def __enter__(self) -> "SavedTensorMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def grad_vector(*modules: nn.Module) -> Tensor:
    """All parameter gradients of ``modules`` flattened into one vector (zeros where ``.grad`` is None)."""
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise TypeError(f"modules[{i}] must be a torch.nn.Module, got {type(m).__name__}")
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
        for m in modules
        for p in m.parameters()
        if p.requires_grad
    ]
    if not parts:
        raise ValueError("modules have no trainable parameters (requires_grad=True): there is no gradient to collect")
    return torch.cat(parts)


def relative_error(x: Tensor, reference: Tensor) -> float:
    """``max|x - ref| / max|ref|`` (the chapter's "max relative gradient difference").

    NaN or infinite entries raise ``ValueError`` (``max`` would hide a NaN).
    """
    checks.floating_tensor("x", x)
    checks.floating_tensor("reference", reference)
    if x.shape != reference.shape:
        raise ValueError(f"x and reference must have the same shape, got {tuple(x.shape)} and {tuple(reference.shape)}")
    if x.numel() == 0:
        raise ValueError("x and reference are empty")
    checks.finite("x", x)
    checks.finite("reference", reference)
    return float((x - reference).abs().max() / reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny))
