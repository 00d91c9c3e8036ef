"""Digital corruptions: contrast, elastic transform, pixelate, stripe and edge maps."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from workbench.corruptions import filters, rng
from workbench.corruptions.base import register_corruption, spatial_scale, table
from workbench.corruptions.noise import CIFAR_C, MNIST_C

CONTRAST = {"rgb": [0.75, 0.5, 0.4, 0.3, 0.15]}
#: ``(alpha, sigma, affine jitter)`` as fractions of the image size (``IMSIZE`` in the reference).
ELASTIC = {"rgb": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                   (0.1, 0.03, 0.03)]}
PIXELATE = {"rgb": [0.95, 0.9, 0.85, 0.75, 0.65]}
#: Width of each inverted band as a fraction of the image width (MNIST-C's 7/28 is severity 3).
STRIPE = {"gray": [3 / 28, 5 / 28, 7 / 28, 9 / 28, 11 / 28]}
#: ``(sigma at 28×28, blend with the edge map)``; MNIST-C's pure edge map is severity 5.
CANNY = {"gray": [(1.0, 0.2), (1.0, 0.4), (1.0, 0.6), (1.0, 0.8), (1.0, 1.0)]}
CANNY_THRESHOLDS = (0.1, 0.2)  # skimage.feature.canny defaults for float images


@register_corruption("contrast", family="digital", channels="rgb", reference=CIFAR_C,
                     params=CONTRAST)
def contrast(x, severity, *, seed=0):
    """Pull every channel towards its mean: ``(x - mean) · c + mean``.

    Severity ``c`` (CIFAR-10-C): 0.75, 0.5, 0.4, 0.3, 0.15. Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.tensor([0.0, 1.0]).repeat(1, 3, 2, 1)  # (1, 3, 2, 2), mean 0.5
    >>> CORRUPTIONS["contrast"](x, 2)[0, 0, 0].tolist()
    [0.25, 0.75]
    """
    c = table(CONTRAST, x, severity)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


@register_corruption("elastic_transform", family="digital", channels="rgb", reference=CIFAR_C,
                     params=ELASTIC, not_monotone=("rgb",))
def elastic_transform(x, severity, *, seed=0):
    """A random affine warp (three points jittered) followed by a smooth random displacement.

    Severity ``(alpha, sigma, jitter)`` as fractions of the image size (CIFAR-10-C, IMSIZE=32):
    (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03).
    The points ``centre ± size//3`` move by ``U(-jitter, jitter)``; the warp is applied as
    ``cv2.warpAffine`` (bilinear, ``BORDER_REFLECT_101``); then each pixel moves by
    ``alpha · gaussian(U(-1, 1), sigma)`` (scipy ``map_coordinates``, order 1, reflect).

    Not monotone in pixel change: the reference parameters trade a weaker affine part (which
    moves many pixels) for a stronger local elastic part as severity grows, so the mean pixel
    change *falls* with severity on smooth images although the corruption gets harder to
    classify (``CorruptionInfo.not_monotone``).

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["elastic_transform"](torch.full((2, 3, 32, 32), 0.5), 4)
    >>> bool(torch.allclose(y, torch.full_like(y, 0.5)))
    True
    """
    alpha, sigma, jitter = table(ELASTIC, x, severity)
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, jitter = alpha * size, sigma * size, jitter * size
    # random affine from three jittered points (pts are (x, y) = (col, row))
    cx, cy = float(w // 2), float(h // 2)
    sq = size // 3
    pts1 = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]],
                        dtype=torch.float64)
    pts2 = pts1 + rng.uniform(seed, "elastic/affine", n, (3, 2), -jitter, jitter).double()
    ones = torch.ones(3, 1, dtype=torch.float64)
    src = torch.cat([pts1, ones], 1)  # (3, 3)
    mt = torch.linalg.solve(src.expand(n, 3, 3), pts2)  # (n, 3, 2): [p, 1] @ mt = p'
    fwd, shift = mt[:, :2, :].transpose(1, 2), mt[:, 2, :]  # p' = fwd p + shift
    inv = torch.linalg.inv(fwd)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    # src(p) = inv (p - shift) = inv (p - c) + inv (c - shift); offset relative to the centre
    offset = torch.einsum("nij,nj->ni", inv, centre - shift) - centre
    out = filters.affine(x, inv, offset, padding="reflection")
    if alpha > 0:
        field = rng.uniform(seed, "elastic/field", n, (2, h, w), -1.0, 1.0)
        field = filters.gaussian(field, sigma, mode="symmetric", truncate=3.0) * alpha
        rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                    torch.arange(w, dtype=torch.float32), indexing="ij")
        out = filters.sample(out, cols + field[:, 0], rows + field[:, 1], padding="reflection",
                             align_corners=False)
    return out


@register_corruption("pixelate", family="digital", channels="rgb", reference=CIFAR_C,
                     params=PIXELATE)
def pixelate(x, severity, *, seed=0):
    """Downsample to ``int(size · c)`` and back up, both with PIL's BOX filter.

    Severity ``c`` (CIFAR-10-C): 0.95, 0.9, 0.85, 0.75, 0.65 (relative, so no rescaling).
    Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.zeros(1, 3, 32, 32); x[..., ::2] = 1
    >>> round(float(CORRUPTIONS["pixelate"](x, 5).mean()), 2)  # averages keep the mean
    0.5
    """
    c = table(PIXELATE, x, severity)
    h, w = x.shape[-2:]
    small = filters.box_resize(x, (max(1, int(h * c)), max(1, int(w * c))))
    return filters.box_resize(small, (h, w))


@register_corruption("stripe", family="digital", channels="gray", reference=(
    f"{MNIST_C}; severities widen MNIST-C's fixed stripe"), params=STRIPE)
def stripe(x, severity, *, seed=0):
    """Invert a vertical band at the left and right edges: ``1 - x`` there.

    MNIST-C's ``stripe`` has no severity (columns ``[:7]`` and ``[21:]`` of 28 inverted). Here
    the band width per side is ``round(f · W)`` (at least 1) with ``f`` = 3/28, 5/28, 7/28,
    9/28, 11/28; severity 3 is MNIST-C's stripe. Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> CORRUPTIONS["stripe"](torch.zeros(1, 1, 2, 8), 3)[0, 0, 0].tolist()
    [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    """
    width = max(1, int(round(table(STRIPE, x, severity) * x.shape[-1])))
    width = min(width, x.shape[-1] // 2)
    out = x.clone()
    out[..., :width] = 1 - x[..., :width]
    out[..., x.shape[-1] - width:] = 1 - x[..., x.shape[-1] - width:]
    return out


def edge_map(x: torch.Tensor, sigma: float, low: float = 0.1, high: float = 0.2) -> torch.Tensor:
    """A vectorised Canny edge map (0/1) of every channel.

    Gaussian smoothing ``sigma`` (edge pixels repeated), Sobel gradients (``scipy.ndimage.sobel``,
    unnormalised, as skimage's ``canny``), non-maximum suppression with the gradient direction
    quantised to 0°, 45°, 90°, 135° (skimage interpolates instead; of two tied maxima the one
    on the brighter side is kept, so a step edge gives a one-pixel line), and exact hysteresis:
    pixels above ``low`` are kept if 8-connected to a pixel above ``high`` (iterated dilation).
    """
    s = filters.gaussian(x, sigma)
    d = torch.tensor([-1.0, 0.0, 1.0])
    smooth = torch.tensor([1.0, 2.0, 1.0])
    gx = filters.separable(s, smooth, d)  # derivative along columns
    gy = filters.separable(s, d, smooth)  # derivative along rows
    mag = torch.hypot(gx, gy)
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    sector = (((angle + 22.5) // 45) % 4).long()  # 0: horizontal gradient, 1: 45°, 2: 90°, 3: 135°
    p = filters.pad2d(mag, 1, "replicate")
    h, w = x.shape[-2:]
    tol = 1e-5  # magnitudes equal in exact arithmetic count as ties

    keep = torch.zeros_like(mag, dtype=torch.bool)
    for k, (dr, dc) in enumerate([(0, 1), (1, 1), (1, 0), (1, -1)]):
        ahead = p[..., 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]  # neighbour at +(dr, dc)
        behind = p[..., 1 - dr:1 - dr + h, 1 - dc:1 - dc + w]
        uphill = gx * dc + gy * dr >= 0  # is "ahead" on the brighter side?
        # of two tied maxima keep the one on the brighter side of the edge
        up_ok = (mag > ahead + tol) & (mag >= behind - tol)
        down_ok = (mag >= ahead - tol) & (mag > behind + tol)
        keep |= (sector == k) & torch.where(uphill, up_ok, down_ok)
    weak = keep & (mag >= low) & (mag > 0)
    edges = weak & (mag >= high)
    for _ in range(h * w):
        grown = weak & (F.max_pool2d(edges.float().flatten(0, 1)[:, None], 3, 1, 1)
                        .view_as(mag) > 0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.to(x.dtype)


@register_corruption("canny_edges", family="digital", channels="gray", reference=(
    f"{MNIST_C}; severities blend towards MNIST-C's edge map"), params=CANNY)
def canny_edges(x, severity, *, seed=0):
    """Replace the image by its Canny edge map, blended: ``(1 - b) · x + b · edges``.

    MNIST-C's ``canny_edges`` (no severity) returns ``skimage.feature.canny(x)`` (sigma 1,
    thresholds 0.1 / 0.2); that is severity 5 here, and severities 1–4 blend the edges in with
    ``b`` = 0.2, 0.4, 0.6, 0.8. The edge map is the vectorised :func:`edge_map` with sigma scaled
    by ``min(H, W) / 28``. Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.zeros(1, 1, 28, 28); x[..., 8:20, 8:20] = 1
    >>> e = CORRUPTIONS["canny_edges"](x, 5)
    >>> float(e[0, 0, 14, 14]), float(e[0, 0, 14].sum()) >= 2  # hollow square: edges only
    (0.0, True)
    """
    sigma, blend = table(CANNY, x, severity)
    edges = edge_map(x, sigma * spatial_scale(x), *CANNY_THRESHOLDS)
    return (1 - blend) * x + blend * edges


__all__ = ["contrast", "elastic_transform", "pixelate", "stripe", "canny_edges", "edge_map"]
