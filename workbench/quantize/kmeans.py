"""Weight sharing by k-means clustering (Deep Compression): codes index a learned codebook."""

from __future__ import annotations

import torch

from workbench.errors import ParameterError
from workbench.quantize.apply import quantize_model
from workbench.quantize.base import (Quantized, QuantizedTensor, check_granularity,
                                     register_quantizer, rows)

KMEANS_BITS = (8, 7, 6, 5, 4, 3, 2, 1)


def _nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the nearest of the sorted ``centroids`` (ties: the lower one)."""
    mids = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()
    idx = torch.searchsorted(mids, values.contiguous())
    # a rounded midpoint can put a value one bucket off; compare with both neighbours
    below, above = (idx - 1).clamp(min=0), (idx + 1).clamp(max=centroids.shape[1] - 1)
    d_below, d_mid, d_above = ((values - centroids.gather(1, i)).abs() for i in (below, idx, above))
    best = torch.where(d_below <= d_mid, below, idx)
    return torch.where(d_above < torch.minimum(d_below, d_mid), above, best)


def _distinct(s: torch.Tensor, kept: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the row-sorted ``s`` (``kept`` entries first), the number of distinct kept
    values and the first ``k`` of them (padded by repeating the last; zeros if none is kept)."""
    n = s.shape[1]
    first = kept.clone()
    first[:, 1:] &= s[:, 1:] != s[:, :-1]
    count = first.sum(1)
    rank = torch.where(kept, first.cumsum(1) - 1, n)  # column n collects the masked entries
    table = torch.zeros(len(s), n + 1, dtype=s.dtype).scatter_(1, rank, torch.where(kept, s, 0))
    pad = torch.minimum(torch.arange(k), (count - 1).clamp(min=0)[:, None])
    return count, table.gather(1, pad.clamp(max=n))


def lloyd(values: torch.Tensor, k: int, keep: torch.Tensor | None = None,
          iterations: int = 30) -> torch.Tensor:
    """``k`` sorted centroids for each row of ``values`` (2-D) by Lloyd's algorithm.

    Only entries where ``keep`` is True take part. Centroids start evenly spaced between the
    row's min and max (the initialisation Han et al. found best); an empty cluster moves to the
    value worst served by the current centroids. A row with at most ``k`` distinct values gets
    exactly those as centroids (padded by repeating the last), so clustering it is lossless.
    Deterministic: no random numbers are involved.

    Examples
    --------
    >>> import torch
    >>> c = lloyd(torch.tensor([[0.0, 0.1, 1.0, 1.1]]), 2)
    >>> [round(x, 4) for x in c[0].tolist()]
    [0.05, 1.05]
    """
    v = values.double()
    keep = torch.ones_like(v, dtype=torch.bool) if keep is None else keep
    # In 1-D every cluster is a run of the sorted values, so one sort plus prefix sums make
    # each iteration cost O(k log n) instead of O(n).
    s = torch.sort(torch.where(keep, v, torch.inf), dim=1).values.contiguous()
    kept = torch.isfinite(s)
    count, exact = _distinct(s, kept, k)
    clustered = count > k
    if not bool(clustered.any()):
        return exact.float()
    n_kept = kept.sum(1)
    z = torch.where(kept, s, 0)
    prefix = torch.cat([torch.zeros(len(z), 1, dtype=z.dtype), z.cumsum(1)], dim=1)
    lo, hi = z[:, 0], z.gather(1, (n_kept - 1).clamp(min=0)[:, None])[:, 0]
    centroids = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, k, dtype=z.dtype)
    last_index = s.shape[1] - 1
    for _ in range(iterations):
        mids = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()
        ends = torch.cat([torch.searchsorted(s, mids), n_kept[:, None]], dim=1)
        starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
        counts = ends - starts
        sums = prefix.gather(1, ends) - prefix.gather(1, starts)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        empty = (counts == 0) & clustered[:, None]
        if bool(empty.any()):
            # the worst-served values are ends of the runs; empty clusters move there
            first = z.gather(1, starts.clamp(max=last_index))
            last = z.gather(1, (ends - 1).clamp(min=0))
            values_ = torch.cat([first, last], dim=1)
            full = torch.cat([counts > 0, counts > 0], dim=1)
            err = torch.where(full, (values_ - torch.cat([new, new], dim=1)).abs(), -1)
            order = torch.argsort(err, dim=1, descending=True, stable=True)
            worst = values_.gather(1, order)
            new = torch.where(empty, worst.gather(1, (empty.cumsum(1) - 1).clamp(min=0)), new)
        new = torch.sort(new, dim=1).values
        if torch.equal(new, centroids):
            break
        centroids = new
    return torch.where(clustered[:, None], centroids, exact).float()


