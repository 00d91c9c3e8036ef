"""Batched image operations the corruptions are built from (torch re-implementations).

Each helper mirrors the library call of the reference code (scikit-image ``gaussian``,
ImageMagick ``MotionBlurImage``, scipy ``zoom``, PIL ``BOX`` resize, OpenCV ``warpAffine``), works
on a whole batch ``(n, C, H, W)`` at once and takes per-sample parameters as tensors where the
reference draws them per image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from workbench.corruptions import rng


# --- padding and separable filters ----------------------------------------------------------
def pad_index(size: int, pad: int, mode: str) -> torch.Tensor:
    """Source indices of a 1-D axis padded by ``pad`` on both sides.

    ``mode``: ``"replicate"`` (scipy ``nearest``), ``"symmetric"`` (scipy ``reflect``,
    ``d c b a | a b c d``), ``"reflect101"`` (OpenCV default, ``d c b | a b c d``). Pads larger
    than the axis repeat the reflection, so tiny images work with wide kernels.
    """
    i = torch.arange(-pad, size + pad)
    if mode == "replicate":
        return i.clamp(0, size - 1)
    if mode == "symmetric":
        period = 2 * size
        i = i % period
        return torch.where(i < size, i, period - 1 - i)
    if mode == "reflect101":
        if size == 1:
            return torch.zeros_like(i)
        period = 2 * size - 2
        i = i % period
        return torch.where(i < size, i, period - i)
    raise ValueError(f"unknown padding mode {mode!r}")


def pad2d(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """``x`` padded by ``pad`` pixels on every side (see :func:`pad_index`)."""
    if pad == 0:
        return x
    rows = pad_index(x.shape[-2], pad, mode)
    cols = pad_index(x.shape[-1], pad, mode)
    return x[..., rows[:, None], cols[None, :]]


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's Gaussian taps: radius ``int(truncate * sigma + 0.5)``, normalised."""
    if sigma <= 0:
        return torch.ones(1)
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def separable(x: torch.Tensor, k_rows: torch.Tensor, k_cols: torch.Tensor,
              mode: str = "replicate") -> torch.Tensor:
    """Correlate every channel with ``k_rows`` (vertical) then ``k_cols`` (horizontal).

    Computed as a weighted sum of shifted copies: for the small kernels used here this is much
    faster on CPU than ``conv2d`` with one input channel and a large batch.
    """
    h, w = x.shape[-2:]
    if len(k_rows) > 1:
        p = x[..., pad_index(h, len(k_rows) // 2, mode), :]
        x = sum(float(k) * p[..., t:t + h, :] for t, k in enumerate(k_rows))
    if len(k_cols) > 1:
        p = x[..., pad_index(w, len(k_cols) // 2, mode)]
        x = sum(float(k) * p[..., t:t + w] for t, k in enumerate(k_cols))
    return x


def gaussian(x: torch.Tensor, sigma: float, mode: str = "replicate",
             truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian (spatial axes only; its default mode ``nearest``)."""
    k = gaussian_kernel1d(sigma, truncate)
    return separable(x, k, k, mode) if len(k) > 1 else x.clone()


def correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect101") -> torch.Tensor:
    """Every channel correlated with an odd square 2-D ``kernel`` (cv2.filter2D)."""
    h, w = x.shape[-2:]
    r = kernel.shape[-1] // 2
    p = pad2d(x, r, mode)
    out = torch.zeros_like(x)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            if float(kernel[i, j]) != 0.0:
                out += float(kernel[i, j]) * p[..., i:i + h, j:j + w]
    return out


# --- motion blur (ImageMagick MotionBlurImage) -----------------------------------------------
def motion_kernel(radius: float, sigma: float) -> torch.Tensor:
    """ImageMagick's one-sided Gaussian taps: width ``2 ceil(radius) + 1``, ``exp(-i²/2σ²)``."""
    width = int(2 * math.ceil(radius) + 1) if radius > 1e-12 else 3
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i ** 2) / (2 * max(sigma, 1e-12) ** 2))
    return (k / k.sum()).float()


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick ``-motion-blur radius x sigma + angle`` with one angle (degrees) per sample.

    Output pixel ``(c, r)`` is ``Σ_i k_i · x[r + round(i sin a), c + round(i cos a)]`` with edge
    pixels repeated outside the image (ImageMagick's default virtual-pixel method).
    """
    n, c, h, w = x.shape
    k = motion_kernel(radius, sigma)
    i = torch.arange(len(k), dtype=torch.float64)
    a = torch.deg2rad(angles.double())
    ox = torch.ceil(i[None] * torch.cos(a)[:, None] - 0.5).long()  # (n, width)
    oy = torch.ceil(i[None] * torch.sin(a)[:, None] - 0.5).long()
    flat = x.reshape(n, c, h * w)
    rows, cols = torch.arange(h), torch.arange(w)
    out = torch.zeros_like(flat)
    for t in range(len(k)):
        rr = (rows[None, :] + oy[:, t:t + 1]).clamp(0, h - 1)  # (n, h)
        cc = (cols[None, :] + ox[:, t:t + 1]).clamp(0, w - 1)  # (n, w)
        idx = (rr[:, :, None] * w + cc[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
        out += k[t] * flat.gather(2, idx)
    return out.reshape(n, c, h, w)


# --- resampling --------------------------------------------------------------------------------
def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with antialiasing (area-like when shrinking); no-op for the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def zoom_linear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """scipy.ndimage.zoom(order=1): corners aligned (output ``o`` ↦ input ``o (in-1)/(out-1)``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Hendrycks' ``clipped_zoom``: crop the centre ``ceil(H / factor)``, zoom by ``factor``
    (scipy, linear), trim back to ``H × W``."""
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / factor)), int(math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    z = zoom_linear(crop, (int(round(ch * factor)), int(round(cw * factor))))
    tt, tl = (z.shape[-2] - h) // 2, (z.shape[-1] - w) // 2
    return z[..., tt:tt + h, tl:tl + w]


def pil_box_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """The ``(out, in)`` weights of PIL's ``Image.resize(..., Image.BOX)`` along one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = np.zeros((out_size, in_size))
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        for j in range(lo, hi):
            t = (j - center + 0.5) / filterscale
            m[o, j] = 1.0 if -0.5 < t <= 0.5 else 0.0
        total = m[o].sum()
        if total:
            m[o] /= total
    return torch.from_numpy(m).float()


def box_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL ``BOX`` resize of every channel (separable matrix products)."""
    rh = pil_box_matrix(x.shape[-2], size[0])
    rw = pil_box_matrix(x.shape[-1], size[1])
    return torch.einsum("oh,nchw,pw->ncop", rh, x, rw)


def sample(x: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor, padding: str = "zeros",
           align_corners: bool = True) -> torch.Tensor:
    """Bilinear samples of ``x`` at pixel coordinates ``(cols, rows)``, each ``(n, H, W)``.

    ``align_corners=True`` with ``padding="reflection"`` reflects about the border pixel centres
    (OpenCV ``BORDER_REFLECT_101``); ``align_corners=False`` reflects about the image edges
    (scipy ``mode="reflect"``).
    """
    h, w = x.shape[-2:]
    if align_corners:
        gx = 2 * cols / max(w - 1, 1) - 1
        gy = 2 * rows / max(h - 1, 1) - 1
    else:
        gx = (2 * cols + 1) / w - 1
        gy = (2 * rows + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding,
                         align_corners=align_corners)


def affine(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor,
           padding: str = "zeros") -> torch.Tensor:
    """``out[p] = x[A_n (p - c) + c + t_n]`` in pixel ``(col, row)`` coordinates, ``c`` the centre.

    ``matrix`` is ``(n, 2, 2)`` and ``offset`` ``(n, 2)``: skimage ``warp(x, inverse_map=A)`` with
    the image centre held fixed (how MNIST-C builds shear, rotate and scale).
    """
    h, w = x.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                torch.arange(w, dtype=torch.float64), indexing="ij")
    p = torch.stack([cols - (w - 1) / 2, rows - (h - 1) / 2], dim=-1)  # (h, w, 2)
    src = torch.einsum("nij,hwj->nhwi", matrix.double(), p) + offset.double()[:, None, None, :]
    return sample(x, src[..., 0] + (w - 1) / 2, src[..., 1] + (h - 1) / 2, padding)


# --- textures ----------------------------------------------------------------------------------
def plasma_fractal(n: int, mapsize: int, wibbledecay: float, seed: int, stream: str,
                   crop: int | None = None, chunk: int = 64) -> torch.Tensor:
    """Hendrycks' diamond–square height maps in [0, 1], one per sample.

    A batched transcription of ``plasma_fractal`` in ``make_cifar_c.py`` / MNIST-C (toroidal
    ``np.roll`` neighbours, noise ``wibble · U(-wibble, wibble)`` with ``wibble = 100`` divided by
    ``wibbledecay`` per level, min–max normalised). Returns ``(n, mapsize, mapsize)``, or the
    top-left ``(n, crop, crop)`` corner when ``crop`` is given.

    With a small ``crop`` of a large map (MNIST-C takes 28×28 from 256²) only what the corner
    needs is computed: every level but the last two on the whole (toroidal) map at a quarter of
    the resolution, the last two only on a patch around the corner. The min–max normalisation
    then runs over those computed points instead of the whole fine map, which shifts the scale
    by about the amplitude of the two finest levels (< 1 % for ``wibbledecay >= 1.7``, about 1 %
    at 1.4) and cuts the cost by ~50×.
    """
    if mapsize & (mapsize - 1) or mapsize < 2:
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    out = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        if crop is not None and mapsize >= 64 and crop + 16 <= mapsize // 2:
            out.append(_plasma_corner(size, start, mapsize, wibbledecay, seed, stream, crop))
        else:
            m = _normalise(_plasma(size, start, mapsize, wibbledecay, seed, stream))
            out.append(m if crop is None else m[:, :crop, :crop])
    return torch.cat(out)


def _plasma(n, start, mapsize, wibbledecay, seed, stream, levels=None):
    """The reference recursion on the full toroidal map (optionally only the first ``levels``)."""
    m = torch.zeros(n, mapsize, mapsize)
    step, wibble, level = mapsize, 100.0, 0

    def noise(tag, shape):
        return wibble * rng.uniform(seed, f"{stream}/{level}/{tag}", n, shape, -wibble, wibble,
                                    start=start)

    while step >= 2 and (levels is None or level < levels):
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + corner.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = sq / 4 + noise("square", sq.shape[1:])
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        lt = dr + dr.roll(1, 1) + ul + ul.roll(-1, 2)
        m[:, 0::step, half::step] = lt / 4 + noise("diamond1", lt.shape[1:])
        tt = dr + dr.roll(1, 2) + ul + ul.roll(-1, 1)
        m[:, half::step, 0::step] = tt / 4 + noise("diamond2", tt.shape[1:])
        step //= 2
        wibble /= wibbledecay
        level += 1
    return m


def _normalise(m: torch.Tensor, lo=None, hi=None) -> torch.Tensor:
    flat = m.reshape(len(m), -1)
    lo = flat.min(1).values if lo is None else lo
    hi = flat.max(1).values if hi is None else hi
    return (m - lo.view(-1, 1, 1)) / (hi - lo).clamp_min(1e-12).view(-1, 1, 1)


def _plasma_corner(n, start, mapsize, wibbledecay, seed, stream, crop):
    levels = int(math.log2(mapsize))
    # all but the last two levels, on the map subsampled every 4 pixels (the same recursion)
    coarse = _plasma(n, start, mapsize // 4, wibbledecay, seed, stream, levels=levels - 2)
    g = mapsize // 4
    cells = -(-crop // 4)
    idx = torch.arange(-2, cells + 3) % g  # a margin of two coarse cells around the corner
    patch = coarse[:, idx[:, None], idx[None, :]]
    wibble = 100.0 / wibbledecay ** (levels - 2)
    for level in (levels - 2, levels - 1):
        patch = _refine(patch, wibble, seed, f"{stream}/{level}", start)
        wibble /= wibbledecay
    # patch spacing is now 1 pixel with its origin at -8: keep the corner
    corner = patch[:, 8:8 + crop, 8:8 + crop]
    valid = patch[:, 4:-4, 4:-4].reshape(n, -1)
    lo = torch.minimum(coarse.reshape(n, -1).min(1).values, valid.min(1).values)
    hi = torch.maximum(coarse.reshape(n, -1).max(1).values, valid.max(1).values)
    return _normalise(corner, lo, hi)


def _refine(p: torch.Tensor, wibble: float, seed: int, stream: str, start: int) -> torch.Tensor:
    """One diamond–square level on a non-toroidal patch (its outer ring is left inexact)."""
    n, size, _ = p.shape

    def noise(tag, shape):
        return wibble * rng.uniform(seed, f"{stream}/{tag}", n, shape, -wibble, wibble,
                                    start=start)

    out = torch.zeros(n, 2 * size - 1, 2 * size - 1)
    out[:, 0::2, 0::2] = p
    centre = (p[:, :-1, :-1] + p[:, 1:, :-1] + p[:, :-1, 1:] + p[:, 1:, 1:]) / 4
    centre = centre + noise("square", centre.shape[1:])
    out[:, 1::2, 1::2] = centre
    padded = F.pad(centre, (0, 0, 1, 1))  # centres above/below each even row
    d1 = padded[:, :-1] + padded[:, 1:] + p[:, :, :-1] + p[:, :, 1:]
    out[:, 0::2, 1::2] = d1 / 4 + noise("diamond1", d1.shape[1:])
    padded = F.pad(centre, (1, 1, 0, 0))  # centres left/right of each even column
    d2 = padded[:, :, :-1] + padded[:, :, 1:] + p[:, :-1, :] + p[:, 1:, :]
    out[:, 1::2, 0::2] = d2 / 4 + noise("diamond2", d2.shape[1:])
    return out
