"""CIFAR-10 from its Python batches, read without ever executing pickled code.

The batches (``data_batch_1`` … ``data_batch_5``, ``test_batch``, ``batches.meta``) are pickles;
:func:`workbench.safe_pickle.safe_load` rebuilds their dicts and NumPy arrays and refuses any
file that names anything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workbench.data.assemble import assemble
from workbench.data.dataset import Dataset, stratified_indices
from workbench.data.registry import register_dataset
from workbench.errors import DataError
from workbench.safe_pickle import safe_load

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"


def _get(d: dict, key: str, path: Path):
    for k in (key.encode(), key):  # the official files use bytes keys; re-pickled ones str
        if k in d:
            return d[k]
    raise DataError(f"{path}: no {key!r} entry (found keys {sorted(map(repr, d))[:6]}); "
                    "is this a CIFAR-10 python batch?")


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file as ``(uint8 images (n, 3, 32, 32), int64 labels (n,))``.

    Examples
    --------
    >>> import pickle, tempfile, pathlib, numpy as np
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "data_batch_1"
    >>> batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 5]}
    >>> _ = f.write_bytes(pickle.dumps(batch, protocol=2))
    >>> x, y = read_batch(f)
    >>> x.shape, y.tolist()
    ((2, 3, 32, 32), [3, 5])
    """
    path = Path(path)
    d = safe_load(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got "
                        f"{type(d).__name__}")
    data, labels = np.asarray(_get(d, "data", path)), np.asarray(_get(d, "labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 of shape (n, 3072), found {data.dtype} "
                        f"{data.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DataError(f"{path}: 'labels' must be {len(data)} integers, found {labels.dtype} "
                        f"{labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _class_names(folder: Path) -> tuple[str, ...]:
    path = folder / META
    if not path.is_file():
        return ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck")
    d = safe_load(path)
    names = _get(d, "label_names", path) if isinstance(d, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) < 2:
        raise DataError(f"{path}: 'label_names' must be a list of class names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _to_tensors(parts, limit, seed):
    x = np.concatenate([p[0] for p in parts])
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if limit is not None and limit < len(y):
        idx = stratified_indices(y, int(limit), seed)
        x, y = x[idx.numpy()], y[idx]
    return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0), y


def cifar10(root=None, seed: int = 0, fractions=(0.7, 0.1, 0.2), val_fraction: float = 0.1,
            limit: int | None = None) -> Dataset:
    """CIFAR-10 as ``(n, 3, 32, 32)`` images in [0, 1] from the python batches in ``root``.

    ``root`` is the ``cifar-10-batches-py`` folder or its parent. The training batches present
    form train (minus a stratified ``val_fraction`` for validation) and ``test_batch`` the test
    split; if only one of the two is there it is split by ``fractions`` (noted in
    ``Dataset.meta["split"]``). ``limit`` caps the images read from each of the two, stratified;
    without it the 60,000 float32 images take about 740 MB of memory.

    Examples
    --------
    >>> ds = cifar10("~/data/cifar10", limit=2000)  # doctest: +SKIP
    >>> ds.input_shape, ds.classes[:3]  # doctest: +SKIP
    ((3, 32, 32), ('airplane', 'automobile', 'bird'))
    """
    hint = ("expected the CIFAR-10 python batches data_batch_1..5, test_batch and batches.meta "
            f"(in a {FOLDER} folder or directly in root); get them with "
            f"workbench.data.download('cifar10', {str(root)!r})")
    if root is None:
        raise DataError("dataset 'cifar10' needs root=, the directory holding its batches; "
                        + hint)
    root = Path(root).expanduser()
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    if not folder.is_dir():
        raise DataError(f"{root}: no such directory; {hint}")
    train_files = [folder / n for n in TRAIN_BATCHES if (folder / n).is_file()]
    test_files = [folder / TEST_BATCH] if (folder / TEST_BATCH).is_file() else []
    if not train_files and not test_files:
        raise DataError(f"{folder}: no CIFAR-10 batches found; {hint}")
    if limit is not None and int(limit) < 10:
        raise DataError(f"limit must be at least 10 images, got {limit}")
    classes = _class_names(folder)
    meta = {"files": [str(p) for p in train_files + test_files], "limit": limit}
    tensors = {split: _to_tensors([read_batch(p) for p in files], limit, seed)
               for split, files in (("train", train_files), ("test", test_files)) if files}
    for split, (_, y) in tensors.items():
        if len(y) and int(y.max()) >= len(classes):
            raise DataError(f"{folder}: {split} label {int(y.max())} but {folder / META} names "
                            f"only {len(classes)} classes")
    return assemble("cifar10", tensors, classes, source=str(folder), meta=meta, seed=seed,
                    fractions=fractions, val_fraction=val_fraction)


register_dataset("cifar10")(cifar10)
