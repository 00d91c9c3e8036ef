"""Geometric corruptions of MNIST-C: shear, scale, rotate and translate.

All are ``skimage.transform.warp(x, inverse_map=AffineTransform(...))`` with bilinear
interpolation and black outside the image; shear, rotate and scale keep the image centre fixed
(MNIST-C's translation ``13.5 (1 - a - b)`` generalised to ``(size - 1) / 2``).
"""

from __future__ import annotations

import torch

from workbench.corruptions import filters, rng
from workbench.corruptions.base import register_corruption, spatial_scale, table
from workbench.corruptions.noise import MNIST_C

SHEAR = {"gray": [0.2, 0.4, 0.6, 0.8, 1.0]}
ROTATE = {"gray": [0.2, 0.4, 0.6, 0.8, 1.0]}
SCALE = {"gray": [1 / 0.9, 1 / 0.8, 1 / 0.7, 1 / 0.6, 1 / 0.5]}
TRANSLATE = {"gray": [1, 2, 3, 4, 5]}


def _warp(x, matrix, offset=None):
    if offset is None:
        offset = torch.zeros(len(x), 2, dtype=matrix.dtype)
    return filters.affine(x, matrix, offset, padding="zeros")


@register_corruption("shear", family="geometric", channels="gray", reference=MNIST_C,
                     params=SHEAR)
def shear(x, severity, *, seed=0):
    """Shear by angle ``±c`` radians (random sign per image) about the centre.

    Severity ``c`` (MNIST-C): 0.2, 0.4, 0.6, 0.8, 1.0. skimage's (pre-0.21) shear matrix
    ``[[1, -sin c], [0, cos c]]`` maps output to input coordinates ``(col, row)``.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.zeros(1, 1, 9, 9); x[..., 4, 4] = 1
    >>> float(CORRUPTIONS["shear"](x, 5)[..., 4, 4])  # the centre stays put
    1.0
    """
    c = table(SHEAR, x, severity) * rng.sign(seed, "shear", len(x)).double()
    m = torch.zeros(len(x), 2, 2, dtype=torch.float64)
    m[:, 0, 0] = 1
    m[:, 0, 1] = -torch.sin(c)
    m[:, 1, 1] = torch.cos(c)
    return _warp(x, m)


@register_corruption("rotate", family="geometric", channels="gray", reference=MNIST_C,
                     params=ROTATE)
def rotate(x, severity, *, seed=0):
    """Rotate by ``±c`` radians (random sign per image) about the centre.

    Severity ``c`` (MNIST-C): 0.2, 0.4, 0.6, 0.8, 1.0 rad (11.5° … 57.3°).

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.zeros(1, 1, 9, 9); x[..., 4, :] = 1
    >>> y = CORRUPTIONS["rotate"](x, 5)
    >>> float(y[..., 4, 4]), float(y[..., 4, 0]) < 0.5  # centre kept, the line tilted away
    (1.0, True)
    """
    c = table(ROTATE, x, severity) * rng.sign(seed, "rotate", len(x)).double()
    cos, sin = torch.cos(c), torch.sin(c)
    m = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return _warp(x, m)


@register_corruption("scale", family="geometric", channels="gray", reference=MNIST_C,
                     params=SCALE)
def scale(x, severity, *, seed=0):
    """Shrink the content about the centre: sampling at ``c (p - centre) + centre``.

    Severity ``c`` (MNIST-C): 1/0.9, 1/0.8, 1/0.7, 1/0.6, 1/0.5 (the digit ends up 90 % … 50 % of
    its size). Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["scale"](torch.ones(1, 1, 28, 28), 5)
    >>> float(y[..., 0, 0]), float(y[..., 14, 14])  # border becomes black, centre stays
    (0.0, 1.0)
    """
    c = table(SCALE, x, severity)
    m = torch.eye(2, dtype=torch.float64).expand(len(x), 2, 2) * c
    return _warp(x, m)


@register_corruption("translate", family="geometric", channels="gray", reference=MNIST_C,
                     params=TRANSLATE)
def translate(x, severity, *, seed=0):
    """Shift by ``c`` pixels along both axes, random sign per axis and image.

    Severity ``c`` (MNIST-C, 28×28): 1, 2, 3, 4, 5 pixels, scaled by ``min(H, W) / 28``
    (sub-pixel shifts are interpolated bilinearly).

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.zeros(1, 1, 28, 28); x[..., 10, 10] = 1
    >>> y = CORRUPTIONS["translate"](x, 3, seed=0)
    >>> sorted(abs(int(v) - 10) for v in (y[0, 0] == 1).nonzero()[0])
    [3, 3]
    """
    c = table(TRANSLATE, x, severity) * spatial_scale(x)
    offset = rng.sign(seed, "translate", len(x), (2,)).double() * c
    m = torch.eye(2, dtype=torch.float64).expand(len(x), 2, 2)
    return _warp(x, m, offset)

