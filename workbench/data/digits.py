"""scikit-learn's 8×8 digits: the embedded default data set (1,797 images, no download)."""

from __future__ import annotations

import numpy as np

from workbench.data.dataset import Dataset
from workbench.data.registry import register_dataset


@register_dataset("digits")
def digits(seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> Dataset:
    """The digits data as ``(n, 1, 8, 8)`` images in [0, 1], split by ``seed``.

    Examples
    --------
    >>> ds = digits()
    >>> len(ds.x_train) + len(ds.x_val) + len(ds.x_test)
    1797
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    return Dataset.from_tensors(
        x, bunch.target, name="digits", classes=[str(c) for c in range(10)],
        fractions=fractions, seed=seed, source="sklearn.datasets.load_digits",
    )
