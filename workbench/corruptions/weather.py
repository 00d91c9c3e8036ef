"""Weather corruptions: fog, snow, frost, spatter and brightness.

Texture layers are drawn at the reference size of the parameter table (28×28 for gray / MNIST-C,
32×32 for rgb / CIFAR-10-C) and resized to the image, so their structure scales with the image.
"""

from __future__ import annotations

import torch

from workbench.corruptions import filters, rng
from workbench.corruptions.base import REFERENCE_SIZE, kind_of, register_corruption, table
from workbench.corruptions.noise import CIFAR_C, MNIST_C

FOG = {"gray": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
       "rgb": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)]}
#: Diamond–square map size of the references (MNIST-C crops 28×28 from 256², CIFAR-10-C 32²).
FOG_MAPSIZE = {"gray": 256, "rgb": 32}
SNOW = {"rgb": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)]}
FROST = {"rgb": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)]}
#: MNIST-C's five spatter settings ordered by measured strength (MNIST-C uses only one of them,
#: its 4th, which is severity 2 here; in MNIST-C's order the pixel change is not monotone).
SPATTER = {"gray": [(0.65, 0.3, 4, 0.69, 0.6), (0.65, 0.3, 1, 0.65, 1.5),
                    (0.65, 0.3, 3, 0.68, 0.6), (0.67, 0.4, 1, 0.65, 1.5),
                    (0.65, 0.3, 2, 0.68, 0.5)]}
BRIGHTNESS = {"gray": [0.1, 0.2, 0.3, 0.4, 0.5], "rgb": [0.05, 0.1, 0.15, 0.2, 0.3]}
#: Frost tint (ice is slightly blue), applied to the procedural frost texture.
FROST_TINT = (0.86, 0.93, 1.0)


def _layer(x: torch.Tensor, make) -> torch.Tensor:
    """``make(n, size)`` → ``(n, 1 or C, size, size)`` at the reference size, resized to ``x``."""
    size = REFERENCE_SIZE[kind_of(x)]
    return filters.resize(make(len(x), size), tuple(x.shape[-2:]))


@register_corruption("fog", family="weather", channels="both",
                     reference=f"{MNIST_C}; {CIFAR_C}", params=FOG)
def fog(x, severity, *, seed=0):
    """Add a diamond–square plasma fractal and renormalise: ``clip((x + a·F) · m / (m + a))``
    with ``m`` the image maximum.

    Severity ``(a, wibbledecay)``: gray (MNIST-C, 28×28 crop of a 256² map) (1.5, 2), (2, 2),
    (2.5, 1.7), (2.5, 1.5), (3, 1.4); rgb (CIFAR-10-C, 32² map) (0.2, 3), (0.5, 3), (0.75, 2.5),
    (1, 2), (1.5, 1.75). One fractal per image, shared by its channels.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["fog"](torch.ones(2, 1, 8, 8), 1)
    >>> bool((y <= 1).all() and (y < 1).any())
    True
    """
    a, decay = table(FOG, x, severity)
    mapsize = FOG_MAPSIZE[kind_of(x)]

    def make(n, size):
        return filters.plasma_fractal(n, mapsize, decay, seed, "fog", crop=size)[:, None]

    layer = _layer(x, make)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + a * layer) * peak / (peak + a)


@register_corruption("spatter", family="weather", channels="gray", reference=MNIST_C,
                     params=SPATTER)
def spatter(x, severity, *, seed=0):
    """Mud spatter (MNIST-C): blobs of grey value 63/255 where blurred noise crosses a threshold.

    Severity ``(loc, scale, sigma, threshold, mask_sigma)`` at 28×28: (0.65, 0.3, 4, 0.69, 0.6),
    (0.65, 0.3, 1, 0.65, 1.5), (0.65, 0.3, 3, 0.68, 0.6), (0.67, 0.4, 1, 0.65, 1.5),
    (0.65, 0.3, 2, 0.68, 0.5): ``N(loc, scale)`` noise, Gaussian blur ``sigma``, keep > threshold,
    blur the mask by ``mask_sigma``, drop mask values below 0.8. These are MNIST-C's five
    settings reordered by the mean pixel change they cause (MNIST-C's own order is not monotone
    and its benchmark uses only its 4th setting, severity 2 here).

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["spatter"](torch.zeros(16, 1, 28, 28), 5)
    >>> round(float(y.max()), 3)  # mud is 63/255 on a black background
    0.247
    """
    loc, scale, sigma, threshold, mask_sigma = table(SPATTER, x, severity)

    def make(n, size):
        liquid = rng.normal(seed, "spatter", n, (1, size, size), loc, scale)
        liquid = filters.gaussian(liquid, sigma)
        m = filters.gaussian((liquid > threshold).float(), mask_sigma)
        return torch.where(m < 0.8, torch.zeros_like(m), m)

    m = _layer(x, make)
    return x * (1 - m) + (63 / 255) * m


