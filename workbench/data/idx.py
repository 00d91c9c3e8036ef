"""MNIST and Fashion-MNIST from their standard IDX files (plain or gzipped), in any directory.

The IDX format (http://yann.lecun.com/exdb/mnist/) is a 4-byte magic number — two zero bytes,
a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64) and the number of dimensions — then each dimension as a big-endian int32, then
the values in big-endian C order. Images are ``0x00000803`` (n, rows, cols) and labels
``0x00000801`` (n,).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from workbench.data.assemble import assemble
from workbench.data.dataset import Dataset, stratified_indices
from workbench.data.registry import register_dataset
from workbench.errors import DataError

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

KINDS = {
    "mnist": {"folder": "MNIST", "classes": tuple(str(c) for c in range(10))},
    "fashion_mnist": {
        "folder": "FashionMNIST",
        "classes": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                    "Sneaker", "Bag", "Ankle boot"),
    },
}


def _file_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    if raw[:2] != b"\x1f\x8b":  # not gzip, whatever the file name says
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(f"{path}: the gzip stream ends early (the download is truncated); "
                        "download the file again") from None
    except (OSError, zlib.error) as err:
        raise DataError(f"{path}: damaged gzip data ({err}); download the file again") from None


def read_idx(path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a NumPy array in native byte order.

    Every inconsistency — bad magic number, unknown type byte, fewer bytes than the header
    promises, bytes after the data — raises :class:`DataError` naming the file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = f.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
    >>> read_idx(f)
    array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    raw = _file_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for an IDX header "
                        "(is the file truncated?)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex()} should start with two "
            "zero bytes, e.g. 0x00000803 for images or 0x00000801 for labels)"
        )
    if raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type byte 0x{raw[2]:02x} (magic 0x{raw[:4].hex()});"
                        f" expected one of {', '.join(f'0x{t:02x}' for t in IDX_DTYPES)}")
    ndim = raw[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions (magic 0x{raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {header} needed for "
                        f"{ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) < expected:
        raise DataError(
            f"{path}: truncated: the header promises shape {dims} ({expected:,} bytes) but the "
            f"file holds {len(raw):,} bytes; download it again"
        )
    if len(raw) > expected:
        raise DataError(
            f"{path}: {len(raw) - expected:,} unexpected bytes after the data of shape {dims} "
            "(trailing garbage, or a wrong header)"
        )
    values = np.frombuffer(raw, dtype, math.prod(dims), header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))  # a writable native-order copy


def _candidates(root: Path, stem: str, folder: str) -> list[Path]:
    # The standard names, Kaggle's "train-images.idx3-ubyte" spelling, and torchvision's
    # <root>/MNIST/raw layout.
    names = [stem, stem.replace("-idx", ".idx")]
    dirs = [root, root / "raw", root / folder / "raw"]
    return [d / f"{n}{gz}" for d in dirs for n in names for gz in (".gz", "")]


def find_idx_files(root, kind: str = "mnist") -> dict[str, tuple[Path, Path]]:
    """The ``(images, labels)`` IDX paths of each split found under ``root``.

    Examples
    --------
    >>> import tempfile
    >>> find_idx_files(tempfile.mkdtemp())
    {}
    """
    root = Path(root)
    found = {}
    for split, stems in FILES.items():
        paths = [next((p for p in _candidates(root, s, KINDS[kind]["folder"]) if p.is_file()),
                      None) for s in stems]
        if paths[0] is None and paths[1] is None:
            continue
        if None in paths:
            have, need = (paths[0], stems[1]) if paths[1] is None else (paths[1], stems[0])
            raise DataError(f"{have} is there but its companion {need}[.gz] is missing from "
                            f"{have.parent}")
        found[split] = tuple(paths)
    return found


def _read_pair(images_path: Path, labels_path: Path, n_classes: int, limit, seed: int):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images (n, rows, cols), IDX magic "
                        f"0x00000803; found {images.dtype} of shape {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path}: expected integer labels (n,), IDX magic 0x00000801; "
                        f"found {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images):,} images but {labels_path} holds "
                        f"{len(labels):,} labels; the two files do not belong together")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{labels_path}: labels must lie in 0..{n_classes - 1}, found "
                        f"{labels.min()}..{labels.max()}")
    y = torch.from_numpy(labels.astype(np.int64))
    if limit is not None and limit < len(y):
        idx = stratified_indices(y, int(limit), seed).numpy()
        images, y = images[idx], y[idx]
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    return x, y


def _missing_message(root: Path, kind: str) -> str:
    names = ", ".join(f"{s}[.gz]" for stems in FILES.values() for s in stems)
    return (f"expected the IDX files {names} in {root} (or {root}/{KINDS[kind]['folder']}/raw); "
            f"get them with workbench.data.download({kind!r}, {str(root)!r})")


def mnist(root=None, seed: int = 0, fractions=(0.7, 0.1, 0.2), val_fraction: float = 0.1,
          limit: int | None = None, kind: str = "mnist") -> Dataset:
    """MNIST (or Fashion-MNIST) from the IDX files in ``root`` as ``(n, 1, 28, 28)`` images.

    With both the training and the test files, the test split is the official t10k split and a
    stratified ``val_fraction`` of the training file is held out for validation. With only one
    of them (for example only the 10,000-image t10k split), that split is divided by
    ``fractions`` (train, val, test; default 0.7/0.1/0.2), stratified by class and
    deterministic in ``seed``, and ``Dataset.meta["split"]`` says so.

    Parameters
    ----------
    root : str or Path
        Directory holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` (or torchvision's
        ``<root>/MNIST/raw``).
    limit : int, optional
        Read at most this many images from each file, a class-stratified subset (by ``seed``).
    kind : {"mnist", "fashion_mnist"}
        Only sets the class names and the dataset name; the file format is the same.

    Examples
    --------
    >>> ds = mnist("/work/shared/datasets/mnist", limit=1000)  # doctest: +SKIP
    >>> ds.input_shape, len(ds.x_train) + len(ds.x_val) + len(ds.x_test)  # doctest: +SKIP
    ((1, 28, 28), 1000)
    """
    if kind not in KINDS:
        raise DataError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if root is None:
        raise DataError(f"dataset {kind!r} needs root=, the directory holding its IDX files; "
                        + _missing_message(Path("<root>"), kind))
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such directory; " + _missing_message(root, kind))
    found = find_idx_files(root, kind)
    if not found:
        raise DataError(f"{root}: no {kind} IDX files found; " + _missing_message(root, kind))
    if limit is not None and int(limit) < 10:
        raise DataError(f"limit must be at least 10 images, got {limit}")
    classes = KINDS[kind]["classes"]
    parts = {s: _read_pair(*paths, len(classes), limit, seed) for s, paths in found.items()}
    meta = {"files": {s: [str(p) for p in paths] for s, paths in found.items()}, "limit": limit}
    return assemble(kind, parts, classes, source=str(root), meta=meta, seed=seed,
                    fractions=fractions, val_fraction=val_fraction)


@register_dataset("mnist")
def _mnist(root=None, seed: int = 0, fractions=(0.7, 0.1, 0.2), val_fraction: float = 0.1,
           limit: int | None = None) -> Dataset:
    """Handwritten digits 0–9; see :func:`mnist`."""
    return mnist(root, seed, fractions, val_fraction, limit, kind="mnist")


@register_dataset("fashion_mnist")
def fashion_mnist(root=None, seed: int = 0, fractions=(0.7, 0.1, 0.2), val_fraction: float = 0.1,
                  limit: int | None = None) -> Dataset:
    """Zalando's Fashion-MNIST clothing images (same IDX files as MNIST); see :func:`mnist`."""
    return mnist(root, seed, fractions, val_fraction, limit, kind="fashion_mnist")
