"""Blur corruptions: defocus, glass, motion and zoom blur."""

from __future__ import annotations

import math

import numpy as np
import torch

from workbench.corruptions import filters, rng
from workbench.corruptions.base import (REFERENCE_SIZE, kind_of, register_corruption,
                                        spatial_scale, table)
from workbench.corruptions.noise import CIFAR_C, MNIST_C

DEFOCUS = {"rgb": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]}
GLASS = {"gray": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
         "rgb": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)]}
MOTION = {"gray": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
          "rgb": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)]}
ZOOM = {"rgb": [np.arange(1, 1.06, 0.01), np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                np.arange(1, 1.21, 0.01), np.arange(1, 1.26, 0.01)]}


def disk(radius: float, alias_blur: float) -> torch.Tensor:
    """Hendrycks' anti-aliased disk kernel (``disk`` in ``make_cifar_c.py``), cropped to its
    support: an indicator of ``X² + Y² <= r²`` normalised, then a 3×3 (5×5 for r > 8) Gaussian of
    sigma ``alias_blur`` as in ``cv2.GaussianBlur``."""
    half = 8 if radius <= 8 else int(math.ceil(radius))
    ksize = 3 if radius <= 8 else 5
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    d = ((xx ** 2 + yy ** 2) <= radius ** 2).double()
    d /= d.sum()
    t = torch.arange(ksize, dtype=torch.float64) - ksize // 2
    g = torch.exp(-(t ** 2) / (2 * max(alias_blur, 1e-6) ** 2))
    g /= g.sum()
    d = filters.separable(d[None, None].float(), g.float(), g.float(), "reflect101")[0, 0]
    keep = (d > 1e-12).any(0).nonzero().flatten()
    lo, hi = int(keep.min()), int(keep.max())
    lo, hi = min(lo, 2 * half - hi), max(hi, 2 * half - lo)  # symmetric crop, odd size
    return d[lo:hi + 1, lo:hi + 1]


@register_corruption("defocus_blur", family="blur", channels="rgb", reference=CIFAR_C,
                     params=DEFOCUS)
def defocus_blur(x, severity, *, seed=0):
    """Convolution with an anti-aliased disk (lens defocus), borders reflected (OpenCV).

    Severity ``(radius, alias_blur)`` in pixels at 32×32 (CIFAR-10-C): (0.3, 0.4), (0.4, 0.5),
    (0.5, 0.6), (1, 0.2), (1.5, 0.1); both scaled by ``min(H, W) / 32``. Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["defocus_blur"](torch.full((1, 3, 8, 8), 0.25), 5)
    >>> round(float(y.mean()), 4)  # a normalised kernel keeps flat images flat
    0.25
    """
    radius, alias = table(DEFOCUS, x, severity)
    s = spatial_scale(x)
    return filters.correlate(x, disk(radius * s, alias * s), "reflect101")


@register_corruption("glass_blur", family="blur", channels="both",
                     reference=f"{MNIST_C}; {CIFAR_C}", params=GLASS, not_monotone=("rgb",))
def glass_blur(x, severity, *, seed=0):
    """Gaussian blur, local pixel swaps (frosted glass), Gaussian blur again.

    Severity ``(sigma, max_delta, iterations)``: gray (MNIST-C, 28×28) (0.7, 1, 2), (0.9, 2, 1),
    (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2); rgb (CIFAR-10-C, 32×32) (0.05, 1, 1), (0.25, 1, 1),
    (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2). Larger images scale ``sigma`` and ``max_delta`` with
    their size (``max_delta`` rounded); smaller ones (8×8 digits) are resized to the reference
    size, corrupted there and resized back, since swaps of a fraction of a pixel do not exist.
    The swap loop is the reference's: pixels are
    visited bottom-right to top-left and each swaps with a random neighbour offset in
    ``[-max_delta, max_delta)``; MNIST-C swaps only with probability 1/2. The loop runs over
    pixel positions, vectorised over the batch (each sample draws its own offsets). Between the
    blurs the image is truncated to 8 bits, as in the reference.

    The rgb table is not monotone in pixel change: severity 3 blurs more than severity 2 with
    the same swaps, and the blur pulls swapped pixels back towards their neighbours, so the
    mean change drops from 2 to 3 (``CorruptionInfo.not_monotone``).

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.rand(2, 1, 8, 8)
    >>> a, b = CORRUPTIONS["glass_blur"](x, 3, seed=1), CORRUPTIONS["glass_blur"](x, 3, seed=1)
    >>> bool((a == b).all())
    True
    """
    sigma, delta, iterations = table(GLASS, x, severity)
    h, w = x.shape[-2:]
    ref = REFERENCE_SIZE[kind_of(x)]
    if min(h, w) < ref:  # too small for pixel swaps of the reference's size: work at ref size
        up = (int(round(h * ref / min(h, w))), int(round(w * ref / min(h, w))))
        big = _glass(filters.resize(x, up), sigma, delta, iterations, seed)
        return filters.resize(big, (h, w))
    s = min(h, w) / ref
    return _glass(x, sigma * s, max(1, int(round(delta * s))), iterations, seed)