def kmeans_quantize(weight: torch.Tensor, bits: int, granularity: str = "tensor",
                    mask: torch.Tensor | None = None, iterations: int = 30) -> QuantizedTensor:
    """Cluster ``weight`` into ``2**bits`` shared values; codes are cluster indices.

    One codebook per layer (``"tensor"``, as in Deep Compression) or one per output channel
    (``"channel"``, a ``(channels, k)`` codebook). Pruned weights (``mask`` False) are left out
    of the clustering and get the reserved code 0, whose codebook entry is exactly 0; the other
    ``2**bits - 1`` codes are clusters, so every code still fits in ``bits``. Each weight gets
    the code of its nearest centroid.

    Examples
    --------
    >>> import torch
    >>> w = torch.tensor([[0.0, 0.1, 1.0, 1.1], [0.0, 0.1, 1.0, 1.1]])
    >>> qt = kmeans_quantize(w, bits=1)
    >>> qt.codes.tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1]]
    >>> qt = kmeans_quantize(w, bits=1, mask=w > 0.5)  # one cluster plus the zero code
    >>> qt.codes.tolist(), [round(c, 4) for c in qt.codebook.tolist()]
    ([[0, 0, 1, 1], [0, 0, 1, 1]], [0.0, 1.05])
    """
    r = rows(weight.detach().float(), granularity)
    keep = None if mask is None else rows(mask.bool(), granularity)
    reserve_zero = keep is not None and not bool(keep.all())
    k = 2 ** bits - (1 if reserve_zero else 0)
    codebook = lloyd(r, k, keep, iterations)
    codes = _nearest(r, codebook)
    if reserve_zero:
        codebook = torch.cat([torch.zeros(len(r), 1), codebook], dim=1)
        codes = torch.where(keep, codes + 1, 0)
    return QuantizedTensor(codes.to(torch.uint8).reshape(weight.shape), torch.ones(len(r)),
                           torch.zeros(len(r), dtype=torch.int32), int(bits),
                           codebook[0] if granularity == "tensor" else codebook)


@register_quantizer("kmeans", bits=KMEANS_BITS, reference=(
    "Han, Mao & Dally 2016, 'Deep Compression: Compressing Deep Neural Networks with Pruning, "
    "Trained Quantization and Huffman Coding' (weight sharing by k-means, linear init)."))
def kmeans(model, bits=8, *, data=None, granularity="tensor", symmetric=True, exclude=(),
           seed=0, masks=None, per_layer_bits=None, iterations=30, activations=False,
           calibration_batches=8) -> Quantized:
    """Share ``2**bits`` values per layer (or per channel) found by k-means clustering.

    ``symmetric`` must stay True (the codebook is learned, neither symmetric nor affine).
    ``per_layer_bits`` maps layer names to their own width. ``activations=True`` also quantizes
    each layer's input to int8 (needs ``data``).

    Examples
    --------
    >>> from workbench.models import create_model
    >>> q = kmeans(create_model("mlp", (4,), 2), 2)
    >>> len(q.model.fc.weight.unique()) <= 4
    True
    """
    check_granularity(granularity)
    if symmetric is not True:
        raise ParameterError("kmeans learns its own codebook; symmetric does not apply, leave "
                             "it True (use 'uniform' for affine quantization)")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ParameterError(f"iterations must be a positive integer, got {iterations!r}")

    def quantize_weight(w, b, mask):
        return kmeans_quantize(w, b, granularity, mask, iterations)

    return quantize_model(model, quantize_weight, bits, supported=KMEANS_BITS, method="kmeans",
                          exclude=exclude, masks=masks, per_layer_bits=per_layer_bits, data=data,
                          activations=activations, calibration_batches=calibration_batches,
                          info={"granularity": granularity, "iterations": iterations})
