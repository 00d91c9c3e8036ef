"""Registry of named datasets: ``load_dataset("digits")``."""

from __future__ import annotations

from workbench.registry import Registry

DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register


def load_dataset(name: str, **params):
    """Load a registered dataset by name (``workbench.data.DATASETS.names()`` lists them).

    Examples
    --------
    >>> ds = load_dataset("digits", seed=0)
    >>> ds.input_shape, ds.num_classes
    ((1, 8, 8), 10)
    """
    return DATASETS[name](**params)
