"""Turn the official splits a file reader found into a train/val/test :class:`Dataset`."""

from __future__ import annotations

import torch

from workbench.data.dataset import Dataset, split_indices, stratified_indices
from workbench.errors import DataError


def assemble(name: str, parts: dict, classes, *, source: str, meta: dict, seed: int = 0,
             fractions=(0.7, 0.1, 0.2), val_fraction: float = 0.1) -> Dataset:
    """Build a :class:`Dataset` from ``parts = {"train": (x, y), "test": (x, y)}``.

    With both parts, ``test`` stays the test split and a class-stratified ``val_fraction`` of
    ``train`` becomes the validation split. With only one part, it is split by ``fractions``
    (train, val, test), stratified by class. Either way the split is deterministic in ``seed``
    and described in ``meta["split"]``.

    Examples
    --------
    >>> import torch
    >>> x, y = torch.rand(100, 2), torch.arange(100) % 2
    >>> ds = assemble("toy", {"test": (x, y)}, ["a", "b"], source="", meta={})
    >>> len(ds.x_train), len(ds.x_val), len(ds.x_test)
    (70, 10, 20)
    >>> ds.meta["split"][:58]
    'only the test part was found: its 100 samples are split 0.'
    """
    classes = tuple(classes)
    meta = dict(meta)
    if "train" in parts and "test" in parts:
        if not 0 <= val_fraction < 1:
            raise DataError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        (x_tr, y_tr), (x_te, y_te) = parts["train"], parts["test"]
        val = stratified_indices(y_tr, int(round(val_fraction * len(y_tr))), seed)
        keep = torch.ones(len(y_tr), dtype=torch.bool)
        keep[val] = False
        meta["split"] = (f"official train and test parts; val is a class-stratified "
                         f"{val_fraction:g} of the train part (seed {seed})")
        return Dataset(name, x_tr[keep], y_tr[keep], x_tr[val], y_tr[val], x_te, y_te, classes,
                       source, meta)
    (only, (x, y)), = parts.items()
    tr, va, te = split_indices(y, tuple(fractions), seed)
    meta["split"] = (f"only the {only} part was found: its {len(y):,} samples are split "
                     f"{'/'.join(f'{f:g}' for f in fractions)} into train/val/test, stratified "
                     f"by class (seed {seed})")
    return Dataset(name, x[tr], y[tr], x[va], y[va], x[te], y[te], classes, source, meta)
