"""Accuracy against sparsity: run pruning methods over a grid of sparsities.

Each point is a :func:`~workbench.preview.preview` (nothing is added to the session), so points
already seen, in the dashboard or in an earlier sweep, come from the cache.

Examples
--------
>>> import workbench
>>> from workbench.sweep import sweep
>>> s = workbench.Session.default(progress=False)
>>> result = sweep(s, ["magnitude", "random"], [0.0, 0.5, 0.9])
>>> result.accuracy["magnitude"].shape
(3,)
>>> bool(result.accuracy["magnitude"][0] == s.base.metrics.accuracy)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from workbench.cancel import Cancelled
from workbench.errors import ParameterError, WorkbenchError
from workbench.preview import preview

DEFAULT_SPARSITIES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


@dataclass(frozen=True, eq=False)
class Sweep:
    """The result of :func:`sweep`.

    Attributes
    ----------
    methods : tuple of str
    sparsities : np.ndarray
        The requested sparsities (the grid).
    accuracy : dict[str, np.ndarray]
        Method → test accuracy at each grid point (NaN where the method refused the point).
    achieved : dict[str, np.ndarray]
        Method → the sparsity actually measured at each point (structured methods round).
    base_accuracy : float
        Accuracy of the parent variant, the curve's reference.
    parent : str
    errors : dict[str, str]
        Method → the first error message, for methods that failed at some point.
    """

    methods: tuple[str, ...]
    sparsities: np.ndarray
    accuracy: dict
    achieved: dict
    base_accuracy: float
    parent: str = "base"
    errors: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One row per (method, sparsity), for a table or a CSV file."""
        return [{"method": m, "sparsity": float(s), "achieved_sparsity": float(a),
                 "accuracy": float(acc)}
                for m in self.methods
                for s, a, acc in zip(self.sparsities, self.achieved[m], self.accuracy[m])]


def sweep(session, methods: Iterable[str], sparsities: Iterable[float] = DEFAULT_SPARSITIES, *,
          parent: str | None = None,
          callback: Callable[[int, int], None] | None = None, **params) -> Sweep:
    """Prune ``parent`` with each method at each sparsity and measure the accuracy.

    Parameters
    ----------
    session : Session
    methods : iterable of str
        Registered pruning methods.
    sparsities : iterable of float
        The grid, each in [0, 1).
    parent : str, optional
        Variant to prune (default: the base model).
    callback : callable, optional
        ``callback(done, total)`` after every point (drives a progress bar); it may raise
        (e.g. :class:`~workbench.cancel.Cancelled` from ``CancelToken.callback``) to stop the
        sweep, which then returns nothing and leaves the session as it was.
    **params
        Passed to every method (e.g. ``scope="global"``).

    Returns
    -------
    Sweep
    """
    methods = tuple(dict.fromkeys(methods))
    grid = np.asarray(list(sparsities), dtype=float)
    if not methods:
        raise ParameterError("choose at least one pruning method to sweep")
    if grid.ndim != 1 or grid.size == 0 or (grid < 0).any() or (grid >= 1).any():
        raise ParameterError(f"sparsities must be a non-empty list of numbers in [0, 1), got {grid}")
    source = session[parent] if parent is not None else session.base
    accuracy = {m: np.full(grid.size, np.nan) for m in methods}
    achieved = {m: np.full(grid.size, np.nan) for m in methods}
    errors: dict[str, str] = {}
    total, done = len(methods) * grid.size, 0
    for m in methods:
        for i, s in enumerate(grid):
            try:
                metrics = preview(session, "prune", m, parent=parent, sparsity=float(s), **params)
            except Cancelled:
                raise
            except WorkbenchError as err:
                if isinstance(err, KeyError):  # an unknown method name: nothing to sweep
                    raise
                errors.setdefault(m, f"at sparsity {s:g}: {err}")
            else:
                accuracy[m][i] = metrics.accuracy
                achieved[m][i] = metrics.sparsity
            done += 1
            if callback is not None:
                callback(done, total)
    for arrays in (accuracy, achieved):
        for a in arrays.values():
            a.flags.writeable = False
    grid.flags.writeable = False
    return Sweep(methods, grid, accuracy, achieved, source.metrics.accuracy, source.name, errors)


__all__ = ["Sweep", "sweep", "DEFAULT_SPARSITIES"]
