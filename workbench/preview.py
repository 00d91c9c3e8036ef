"""What a method would do to a variant, measured without adding anything to the session.

The dashboard's live preview calls :func:`preview` on every slider move, so results are cached
per parent variant, keyed by kind, method, seed and parameters: going back to a setting seen
before costs a dictionary lookup. The cache holds only :class:`~workbench.metrics.Metrics` (a
few numbers), never models, and forgets a parent's entries when that variant is deleted.

Examples
--------
>>> import workbench
>>> from workbench.preview import preview
>>> session = workbench.Session.default(progress=False)
>>> m = preview(session, "prune", "magnitude", sparsity=0.5)
>>> round(m.sparsity, 2), list(session.variants)
(0.5, ['base'])
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from workbench.errors import ParameterError
from workbench.metrics import Metrics
from workbench.recipe import KINDS, Recipe

MAX_ENTRIES_PER_PARENT = 1024

_lock = threading.Lock()
_cache: "weakref.WeakKeyDictionary[object, OrderedDict]" = weakref.WeakKeyDictionary()
_stats = {"hits": 0, "misses": 0}


@dataclass(frozen=True)
class CacheInfo:
    """How often :func:`preview` answered from its cache (``hits``) or computed (``misses``)."""

    hits: int
    misses: int
    size: int


def _freeze(value):
    """A hashable stand-in for a parameter value (lists, dicts and sets included)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(map(repr, value)))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def entry(kind: str, method: str):
    """The registry entry of ``method`` (a :class:`PrunerInfo` or :class:`QuantizerInfo`)."""
    if kind == "prune":
        from workbench.prune import PRUNERS

        return PRUNERS[method]
    if kind == "quantize":
        from workbench.quantize import QUANTIZERS

        return QUANTIZERS[method]
    raise ParameterError(f"kind must be one of {KINDS}, got {kind!r}")


def previewable(kind: str, method: str) -> bool:
    """False for methods that train while they compress (too slow for a live preview)."""
    return not getattr(entry(kind, method), "trains", False)


def preview(session, kind: str, method: str, *, parent: str | None = None,
            seed: int | None = None, **params) -> Metrics:
    """Metrics of the variant ``session.prune``/``session.quantize`` would add, without adding it.

    Parameters
    ----------
    session : Session
    kind : {"prune", "quantize"}
    method : str
        A registered method name (see :func:`workbench.methods`).
    parent : str, optional
        The variant to start from (default: the base model).
    seed : int, optional
        Default: the session's seed, as for :meth:`Session.prune`.
    **params
        The method's parameters (``sparsity``, ``scope``, ``bits``, …). Fine-tuning is not
        previewed: pass ``finetune_epochs`` to :meth:`Session.prune` instead.

    Returns
    -------
    Metrics
        Exactly what ``variant.metrics`` of the applied recipe reports.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> a = preview(s, "prune", "magnitude", sparsity=0.3)
    >>> b = s.prune("magnitude", sparsity=0.3)
    >>> a.accuracy == b.metrics.accuracy
    True
    """
    from workbench.build import build_variant

    if params.get("finetune_epochs"):
        raise ParameterError("a preview does not fine-tune; apply the method to fine-tune")
    params.pop("finetune_epochs", None)
    params.pop("finetune_lr", None)
    source = session[parent] if parent is not None else session.base
    seed = session.seed if seed is None else int(seed)
    entry(kind, method)  # unknown kind or method: a clear error before the cache is touched
    key = (kind, method, seed, _freeze(params))
    with _lock:
        cached = _cache.setdefault(source, OrderedDict())
        if key in cached:
            cached.move_to_end(key)
            _stats["hits"] += 1
            return cached[key]
    recipe = Recipe("preview", kind, method, dict(params), seed,
                    None if source.recipe is None else source.name)
    metrics = build_variant(recipe, source, session.data).metrics
    with _lock:
        _stats["misses"] += 1
        cached = _cache.setdefault(source, OrderedDict())
        cached[key] = metrics
        while len(cached) > MAX_ENTRIES_PER_PARENT:
            cached.popitem(last=False)
    return metrics


def cache_info() -> CacheInfo:
    """Hits, misses and the number of cached results over all parents."""
    with _lock:
        return CacheInfo(_stats["hits"], _stats["misses"], sum(len(c) for c in _cache.values()))


def cache_clear() -> None:
    """Forget every cached preview and reset the counters."""
    with _lock:
        _cache.clear()
        _stats.update(hits=0, misses=0)


__all__ = ["preview", "previewable", "entry", "cache_info", "cache_clear", "CacheInfo"]
