"""Synthetic 2-D point sets (two moons, k-arm spirals): decision boundaries you can plot."""

from __future__ import annotations

import numpy as np

from workbench.data.dataset import Dataset
from workbench.data.registry import register_dataset
from workbench.errors import ParameterError


def _check(n_samples: int, noise: float, n_classes: int = 2) -> None:
    if int(n_samples) < 3 * n_classes:
        raise ParameterError(f"n_samples must be at least {3 * n_classes}, got {n_samples}")
    if not noise >= 0:
        raise ParameterError(f"noise must be >= 0, got {noise}")


@register_dataset("moons")
def moons(seed: int = 0, n_samples: int = 1000, noise: float = 0.2,
          fractions=(0.6, 0.2, 0.2)) -> Dataset:
    """Two interleaving half circles (scikit-learn's ``make_moons``) as ``(n, 2)`` points.

    Examples
    --------
    >>> ds = moons(n_samples=300, noise=0.1)
    >>> ds.input_shape, ds.classes
    ((2,), ('0', '1'))
    """
    from sklearn.datasets import make_moons

    _check(n_samples, noise)
    x, y = make_moons(n_samples=int(n_samples), noise=float(noise), random_state=seed)
    return Dataset.from_tensors(
        x.astype(np.float32), y, name="moons", classes=["0", "1"], fractions=fractions,
        seed=seed, source=f"sklearn.datasets.make_moons(noise={noise})",
    )


def spiral_points(n_samples: int, n_classes: int = 3, noise: float = 0.2, turns: float = 1.0,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_classes`` interleaved spiral arms: points ``(n, 2)`` float32 and labels ``(n,)``.

    Arm ``k`` is ``r·(cos θ, sin θ)`` with radius ``r`` in [0, 1] and angle
    ``θ = 2π·turns·r + 2πk/n_classes``; Gaussian noise of standard deviation ``noise/10``
    jitters each point.

    Examples
    --------
    >>> x, y = spiral_points(90, n_classes=3, noise=0.0)
    >>> x.shape, np.bincount(y).tolist()
    ((90, 2), [30, 30, 30])
    """
    rng = np.random.default_rng(seed)
    y = np.arange(int(n_samples)) % n_classes
    r = rng.uniform(0.05, 1.0, size=len(y))
    theta = 2 * np.pi * (turns * r + y / n_classes)
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    x += rng.normal(scale=noise / 10, size=x.shape)
    return x.astype(np.float32), y


@register_dataset("spirals")
def spirals(seed: int = 0, n_samples: int = 1500, n_classes: int = 3, noise: float = 0.2,
            turns: float = 1.0, fractions=(0.6, 0.2, 0.2)) -> Dataset:
    """``n_classes`` interleaved spiral arms as ``(n, 2)`` points (see :func:`spiral_points`).

    Examples
    --------
    >>> ds = spirals(n_samples=300, n_classes=4)
    >>> ds.input_shape, ds.num_classes
    ((2,), 4)
    """
    if int(n_classes) < 2:
        raise ParameterError(f"spirals needs n_classes >= 2, got {n_classes}")
    _check(n_samples, noise, int(n_classes))
    x, y = spiral_points(n_samples, int(n_classes), noise, turns, seed)
    return Dataset.from_tensors(
        x, y, name="spirals", classes=[str(c) for c in range(int(n_classes))],
        fractions=fractions, seed=seed,
        source=f"{n_classes}-arm spirals (noise={noise}, turns={turns})",
    )