@register_corruption("snow", family="weather", channels="rgb", reference=CIFAR_C, params=SNOW)
def snow(x, severity, *, seed=0):
    """Falling snow: thresholded, zoomed Gaussian flakes, motion-blurred downwards, plus a
    whitened image.

    Severity ``(loc, scale, zoom, threshold, blur_radius, blur_sigma, blend)`` (CIFAR-10-C, 32×32):
    (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4,
    0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8). The snow
    layer (8-bit, as the reference's PNG) uses a motion-blur angle uniform in [-135°, -45°).

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.zeros(4, 3, 32, 32)
    >>> bool((CORRUPTIONS["snow"](x, 5) >= 0.5 * 0.2).all())  # whitened: max(x, 1.5 gray + .5)
    True
    """
    loc, scale, zoom, threshold, radius, sigma, blend = table(SNOW, x, severity)

    def make(n, size):
        flakes = rng.normal(seed, "snow", n, (1, size, size), loc, scale)
        flakes = filters.clipped_zoom(flakes, zoom)
        flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
        flakes = torch.floor(flakes.clamp(0, 1) * 255) / 255
        angles = rng.uniform(seed, "snow/angle", n, (), -135.0, -45.0)
        return filters.motion_blur(flakes, radius, sigma, angles)

    layer = _layer(x, make)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def frost_texture(n: int, size: int, seed: int, stream: str = "frost") -> torch.Tensor:
    """A procedural ice texture ``(n, 3, size, size)`` in [0, 1] (mean ≈ 0.37, std ≈ 0.19).

    Hendrycks' frost corruption blends crops of six frost photographs, which cannot be
    downloaded here. This stand-in mixes a fine diamond–square fractal (the frozen haze) with
    needle-like crystals (sparse bright seeds motion-blurred along two random directions), tinted
    slightly blue. It is a visual approximation, not the reference images.
    """
    mapsize = 1 << max(size - 1, 1).bit_length()
    haze = filters.plasma_fractal(n, mapsize, 1.6, seed, f"{stream}/haze", crop=size)[:, None]
    seeds = (rng.uniform(seed, f"{stream}/seeds", n, (1, size, size)) < 0.06).float()
    needles = torch.zeros_like(seeds)
    for k in range(2):
        angles = rng.uniform(seed, f"{stream}/angle{k}", n, (), 0.0, 360.0)
        needles += filters.motion_blur(seeds, 0.15 * size, 0.08 * size, angles)
    needles = needles / needles.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    tex = (0.6 * haze ** 1.5 + 0.7 * needles.sqrt()).clamp(0, 1)
    tint = torch.tensor(FROST_TINT).view(1, 3, 1, 1)
    return tex * tint


@register_corruption("frost", family="weather", channels="rgb", reference=(
    f"{CIFAR_C}; frost photographs replaced by a procedural texture"), params=FROST,
    not_monotone=("rgb",))
def frost(x, severity, *, seed=0):
    """Blend with a frost texture: ``clip(a·x + b·frost)``.

    Severity ``(a, b)`` (CIFAR-10-C): (1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45).
    The texture is procedural (:func:`frost_texture`) because the reference's frost photographs
    are not available offline; expect different absolute errors than CIFAR-10-C's frost.

    Not monotone in pixel change: from severity 3 on the image is darkened (``a < 1``) while
    frost is added, and the two partly cancel, so the mean pixel change can drop although the
    image is harder to recognise (``CorruptionInfo.not_monotone``).

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["frost"](torch.zeros(2, 3, 32, 32), 3)
    >>> 0.1 < float(y.mean()) < 0.3
    True
    """
    a, b = table(FROST, x, severity)
    texture = _layer(x, lambda n, size: frost_texture(n, size, seed))
    return a * x + b * texture


@register_corruption("brightness", family="weather", channels="both",
                     reference=f"{MNIST_C}; {CIFAR_C}", params=BRIGHTNESS)
def brightness(x, severity, *, seed=0):
    """Raise the HSV value channel by ``c``, keeping hue and saturation.

    Severity ``c``: gray (MNIST-C) 0.1, 0.2, 0.3, 0.4, 0.5; rgb (CIFAR-10-C) 0.05, 0.1, 0.15, 0.2,
    0.3. In closed form (equal to the skimage rgb→hsv→rgb round trip): ``V = max_c x``,
    ``V' = min(V + c, 1)``, ``x' = x · V'/V`` (``V'`` everywhere for black pixels); for gray
    images ``x' = min(x + c, 1)``. Deterministic.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["brightness"](torch.tensor([0.2, 0.8]).repeat(1, 1, 2, 1), 3)
    >>> [round(v, 4) for v in y[0, 0, 0].tolist()]
    [0.5, 1.0]
    """
    c = table(BRIGHTNESS, x, severity)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))
