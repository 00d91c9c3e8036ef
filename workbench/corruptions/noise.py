"""Noise corruptions: Gaussian, shot (Poisson) and impulse (salt-and-pepper) noise."""

from __future__ import annotations

import torch

from workbench.corruptions import rng
from workbench.corruptions.base import register_corruption, table

MNIST_C = "Mu & Gilmer 2019, MNIST-C (google-research/mnist-c corruptions.py)"
CIFAR_C = "Hendrycks & Dietterich 2019, CIFAR-10-C (hendrycks/robustness make_cifar_c.py)"

GAUSSIAN = {"rgb": [0.04, 0.06, 0.08, 0.09, 0.10]}
SHOT = {"gray": [60, 25, 12, 5, 3], "rgb": [500, 250, 100, 75, 50]}
IMPULSE = {"gray": [0.03, 0.06, 0.09, 0.17, 0.27], "rgb": [0.01, 0.02, 0.03, 0.05, 0.07]}


@register_corruption("gaussian_noise", family="noise", channels="rgb", reference=CIFAR_C,
                     params=GAUSSIAN)
def gaussian_noise(x, severity, *, seed=0):
    """Additive Gaussian noise ``clip(x + N(0, σ²))`` per pixel and channel.

    Severity σ (rgb, CIFAR-10-C): 0.04, 0.06, 0.08, 0.09, 0.10.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> x = torch.full((2, 3, 8, 8), 0.5)
    >>> y = CORRUPTIONS["gaussian_noise"](x, 5, seed=0)
    >>> round(float((y - x).std()), 2)
    0.1
    """
    sigma = table(GAUSSIAN, x, severity)
    return x + rng.normal(seed, "gaussian_noise", len(x), x.shape[1:], std=sigma)


@register_corruption("shot_noise", family="noise", channels="both",
                     reference=f"{MNIST_C}; {CIFAR_C}", params=SHOT)
def shot_noise(x, severity, *, seed=0):
    """Poisson (photon) noise ``clip(Poisson(x·λ) / λ)``.

    Severity λ: gray (MNIST-C) 60, 25, 12, 5, 3; rgb (CIFAR-10-C) 500, 250, 100, 75, 50.
    Poisson draws are exact (:func:`workbench.corruptions.rng.poisson`).

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["shot_noise"](torch.zeros(1, 1, 4, 4), 5)
    >>> float(y.abs().max())  # black stays black: Poisson(0) = 0
    0.0
    """
    lam = float(table(SHOT, x, severity))
    return rng.poisson(x * lam, seed, "shot_noise") / lam


@register_corruption("impulse_noise", family="noise", channels="both",
                     reference=f"{MNIST_C}; {CIFAR_C}", params=IMPULSE)
def impulse_noise(x, severity, *, seed=0):
    """Salt-and-pepper noise (skimage ``random_noise(mode="s&p")``): each pixel and channel is
    replaced with probability ``amount`` by 0 or 1 (equally likely).

    Severity amount: gray (MNIST-C) 0.03, 0.06, 0.09, 0.17, 0.27; rgb (CIFAR-10-C) 0.01, 0.02,
    0.03, 0.05, 0.07.

    Examples
    --------
    >>> import torch
    >>> from workbench.corruptions import CORRUPTIONS
    >>> y = CORRUPTIONS["impulse_noise"](torch.full((4, 1, 28, 28), 0.5), 5)
    >>> round(float((y != 0.5).float().mean()), 1)
    0.3
    """
    amount = table(IMPULSE, x, severity)
    flip = rng.uniform(seed, "impulse_noise/flip", len(x), x.shape[1:]) < amount
    salt = rng.uniform(seed, "impulse_noise/salt", len(x), x.shape[1:]) < 0.5
    return torch.where(flip, salt.to(x.dtype), x)
