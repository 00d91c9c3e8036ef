"""Turn what a user has (a name, tensors, arrays, DataLoaders) into a :class:`Dataset`."""

from __future__ import annotations

import torch

from workbench.data.dataset import Dataset
from workbench.data.registry import load_dataset
from workbench.errors import DataError


def _from_loader(loader, what: str):
    xs, ys = [], []
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"{what}: each batch must be an (inputs, labels) pair")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
    if not xs:
        raise DataError(f"{what}: the DataLoader yielded no batches")
    return torch.cat(xs), torch.cat(ys)


def as_dataset(data, *, seed: int = 0, name: str = "user") -> Dataset:
    """Accept a :class:`Dataset`, a registered name, ``(x, y)``, a DataLoader, or a dict of
    DataLoaders/pairs keyed ``train``/``val``/``test`` (``val`` optional).

    Examples
    --------
    >>> import torch
    >>> ds = as_dataset((torch.rand(40, 3), torch.arange(40) % 2))
    >>> ds.input_shape
    (3,)
    """
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load_dataset(data, seed=seed)
    if isinstance(data, torch.utils.data.DataLoader):
        x, y = _from_loader(data, "data")
        return Dataset.from_tensors(x, y, name=name, seed=seed)
    if isinstance(data, dict):
        missing = {"train", "test"} - set(data)
        if missing:
            raise DataError(f"a dict of splits needs keys 'train' and 'test' (missing {sorted(missing)})")
        parts = {}
        for key, part in data.items():
            if isinstance(part, torch.utils.data.DataLoader):
                parts[key] = _from_loader(part, f"data[{key!r}]")
            else:
                parts[key] = tuple(torch.as_tensor(t) for t in part)
        x_tr, y_tr = parts["train"]
        x_te, y_te = parts["test"]
        x_va, y_va = parts.get("val", (x_te[:0], y_te[:0]))
        n_classes = int(max(y_tr.max(), y_te.max())) + 1
        return Dataset(name, x_tr.float(), y_tr.long(), x_va.float(), y_va.long(), x_te.float(),
                       y_te.long(), tuple(str(c) for c in range(n_classes)))
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return Dataset.from_tensors(data[0], data[1], name=name, seed=seed)
    raise DataError(
        f"cannot use {type(data).__name__} as data: pass a dataset name ({'digits'!r}, …), "
        "a workbench Dataset, an (inputs, labels) pair, a DataLoader, or a dict of splits"
    )
