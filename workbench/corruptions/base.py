"""The shared contract of every corruption, its registry and the input checks.

A corruption is a function registered with :func:`register_corruption`::

    fn(x, severity, *, seed=0) -> Tensor

``x`` is a float tensor shaped ``(n, C, H, W)`` with values in [0, 1]; the result has the same
shape and dtype, values in [0, 1], and depends only on ``x``, ``severity`` (1..5) and ``seed``.
The registry entry (:class:`CorruptionInfo`) checks the input and the severity before calling the
function, so every corruption raises the same clear errors:
:class:`~workbench.errors.ParameterError` for a severity outside 1..5 and
:class:`~workbench.errors.DataError` for anything that is not a batch of images in [0, 1] with a
channel count the corruption supports.

Channels select the parameter table: shared names (``shot_noise``, ``brightness``, ``fog``, …)
use the MNIST-C table (Mu & Gilmer 2019, defined on 28×28) for one channel and the CIFAR-10-C
table (Hendrycks & Dietterich 2019, ``make_cifar_c.py``, defined on 32×32) for three. Spatial
parameters (blur sigmas, radii, shifts in pixels) are scaled by ``min(H, W) / reference size``;
texture layers (fog, spatter, snow, frost, lines) are drawn at the reference size and resized to
the image, so an 8×8 digit sees the same corruption as a downsampled 28×28 one.

Randomness: every random draw comes from :mod:`workbench.corruptions.rng`, a counter-based hash
of ``(seed, stream, sample position, element)``. Sample ``i`` of a batch therefore gets the same
corruption whatever the batch size (``fn(x[:k]) == fn(x)[:k]``), but its noise *does* depend on
its position ``i`` in the batch: the same image at position 0 and at position 5 is corrupted
differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from workbench.errors import DataError, ParameterError
from workbench.registry import Registry

FAMILIES = ("noise", "blur", "weather", "digital", "geometric")
CHANNELS = ("gray", "rgb", "both")
KINDS = ("gray", "rgb", "all")
SEVERITIES = (1, 2, 3, 4, 5)
#: Size (pixels) the parameter tables were written for: MNIST-C (gray) and CIFAR-10-C (rgb).
REFERENCE_SIZE = {"gray": 28, "rgb": 32}
#: Values slightly outside [0, 1] (float round-off of upstream transforms) are accepted.
RANGE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CorruptionInfo:
    """Registry entry: the function plus what the UI and the contract tests need to know.

    Attributes
    ----------
    name : str
    fn : callable
        ``fn(x, severity, *, seed=0)``, called with a checked float32 batch.
    family : str
        One of ``noise``, ``blur``, ``weather``, ``digital``, ``geometric``.
    channels : str
        ``gray`` (1 channel only), ``rgb`` (3 channels only) or ``both``.
    reference : str
        The benchmark the parameters come from.
    params : dict
        ``"gray"`` / ``"rgb"`` → the five severity parameters (at the reference size).
    not_monotone : tuple of str
        Kinds (``"gray"``, ``"rgb"``) for which the reference parameters do *not* make the mean
        pixel change grow with severity (the benchmark orders severities by the error they
        cause, not by pixel change); the docstring says why. Empty for most corruptions.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    family: str
    channels: str
    reference: str
    params: dict = field(default_factory=dict)
    not_monotone: tuple = ()

    def supports(self, channels: int) -> bool:
        """True if the corruption accepts images with ``channels`` channels."""
        return (channels == 1 and self.channels in ("gray", "both")) or \
            (channels == 3 and self.channels in ("rgb", "both"))

    def __call__(self, x, severity: int, *, seed: int = 0) -> torch.Tensor:
        x, dtype = check_images(x, self)
        severity = check_severity(severity)
        seed = check_seed(seed)
        out = self.fn(x, severity, seed=seed)
        return out.clamp_(0.0, 1.0).to(dtype)


CORRUPTIONS: Registry[CorruptionInfo] = Registry("corruption")


