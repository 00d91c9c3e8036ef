"""Datasets: the embedded digits, synthetic 2-D sets, MNIST/Fashion-MNIST/CIFAR-10 readers."""

from workbench.data.dataset import Dataset, split_indices, stratified_indices
from workbench.data.registry import DATASETS, load_dataset, register_dataset
from workbench.data import digits as _digits  # noqa: F401  (registers "digits")
from workbench.data import synthetic as _synthetic  # noqa: F401  ("moons", "spirals")
from workbench.data import idx as _idx  # noqa: F401  ("mnist", "fashion_mnist")
from workbench.data import cifar as _cifar  # noqa: F401  ("cifar10")
from workbench.data.download import download

__all__ = ["Dataset", "DATASETS", "download", "load_dataset", "register_dataset", "split_indices",
           "stratified_indices"]
