"""Line overlays of MNIST-C: dotted lines and zigzags drawn over the digit.

Lines are rendered on MNIST-C's 28×28 grid with its ``line_from_points`` profile
(``clip(log(1 - d / 2.3) + 1, 0, 1)`` for distance ``d`` from the line) and resized to the image.
MNIST-C draws a single line and has no severity; here severity ``k`` draws ``k`` lines, the first
``k - 1`` being exactly those of severity ``k - 1`` (so the change grows with severity) and
severity 1 being MNIST-C's corruption.
"""

from __future__ import annotations

import torch

from workbench.corruptions import filters, rng
from workbench.corruptions.base import register_corruption
from workbench.corruptions.noise import MNIST_C

GRID = 28
LINES = {"gray": [1, 2, 3, 4, 5]}


def line_from_points(c0, r0, c1, r1) -> torch.Tensor:
    """MNIST-C's ``line_from_points`` for a batch of segments (tensors ``(n,)``) → ``(n, 28, 28)``.

    Intensity falls off with the vertical distance to the line through ``(c0, r0)`` and
    ``(c1, r1)`` and is cut to columns ``floor(c0) ≤ col < ceil(c1)``; vertical segments
    (``c0 == c1``) draw nothing, as in the reference.
    """
    c0, r0, c1, r1 = (torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1)
                      for v in (c0, r0, c1, r1))
    grid = torch.arange(GRID, dtype=torch.float32)
    cc, rr = grid.view(1, 1, GRID), grid.view(1, GRID, 1)
    vertical = c1 == c0
    slope = (r1 - r0) / torch.where(vertical, torch.ones_like(c1), c1 - c0)
    dist = (rr - (slope * (cc - c0) + r0)).abs().clamp(0, 2.3 - 1e-10)
    out = (torch.log(1 - dist / 2.3) + 1).clamp(0, 1)
    inside = (cc >= torch.floor(c0)) & (cc < torch.ceil(c1))
    return torch.where(inside & ~vertical, out, torch.zeros_like(out))


def _overlay(x: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    layer = filters.resize(layer.clamp(0, 1)[:, None].float(), tuple(x.shape[-2:]))
    return x + layer


def dotted(n: int, seed: int, streams: list[str]) -> torch.Tensor:
    """MNIST-C dotted lines, one per stream and sample (all drawn in one batch), summed: each
    joins ``(0, r0)`` and ``(27, r1)`` and is dashed every other 2 columns."""
    r = torch.stack([rng.randint(seed, st, n, (2,), 0, 27) for st in streams], 1).float()
    k = len(streams)
    lines = line_from_points(torch.zeros(n * k), r[..., 0].reshape(-1),
                             torch.full((n * k,), 27.0), r[..., 1].reshape(-1))
    off = (torch.arange(GRID) // 2) % 2 == 0
    lines[..., off] = 0
    return lines.view(n, k, GRID, GRID).sum(1)


@register_corruption("dotted_line", family="digital", channels="gray", reference=(
    f"{MNIST_C}; severity = number of lines"), params=LINES)
def dotted_line(x, severity, *, seed=0):
    """``severity`` dotted lines from the left to the right edge at random heights.

    Each line joins ``(0, r0)`` and ``(27, r1)`` with ``r0, r1`` uniform in 0..26 (MNIST-C) and
    is dashed in 2-column steps. Severity 1–5 draws 1–5 nested lines.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.zeros(8, 1, 28, 28)
    >>> a, b = (float(CORRUPTIONS["dotted_line"](x, s).sum()) for s in (1, 2))
    >>> 0 < a < b
    True
    """
    layer = dotted(len(x), seed, [f"dotted_line/{k}" for k in range(severity)])
    return _overlay(x, layer)


def zigzag_points(n: int, seed: int, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices ``(cols, rows)``, each ``(n, points)``, of one MNIST-C zigzag per sample
    (``a = b = 2``, from column 2 to 25, tilted at random)."""
    a, b, c0, c1 = 2.0, 2.0, 2.0, 25.0
    r0 = rng.randint(seed, stream + "/r0", n, (), 0, 27).double()
    r1 = r0 + rng.randint(seed, stream + "/r1", n, (), -5, 5).double()
    theta = torch.atan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / torch.cos(theta)
    counts = torch.div(d - a, 2 * a, rounding_mode="floor").long() + 1
    count = int(counts[0])
    if not bool((counts == count).all()):  # impossible for these constants; kept as a guard
        raise AssertionError("zigzag segment counts differ within the batch")
    cols = [torch.zeros(n, dtype=torch.float64)]
    rows = [torch.zeros(n, dtype=torch.float64)]
    for i in range(count):
        cols.append(torch.full((n,), (2 * i + 1) * a, dtype=torch.float64))
        rows.append(torch.full((n,), (-1) ** i * b, dtype=torch.float64))
    last_r = (-1) ** (count - 1) * b
    max_c = 2 * a * torch.div(d, 2 * a, rounding_mode="floor")
    end = d != max_c
    cols.append(torch.where(end, d, cols[-1]))
    rows.append(torch.where(end, last_r / (2 * (d - max_c)).where(end, torch.ones_like(d)),
                            rows[-1]))
    cs, rs = torch.stack(cols, 1), torch.stack(rows, 1)  # (n, points)
    cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    return cs * cos - rs * sin + c0, cs * sin + rs * cos + r0[:, None]


@register_corruption("zigzag", family="digital", channels="gray", reference=(
    f"{MNIST_C}; severity = number of zigzags"), params=LINES)
def zigzag(x, severity, *, seed=0):
    """``severity`` zigzag lines across the digit (MNIST-C's ``zigzag``, nested per severity).

    Each zigzag runs from column 2 to 25 starting at a random row ``r0`` in 0..26 and tilted
    towards ``r0 + U{-5..4}``, with 2-pixel legs of ±2 pixels.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["zigzag"](torch.zeros(4, 1, 28, 28), 1)
    >>> bool((y.flatten(1).amax(1) > 0.5).all())  # every image gets a line
    True
    """
    layer = torch.zeros(len(x), GRID, GRID)
    for k in range(severity):
        cs, rs = zigzag_points(len(x), seed, f"zigzag/{k}")
        for i in range(1, cs.shape[1]):
            layer += line_from_points(cs[:, i - 1], rs[:, i - 1], cs[:, i], rs[:, i])
    return _overlay(x, layer)


__all__ = ["dotted_line", "zigzag", "line_from_points"]