def _glass(x, sigma, delta, iterations, seed):
    n, c, h, w = x.shape
    out = torch.floor(filters.gaussian(x, sigma) * 255) / 255
    hs = list(range(h - delta, delta, -1))
    ws = list(range(w - delta, delta, -1))
    if hs and ws:
        shape = (iterations, len(hs), len(ws))
        dy = rng.randint(seed, "glass_blur/dy", n, shape, -delta, delta)
        dx = rng.randint(seed, "glass_blur/dx", n, shape, -delta, delta)
        if c == 1:  # MNIST-C: swap with probability 1/2
            coin = rng.uniform(seed, "glass_blur/coin", n, shape) < 0.5
        else:
            coin = torch.ones(n, *shape, dtype=torch.bool)
        # the swaps are applied to pixel indices (NumPy: the loop is over tiny arrays), then
        # to the image once
        src = np.array([[row * w + col for col in ws] for row in hs])[None, None]
        dst = ((torch.tensor(hs).view(1, 1, -1, 1) + dy) * w
               + torch.tensor(ws).view(1, 1, 1, -1) + dx).numpy()
        dst = np.where(coin.numpy(), dst, src).reshape(n, -1)
        src = np.broadcast_to(src, (1, iterations, len(hs), len(ws))).reshape(-1)
        perm = np.tile(np.arange(h * w), (n, 1))
        rows = np.arange(n)
        for k, s_k in enumerate(src.tolist()):
            d = dst[:, k]
            a = perm[:, s_k].copy()
            perm[:, s_k] = perm[rows, d]
            perm[rows, d] = a
        perm = torch.from_numpy(perm)
        flat = out.reshape(n, c, h * w)
        out = flat.gather(2, perm[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)
    return filters.gaussian(out, sigma)


@register_corruption("motion_blur", family="blur", channels="both",
                     reference=f"{MNIST_C}; {CIFAR_C}", params=MOTION)
def motion_blur(x, severity, *, seed=0):
    """ImageMagick motion blur along a random direction (angle uniform in [-45°, 45°)).

    Severity ``(radius, sigma)`` in pixels: gray (MNIST-C, 28×28) (10, 3), (15, 5), (15, 8),
    (15, 12), (20, 15); rgb (CIFAR-10-C, 32×32) (6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5); both
    scaled by the image size. The kernel is ImageMagick's one-sided Gaussian
    (:func:`~workbench.corruptions.filters.motion_blur`), without the PNG round trip.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["motion_blur"](torch.full((3, 1, 8, 8), 0.5), 2)
    >>> bool(torch.allclose(y, torch.full_like(y, 0.5)))
    True
    """
    radius, sigma = table(MOTION, x, severity)
    s = spatial_scale(x)
    angles = rng.uniform(seed, "motion_blur/angle", len(x), (), -45.0, 45.0)
    return filters.motion_blur(x, radius * s, sigma * s, angles)


@register_corruption("zoom_blur", family="blur", channels="rgb", reference=CIFAR_C,
                     params=ZOOM)
def zoom_blur(x, severity, *, seed=0):
    """Average of the image and centred zooms of it (``clipped_zoom``, linear interpolation).

    Severity zoom factors (CIFAR-10-C): ``np.arange(1, z, 0.01)`` for z = 1.06, 1.11, 1.16, 1.21,
    1.26. Factors are relative, so nothing is rescaled for other sizes. Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["zoom_blur"](torch.full((1, 3, 32, 32), 0.5), 1)
    >>> bool(torch.allclose(y, torch.full_like(y, 0.5)))
    True
    """
    factors = table(ZOOM, x, severity)
    out = torch.zeros_like(x)
    for z in factors:
        out += filters.clipped_zoom(x, float(z))
    return (x + out) / (len(factors) + 1)
