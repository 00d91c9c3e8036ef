"""JPEG compression re-implemented in torch: baseline JPEG's lossy steps on 8×8 blocks.

The reference saves every image with PIL at a given quality. Here the lossy part of a baseline
libjpeg encode/decode runs batched in torch: RGB → YCbCr (JFIF), 4:2:0 chroma subsampling (2×2
averages, PIL's default), level shift, orthonormal 8×8 DCT-II, quantisation with the IJG tables
scaled by quality as libjpeg does, inverse DCT, bilinear chroma upsampling (libjpeg's "fancy"
triangle filter), YCbCr → RGB and rounding to 8 bits. Images are padded to whole blocks by
repeating the last row/column. Entropy coding is lossless and skipped. The result is close to, not
bit-identical with, libjpeg (whose integer DCT and rounding differ slightly).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from workbench.corruptions.base import register_corruption, table
from workbench.corruptions.noise import CIFAR_C

QUALITY = {"rgb": [80, 65, 58, 50, 40]}

LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]],
    dtype=torch.float64)
CHROMA = torch.full((8, 8), 99.0, dtype=torch.float64)
CHROMA[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99],
                               [47, 66, 99, 99]], dtype=torch.float64)


def quant_table(base: torch.Tensor, quality: int) -> torch.Tensor:
    """libjpeg's ``jpeg_quality_scaling``: ``floor((base · scale + 50) / 100)`` in 1..255.

    Examples
    --------
    >>> int(quant_table(LUMA, 50)[0, 0]), int(quant_table(LUMA, 100)[0, 0])
    (16, 1)
    """
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def dct_matrix() -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` (``coeffs = D @ block @ D.T``)."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d


def _blocks_roundtrip(plane: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Quantise the 8×8 block DCT of ``plane`` ``(n, H, W)`` (H, W multiples of 8) with ``q``."""
    n, h, w = plane.shape
    d = dct_matrix()
    blocks = plane.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / q) * q
    blocks = d.T @ coef @ d
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _pad_to(plane: torch.Tensor, mult: int) -> torch.Tensor:
    h, w = plane.shape[-2:]
    rows = torch.arange(math.ceil(h / mult) * mult).clamp(max=h - 1)
    cols = torch.arange(math.ceil(w / mult) * mult).clamp(max=w - 1)
    return plane[..., rows[:, None], cols[None, :]]


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``x`` (``(n, 3, H, W)`` in [0, 1]) after a JPEG encode/decode at ``quality``."""
    n, _, h, w = x.shape
    rgb = torch.round(x.double() * 255)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128
    ql, qc = quant_table(LUMA, quality), quant_table(CHROMA, quality)
    y = _blocks_roundtrip(_pad_to(y, 16) - 128, ql) + 128
    chroma = torch.stack([_pad_to(cb, 16), _pad_to(cr, 16)], 1)  # (n, 2, H16, W16)
    chroma = F.avg_pool2d(chroma, 2)
    chroma = torch.stack([_blocks_roundtrip(chroma[:, i] - 128, qc) + 128 for i in range(2)], 1)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    y, cb, cr = y[:, :h, :w], chroma[:, 0, :h, :w] - 128, chroma[:, 1, :h, :w] - 128
    out = torch.stack([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr,
                       y + 1.772 * cb], 1)
    return (torch.round(out.clamp(0, 255)) / 255).to(x.dtype)


@register_corruption("jpeg_compression", family="digital", channels="rgb", reference=(
    f"{CIFAR_C}; PIL JPEG replaced by a torch DCT quantisation"), params=QUALITY)
def jpeg_compression(x, severity, *, seed=0):
    """JPEG compression artefacts at quality 80, 65, 58, 50, 40 (CIFAR-10-C).

    Implemented as a batched 8×8 DCT quantisation with libjpeg's tables and 4:2:0 chroma
    subsampling (:func:`jpeg_roundtrip`); close to but not bit-identical with PIL. Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.full((1, 3, 16, 16), 0.5)
    >>> float((CORRUPTIONS["jpeg_compression"](x, 5) - x).abs().max()) < 0.01  # flat survives
    True
    """
    return jpeg_roundtrip(x, table(QUALITY, x, severity))


__all__ = ["jpeg_compression", "jpeg_roundtrip", "quant_table", "dct_matrix"]
