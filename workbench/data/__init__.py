"""Datasets: the embedded digits, synthetic 2-D sets, MNIST/Fashion-MNIST/CIFAR-10 readers."""

from workbench.data.dataset import Dataset, split_indices, stratified_indices
from workbench.data.registry import DATASETS, load_dataset, register_dataset
from workbench.data import digits as _digits  # noqa: F401  (registers "digits")

__all__ = ["Dataset", "DATASETS", "load_dataset", "register_dataset", "split_indices",
           "stratified_indices"]