def register_corruption(name: str, *, family: str, channels: str, reference: str,
                        params: dict | None = None, not_monotone: tuple = ()):
    """Register a corruption function under ``name`` (see the module docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")

    def add(fn):
        CORRUPTIONS.register(name)(CorruptionInfo(name, fn, family, channels, reference,
                                                  dict(params or {}), tuple(not_monotone)))
        return fn

    return add


def corruption_names(kind: str = "all") -> list[str]:
    """Registered corruptions that accept ``kind`` images (``"gray"``, ``"rgb"`` or ``"all"``).

    ``"gray"`` lists the 15 MNIST-C corruptions, ``"rgb"`` the 15 of CIFAR-10-C / ImageNet-C.

    Examples
    --------
    >>> import workbench.corruptions
    >>> len(corruption_names("gray")), len(corruption_names("rgb"))
    (15, 15)
    >>> "shot_noise" in corruption_names("gray") and "shot_noise" in corruption_names("rgb")
    True
    """
    if kind not in KINDS:
        raise ParameterError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "all":
        return CORRUPTIONS.names()
    return [n for n, info in CORRUPTIONS.items() if info.channels in (kind, "both")]


def check_severity(severity) -> int:
    """``severity`` as an int in 1..5, or a clear :class:`ParameterError`."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
            or not 1 <= int(severity) <= 5:
        raise ParameterError(f"severity must be an integer from 1 to 5, got {severity!r}")
    return int(severity)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_images(x, info: CorruptionInfo | None = None) -> tuple[torch.Tensor, torch.dtype]:
    """``(x as float32, original dtype)`` for a batch ``(n, C, H, W)`` in [0, 1], else DataError."""
    what = f"corruption {info.name!r}" if info else "corruptions"
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} needs a torch.Tensor of images shaped (n, C, H, W), got "
                        f"{type(x).__name__}")
    if x.ndim != 4:
        raise DataError(f"{what} needs images shaped (n, C, H, W), got shape {tuple(x.shape)}"
                        + ("; add a channel axis with x[:, None]" if x.ndim == 3 else ""))
    if not x.dtype.is_floating_point:
        raise DataError(f"{what} needs float images with values in [0, 1], got dtype {x.dtype}; "
                        "divide uint8 images by 255")
    n, c, h, w = x.shape
    if n == 0 or h < 2 or w < 2:
        raise DataError(f"{what} needs at least one image of at least 2×2 pixels, got shape "
                        f"{tuple(x.shape)}")
    if info is not None and not info.supports(c):
        wanted = {"gray": "1 channel", "rgb": "3 channels", "both": "1 or 3 channels"}
        raise DataError(
            f"corruption {info.name!r} supports {info.channels} images "
            f"({wanted[info.channels]}), got {c} channel(s); see "
            "corruption_names('gray' | 'rgb')")
    if info is None and c not in (1, 3):
        raise DataError(f"{what} support 1 (gray) or 3 (rgb) channels, got {c}")
    if not torch.isfinite(x).all():
        raise DataError(f"{what}: the images contain NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise DataError(f"{what} needs values in [0, 1], got [{lo:.3g}, {hi:.3g}]; scale the "
                        "images (and undo any normalisation) first")
    return x.detach().to(torch.float32).clamp(0.0, 1.0), x.dtype


def kind_of(x: torch.Tensor) -> str:
    """``"gray"`` for one channel, ``"rgb"`` for three (checked by the registry entry)."""
    return "gray" if x.shape[1] == 1 else "rgb"


def table(params: dict, x: torch.Tensor, severity: int):
    """The severity's parameters for ``x``'s kind from a ``{"gray": [...], "rgb": [...]}`` table."""
    return params[kind_of(x)][severity - 1]


def spatial_scale(x: torch.Tensor) -> float:
    """``min(H, W) / reference size``: how much to scale pixel-valued parameters."""
    return min(x.shape[-2:]) / REFERENCE_SIZE[kind_of(x)]
