"""Stopping long work: a :class:`CancelToken`, the :class:`Cancelled` error, and progress bars
that can be stopped.

Long analyses report every step to a progress bar (a tqdm) and know nothing of buttons. This
module's :class:`tqdm` is the ordinary ``tqdm.auto.tqdm`` with one addition: every step also
calls the *step hooks* active in the current thread (:func:`on_step`). A panel runs its work
under ``on_step(token.check)``; pressing Cancel sets the token, and the next step of whatever
bar is running raises :class:`Cancelled`, which unwinds the analysis like any other error (the
analyses work on copies, so nothing is left half-changed). Outside of ``on_step`` the bar is
plain tqdm. Functions that take a ``callback(done, total)`` instead (:func:`workbench.sweep.sweep`)
get ``token.callback(...)``, which checks the token before forwarding.

Raising ``KeyboardInterrupt`` from a hook (or pressing Ctrl-C in a notebook) unwinds the same way.

Examples
--------
>>> token = CancelToken()
>>> steps = []
>>> try:
...     with on_step(lambda n: steps.append(n)), on_step(token.check):
...         for i in tqdm(range(5), disable=True):
...             if i == 1:
...                 token.cancel()
... except Cancelled as err:
...     print(err)
cancelled
>>> len(steps)  # the first step ran, the second raised
2
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm.auto import tqdm as _tqdm

from workbench.errors import WorkbenchError


class Cancelled(WorkbenchError):
    """The work was cancelled on request (not a failure: nothing to fix)."""


class CancelToken:
    """A flag that one thread sets and the thread doing the work checks.

    Examples
    --------
    >>> t = CancelToken()
    >>> t.cancelled, t.check(), t.cancel(), t.cancelled
    (False, None, None, True)
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop at its next step (safe from any thread)."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self, *_args) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called (usable as a step hook)."""
        if self._event.is_set():
            raise Cancelled("cancelled")

    def callback(self, forward: Callable | None = None) -> Callable:
        """A progress callback that checks the token, then calls ``forward(*args)``.

        Examples
        --------
        >>> t = CancelToken(); seen = []
        >>> cb = t.callback(lambda done, total: seen.append(done))
        >>> cb(1, 3); t.cancel()
        >>> try:
        ...     cb(2, 3)
        ... except Cancelled:
        ...     print("stopped")
        stopped
        >>> seen
        [1]
        """
        def checked(*args):
            self.check()
            if forward is not None:
                forward(*args)

        return checked


_local = threading.local()


def _hooks() -> list:
    if not hasattr(_local, "hooks"):
        _local.hooks = []
    return _local.hooks


@contextmanager
def on_step(hook: Callable[[int], None]) -> Iterator[None]:
    """Call ``hook(n)`` on every step of every :class:`tqdm` in this thread (inside the block).

    ``n`` is the number of units the step advanced. A hook may raise (e.g. :class:`Cancelled`)
    to stop the work.
    """
    hooks = _hooks()
    hooks.append(hook)
    try:
        yield
    finally:
        hooks.remove(hook)


def step(n: int = 1) -> None:
    """Run this thread's step hooks (analyses without a progress bar may call it per step)."""
    for hook in list(_hooks()):
        hook(n)


class tqdm(_tqdm):  # noqa: N801  (a drop-in for tqdm.auto.tqdm, so it keeps tqdm's name)
    """``tqdm.auto.tqdm`` whose steps also run the step hooks of :func:`on_step`."""

    def update(self, n=1):
        step(n)
        return super().update(n)

    def __iter__(self):
        for obj in super().__iter__():
            yield obj
            step(1)


__all__ = ["Cancelled", "CancelToken", "on_step", "step", "tqdm"]
