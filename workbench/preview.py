"""What a method would do to a variant, measured without adding anything to the session.

The dashboard's live preview calls :func:`preview` on every slider move, so results are cached
per parent variant, keyed by kind, method, seed and parameters: going back to a setting seen
before costs a dictionary lookup. :func:`whatif` adds the slower part of the preview (error
under a few corruptions and the penultimate-layer geometry, see
:mod:`workbench.analysis.whatif`) under the same key in the same per-parent cache;
:func:`cached_whatif` looks it up without computing. The cache holds only small frozen results
(:class:`~workbench.metrics.Metrics`, :class:`~workbench.analysis.whatif.WhatIf`), never models,
and forgets a parent's entries when that variant is deleted.

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
#: Hits and misses per kind of cached result: "preview" (Metrics) and "whatif" (WhatIf).
_stats = {"preview": {"hits": 0, "misses": 0}, "whatif": {"hits": 0, "misses": 0}}


@dataclass(frozen=True)
class CacheInfo:
    """How often :func:`preview` (or :func:`whatif`) answered from its cache (``hits``) or
    computed (``misses``), and how many such results are cached (``size``)."""

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
    source, key, recipe = _request(session, kind, method, parent, seed, params)
    hit = _lookup(source, key, "preview")
    if hit is not None:
        return hit
    return _store(source, key, "preview", _build(session, source, recipe).metrics)


def _request(session, kind, method, parent, seed, params):
    """``(parent variant, cache key, recipe)`` of a preview request (checked)."""
    if params.get("finetune_epochs"):
        raise ParameterError("a preview does not fine-tune; apply the method to fine-tune")
    params = dict(params)
    params.pop("finetune_epochs", None)
    params.pop("finetune_lr", None)
    source = session[parent] if parent is not None else session.base
    seed = session.seed if seed is None else int(seed)
    entry(kind, method)  # unknown kind or method: a clear error before the cache is touched
    key = (kind, method, seed, _freeze(params))
    recipe = Recipe("preview", kind, method, params, seed,
                    None if source.recipe is None else source.name)
    return source, key, recipe


def _build(session, source, recipe):
    from workbench.build import build_variant

    return build_variant(recipe, source, session.data)


def _lookup(source, key, what: str):
    """The cached result (and a hit counted), or ``None``."""
    with _lock:
        cached = _cache.setdefault(source, OrderedDict())
        full = key if what == "preview" else (what, *key)
        if full in cached:
            cached.move_to_end(full)
            _stats[what]["hits"] += 1
            return cached[full]
    return None


def _store(source, key, what: str, value):
    with _lock:
        _stats[what]["misses"] += 1
        cached = _cache.setdefault(source, OrderedDict())
        cached[key if what == "preview" else (what, *key)] = value
        while len(cached) > MAX_ENTRIES_PER_PARENT:
            cached.popitem(last=False)
    return value


def whatif(session, kind: str, method: str, *, parent: str | None = None,
           seed: int | None = None, **params):
    """Corruption errors and feature geometry of the variant :func:`preview` describes.

    Same arguments and cache key as :func:`preview`; computed with
    :func:`~workbench.analysis.whatif.whatif_summary` (its default settings, one thread) on the
    built variant and cached with the parent's previews.

    Returns
    -------
    WhatIf

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> w = whatif(s, "prune", "magnitude", sparsity=0.3)
    >>> w is whatif(s, "prune", "magnitude", sparsity=0.3)  # the second call is a lookup
    True
    """
    from workbench.analysis.whatif import whatif_summary

    source, key, recipe = _request(session, kind, method, parent, seed, params)
    hit = _lookup(source, key, "whatif")
    if hit is not None:
        return hit
    return _store(source, key, "whatif", whatif_summary(_build(session, source, recipe).model,
                                                        session.data))


def cached_whatif(session, kind: str, method: str, *, parent: str | None = None,
                  seed: int | None = None, **params):
    """The cached :func:`whatif` result of these settings, or ``None`` (nothing is computed;
    a found result counts as a hit)."""
    source, key, _ = _request(session, kind, method, parent, seed, params)
    return _lookup(source, key, "whatif")


def variant_whatif(variant):
    """:func:`~workbench.analysis.whatif.whatif_summary` of an existing variant (cached with
    its own previews, for comparing a preview with its parent or the base model).

    Runs on a copy of the variant's model: the geometry's temporary hook must never be seen by
    a preview that copies the same model at that moment in another thread.
    """
    import copy

    from workbench.analysis.whatif import whatif_summary

    key = ("self",)
    hit = _lookup(variant, key, "whatif")
    if hit is not None:
        return hit
    return _store(variant, key, "whatif",
                  whatif_summary(copy.deepcopy(variant.model), variant.data))


def cache_info(what: str = "preview") -> CacheInfo:
    """Hits, misses and the number of cached results over all parents, for :func:`preview`
    (``what="preview"``) or :func:`whatif` (``what="whatif"``)."""
    if what not in _stats:
        raise ParameterError(f"what must be one of {list(_stats)}, got {what!r}")
    with _lock:
        size = sum(sum(1 for k in c if (k[0] == "whatif") == (what == "whatif"))
                   for c in _cache.values())
        return CacheInfo(_stats[what]["hits"], _stats[what]["misses"], size)


def cache_clear() -> None:
    """Forget every cached preview and reset the counters."""
    with _lock:
        _cache.clear()
        for counts in _stats.values():
            counts.update(hits=0, misses=0)


__all__ = ["preview", "previewable", "entry", "whatif", "cached_whatif", "variant_whatif",
           "cache_info", "cache_clear", "CacheInfo"]
