"""The :class:`Dataset` container every analysis and method receives."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from workbench.errors import DataError


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images (or points) with integer labels, split into train / val / test.

    Inputs are float32 tensors shaped ``(n, *input_shape)`` (images as ``(n, C, H, W)`` with
    values in [0, 1]); labels are int64 tensors in ``range(num_classes)``.

    Examples
    --------
    >>> import torch
    >>> x, y = torch.rand(30, 1, 4, 4), torch.arange(30) % 3
    >>> ds = Dataset.from_tensors(x, y, name="toy", seed=0)
    >>> ds.num_classes, ds.input_shape, len(ds.x_test) > 0
    (3, (1, 4, 4), True)
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for part in ("train", "val", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if len(x) != len(y):
                raise DataError(
                    f"{self._where()}: {part} split has {len(x)} inputs but {len(y)} labels"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise DataError(
                    f"{self._where()}: {part} labels must lie in 0..{len(self.classes) - 1}, "
                    f"found {int(y.min())}..{int(y.max())}"
                )
        if len(self.x_train) == 0:
            raise DataError(f"{self._where()}: the training split is empty")
        if len(torch.unique(self.y_train)) < 2:
            raise DataError(
                f"{self._where()}: the training split holds a single class; "
                "classification needs at least two"
            )

    def _where(self) -> str:
        return f"dataset {self.name!r}" + (f" ({self.source})" if self.source else "")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """A short content hash, used as a cache key and to detect changed data."""
        import hashlib

        h = hashlib.sha256(self.name.encode())
        for t in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def subset(self, n_test: int | None = None, seed: int = 0) -> "Dataset":
        """The same data with a stratified subset of at most ``n_test`` test samples."""
        if n_test is None or n_test >= len(self.y_test):
            return self
        idx = stratified_indices(self.y_test, n_test, seed)
        return Dataset(
            self.name, self.x_train, self.y_train, self.x_val, self.y_val,
            self.x_test[idx], self.y_test[idx], self.classes, self.source, dict(self.meta),
        )

    @classmethod
    def from_tensors(
        cls,
        x,
        y,
        *,
        name: str = "user",
        classes=None,
        fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        source: str = "",
    ) -> "Dataset":
        """Split arrays ``x`` (inputs) and ``y`` (labels) into train/val/test by ``seed``."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        where = f"dataset {name!r}" + (f" ({source})" if source else "")
        if x.ndim < 2:
            raise DataError(f"{where}: inputs must be shaped (n, features...) , got {tuple(x.shape)}")
        if y.ndim != 1:
            raise DataError(f"{where}: labels must be a 1-D vector, got shape {tuple(y.shape)}")
        if len(x) != len(y):
            raise DataError(f"{where}: {len(x)} inputs but {len(y)} labels")
        if len(y) < 3:
            raise DataError(f"{where}: needs at least 3 samples to split, got {len(y)}")
        if y.dtype.is_floating_point:
            if not torch.all(y == y.round()):
                raise DataError(f"{where}: labels must be integers")
        y = y.long()
        if int(y.min()) < 0:
            raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
        if not torch.isfinite(x.float()).all():
            raise DataError(f"{where}: inputs contain NaN or Inf")
        n_classes = int(y.max()) + 1 if classes is None else len(classes)
        if int(y.max()) >= n_classes:
            raise DataError(
                f"{where}: label {int(y.max())} out of range for {n_classes} classes"
            )
        classes = tuple(str(c) for c in (classes if classes is not None else range(n_classes)))
        tr, va, te = split_indices(y, fractions, seed)
        x = x.float()
        return cls(name, x[tr], y[tr], x[va], y[va], x[te], y[te], classes, source)


def split_indices(y: torch.Tensor, fractions=(0.7, 0.15, 0.15), seed: int = 0):
    """Deterministic stratified train/val/test index split (per class, by ``seed``)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    y_np = y.numpy()
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(y_np):
        idx = rng.permutation(np.flatnonzero(y_np == c))
        n_tr = int(round(fractions[0] * len(idx)))
        n_va = int(round(fractions[1] * len(idx)))
        parts[0] += idx[:n_tr].tolist()
        parts[1] += idx[n_tr:n_tr + n_va].tolist()
        parts[2] += idx[n_tr + n_va:].tolist()
    return tuple(torch.as_tensor(sorted(p), dtype=torch.long) for p in parts)


def stratified_indices(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` indices of ``y`` with classes in proportion, deterministic by ``seed``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    y_np = y.numpy()[order]
    # interleave classes by rank within class so any prefix is roughly stratified
    rank = np.zeros(len(y_np))
    for c in np.unique(y_np):
        m = y_np == c
        rank[m] = np.arange(m.sum()) / m.sum()
    pick = order[np.argsort(rank, kind="stable")[:n]]
    return torch.as_tensor(np.sort(pick), dtype=torch.long)
