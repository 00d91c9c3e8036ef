"""Common corruptions of images (a registry): MNIST-C for gray digits, CIFAR-10-C for colour.

Every entry of :data:`CORRUPTIONS` is called as ``CORRUPTIONS[name](x, severity, seed=0)`` on a
float batch ``(n, C, H, W)`` in [0, 1] and returns a corrupted batch of the same shape; see
:mod:`workbench.corruptions.base` for the contract, the parameter tables and the seeding rules.

Examples
--------
>>> import torch
>>> from workbench.corruptions import CORRUPTIONS, corruption_names
>>> x = torch.rand(4, 1, 8, 8)
>>> y = CORRUPTIONS["rotate"](x, 3, seed=0)
>>> y.shape == x.shape, "rotate" in corruption_names("gray")
(True, True)
"""

from workbench.corruptions.base import (CORRUPTIONS, REFERENCE_SIZE, SEVERITIES, CorruptionInfo,
                                        corruption_names, register_corruption)
from workbench.corruptions import noise as _noise  # noqa: F401  (importing registers)
from workbench.corruptions import blur as _blur  # noqa: F401
from workbench.corruptions import weather as _weather  # noqa: F401
from workbench.corruptions import digital as _digital  # noqa: F401
from workbench.corruptions import geometric as _geometric  # noqa: F401
from workbench.corruptions import lines as _lines  # noqa: F401
from workbench.corruptions import jpeg as _jpeg  # noqa: F401


def corrupt(x, name: str, severity: int, *, seed: int = 0):
    """Shorthand for ``CORRUPTIONS[name](x, severity, seed=seed)``.

    Examples
    --------
    >>> import torch
    >>> corrupt(torch.zeros(1, 1, 8, 8), "brightness", 5).max().item()
    0.5
    """
    return CORRUPTIONS[name](x, severity, seed=seed)


__all__ = ["CORRUPTIONS", "CorruptionInfo", "REFERENCE_SIZE", "SEVERITIES", "corrupt",
           "corruption_names", "register_corruption"]
