"""A :class:`Session`: one base model, its data, and named compressed variants of it."""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from workbench.data import Dataset
from workbench.data.convert import as_dataset
from workbench.errors import CheckpointError, DataError, ParameterError, WorkbenchError
from workbench.metrics import Metrics, compute_metrics
from workbench.recipe import Recipe, RecipeError, dump_recipes, load_recipes

BASE = "base"


@dataclass(eq=False)
class Variant:
    """A compressed (or the base) model of a session.

    Attributes
    ----------
    name : str
    recipe : Recipe or None
        How it was made (``None`` for the base model).
    model : nn.Module
        Its own module, independent of the base model and of other variants.
    masks : dict
        Layer name → boolean keep-mask of the weight (empty if unpruned or physically slimmed).
    quant : dict
        Layer name → :class:`~workbench.quantize.QuantizedTensor` for quantized layers.
    info : dict
        Method details (kept channels, per-layer quantization error, …).
    """

    name: str
    recipe: Recipe | None
    model: nn.Module = field(repr=False)
    data: Dataset = field(repr=False)
    masks: dict = field(default_factory=dict, repr=False)
    quant: dict = field(default_factory=dict, repr=False)
    info: dict = field(default_factory=dict, repr=False)
    #: Layer name → weight size in the base model, so the sparsity of a physically slimmed
    #: variant counts the removed channels.
    reference: dict = field(default_factory=dict, repr=False)

    @cached_property
    def metrics(self) -> Metrics:
        """Accuracy, loss, sparsity, bytes, MACs… on the test split (computed once)."""
        return compute_metrics(self.model, self.data, self.masks, self.quant, self.reference)

    @property
    def parent(self) -> str | None:
        return None if self.recipe is None else (self.recipe.parent or BASE)


def _check_finite(model: nn.Module, what: str) -> None:
    bad = [n for n, p in model.state_dict().items()
           if p.dtype.is_floating_point and not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(f"{what} has NaN or Inf values in {bad[:5]}"
                              + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))


class Session:
    """A base model, its data and its named variants.

    Parameters
    ----------
    model : nn.Module
        The base model; the session keeps its own copy and never modifies yours.
    data : Dataset, str, (x, y) pair, DataLoader or dict of splits
        See :func:`workbench.data.convert.as_dataset`.
    seed : int
        Default seed of every method run from this session.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> v = s.prune("magnitude", sparsity=0.5)
    >>> round(v.metrics.sparsity, 2), v.name
    (0.5, 'magnitude-50')
    >>> q = s.quantize("uniform", bits=8, parent=v.name)
    >>> q.recipe.parent
    'magnitude-50'
    """

    #: True if the session was opened from a workspace whose data has changed since it was saved.
    data_changed: bool = False
    #: The workspace directory this session was last saved to or opened from.
    workspace: Path | None = None

    def __init__(self, model: nn.Module, data, *, seed: int = 0, name: str = "session"):
        if not isinstance(model, nn.Module):
            raise CheckpointError(
                f"model must be a torch.nn.Module, got {type(model).__name__}; load files with "
                "workbench.load_model(path, arch=...)"
            )
        self.data = as_dataset(data, seed=seed)
        self.seed = int(seed)
        self.name = name
        base = copy.deepcopy(model).eval()
        _check_finite(base, "the base model")
        self._check_fits(base)
        self.variants: OrderedDict[str, Variant] = OrderedDict()
        self.variants[BASE] = Variant(BASE, None, base, self.data)

    def _check_fits(self, model: nn.Module) -> None:
        x = self.data.x_test[:2]
        try:
            with torch.inference_mode():
                out = model.eval()(x)
        except Exception as err:  # noqa: BLE001  any failure here means "does not fit"
            raise DataError(
                f"the model does not accept inputs of shape {tuple(x.shape[1:])} from dataset "
                f"{self.data.name!r}: {str(err).splitlines()[0]}"
            ) from None
        if out.ndim != 2 or out.shape[1] != self.data.num_classes:
            raise DataError(
                f"the model outputs shape {tuple(out.shape[1:])} but dataset {self.data.name!r} "
                f"has {self.data.num_classes} classes"
            )

    @classmethod
    def default(cls, seed: int = 0, progress: bool = True) -> "Session":
        """The embedded default: a LeNet-5 CNN trained on scikit-learn's digits (cached)."""
        from workbench.models.default import default_model_and_data

        model, data = default_model_and_data(seed=seed, progress=progress)
        session = cls(model, data, seed=seed, name="default")
        session.model_info = {"arch": "lenet5", "trained": "default"}
        return session

    # --- variants -----------------------------------------------------------------------
    @property
    def base(self) -> Variant:
        return self.variants[BASE]

    def __getitem__(self, name: str) -> Variant:
        return self._variant(name)

    def _variant(self, name: str | None) -> Variant:
        name = BASE if name is None else name
        if name not in self.variants:
            raise ParameterError(f"no variant named {name!r}; variants are {list(self.variants)}")
        return self.variants[name]

    def _unique_name(self, stem: str) -> str:
        stem = re.sub(r"[^\w.+%:-]", "_", stem)
        name, i = stem, 2
        while name in self.variants:
            name, i = f"{stem}-{i}", i + 1
        return name

    def prune(self, method: str, sparsity: float = 0.5, *, parent: str | None = None,
              name: str | None = None, seed: int | None = None, finetune_epochs: int = 0,
              finetune_lr: float = 1e-3, **params) -> Variant:
        """Prune ``parent`` (default: the base model) with a registered method.

        ``params`` go to the method (``scope``, ``exclude``, ``min_keep``, …; see
        ``workbench.methods("prune")``). ``finetune_epochs > 0`` fine-tunes afterwards with the
        pruned weights held at zero.
        """
        full = {"sparsity": sparsity, **params}
        if finetune_epochs:
            full.update(finetune_epochs=finetune_epochs, finetune_lr=finetune_lr)
        return self.apply(Recipe(name or "", "prune", method, full,
                                 self.seed if seed is None else seed, parent))

    def quantize(self, method: str = "uniform", bits: int | None = None, *,
                 parent: str | None = None, name: str | None = None, seed: int | None = None,
                 **params) -> Variant:
        """Quantize ``parent`` (default: the base model; a pruned parent keeps its masks).

        ``bits`` defaults to the method's first supported width (8 for ``uniform``).
        """
        if bits is None:
            from workbench.quantize import QUANTIZERS

            bits = QUANTIZERS[method].bits[0]
        return self.apply(Recipe(name or "", "quantize", method, {"bits": bits, **params},
                                 self.seed if seed is None else seed, parent))

    def apply(self, recipe: Recipe) -> Variant:
        """Build the variant a :class:`Recipe` describes and add it to the session."""
        from workbench.build import build_variant

        parent = self._variant(recipe.parent)
        if recipe.name and recipe.name in self.variants:
            raise ParameterError(f"a variant named {recipe.name!r} exists already")
        name = recipe.name or self._unique_name(default_name(recipe, parent))
        recipe = Recipe(name, recipe.kind, recipe.method, dict(recipe.params), recipe.seed,
                        None if parent.name == BASE else parent.name)
        variant = build_variant(recipe, parent, self.data)
        self.variants[name] = variant
        return variant

    def remove(self, name: str) -> None:
        """Delete a variant (and refuse if other variants derive from it)."""
        if name == BASE:
            raise ParameterError("the base model cannot be removed")
        self._variant(name)
        children = [v.name for v in self.variants.values() if v.recipe and v.recipe.parent == name]
        if children:
            raise ParameterError(f"variant {name!r} is the parent of {children}; remove them first")
        del self.variants[name]

    def rename(self, old: str, new: str) -> Variant:
        """Rename a variant (children follow)."""
        if old == BASE:
            raise ParameterError("the base model cannot be renamed")
        v = self._variant(old)
        if not new or new in self.variants:
            raise ParameterError(f"cannot rename to {new!r}: empty or taken")
        items = [(new if k == old else k, val) for k, val in self.variants.items()]
        v.name = new
        v.recipe = Recipe(new, v.recipe.kind, v.recipe.method, v.recipe.params, v.recipe.seed,
                          v.recipe.parent)
        for other in self.variants.values():
            if other.recipe and other.recipe.parent == old:
                r = other.recipe
                other.recipe = Recipe(r.name, r.kind, r.method, r.params, r.seed, new)
        self.variants = OrderedDict(items)
        return v

    # --- recipes ------------------------------------------------------------------------
    def recipes(self) -> list[Recipe]:
        return [v.recipe for v in self.variants.values() if v.recipe is not None]

    def info(self) -> dict:
        """A description of the base model and data, stored alongside exported recipes."""
        arch = getattr(self.base.model, "workbench_arch", None)
        return {"data": self.data.name, "data_fingerprint": self.data.fingerprint(),
                "seed": self.seed, "model": arch if arch else type(self.base.model).__name__}

    def export_recipes(self, path: str | Path | None = None, names=None, fmt: str | None = None) -> str:
        """All (or the named) variants' recipes as YAML/JSON text; written to ``path`` if given.

        Parents of the named variants are included so the file rebuilds on its own.
        """
        wanted = list(self.variants) if names is None else list(names)
        keep: list[str] = []
        for n in wanted:
            chain = []
            v = self._variant(n)
            while v.recipe is not None:
                chain.append(v.name)
                v = self._variant(v.parent)
            for c in reversed(chain):
                if c not in keep:
                    keep.append(c)
        order = [n for n in self.variants if n in keep]
        return dump_recipes([self.variants[n].recipe for n in order], self.info(), path, fmt)

    def load_recipes(self, source) -> list[Variant]:
        """Rebuild every variant of a recipe file (or text) in this session."""
        info, recipes = load_recipes(source)
        fp = info.get("data_fingerprint")
        if fp and fp != self.data.fingerprint():
            import warnings

            warnings.warn(f"the recipes were made on different data (fingerprint {fp}, this "
                          f"session {self.data.fingerprint()}); results will differ", stacklevel=2)
        built = []
        for r in recipes:
            if r.parent is not None and r.parent not in self.variants:
                raise RecipeError(f"variant {r.name!r} names parent {r.parent!r}, which is not "
                                  "defined before it")
            built.append(self.apply(r))
        return built

    def table(self) -> list[dict]:
        """One row of scalar metrics per variant (name, method, parent first)."""
        rows = []
        for v in self.variants.values():
            r = v.recipe
            rows.append({"name": v.name, "kind": r.kind if r else "base",
                         "method": r.method if r else "", "parent": v.parent or "",
                         **v.metrics.as_row()})
        return rows

    # --- workspaces ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Save everything (weights, masks, codes, recipes, cached metrics) to a workspace
        directory, atomically; see :mod:`workbench.workspace`."""
        from workbench.workspace import save_session

        path = save_session(self, directory)
        self.workspace = path
        return path

    @classmethod
    def open(cls, directory: str | Path, *, model: nn.Module | None = None, data=None,
             on_data_change: str = "warn") -> "Session":
        """Reopen a workspace written by :meth:`save`; see
        :func:`workbench.workspace.open_session`."""
        from workbench.workspace import open_session

        return open_session(directory, model=model, data=data, on_data_change=on_data_change)

    def dashboard(self):
        """The composed Panel dashboard of this session (display it in a notebook cell)."""
        from workbench.panels.dashboard import Dashboard

        return Dashboard(session=self)

    def __repr__(self) -> str:
        return f"Session({self.name!r}, data={self.data.name!r}, variants={list(self.variants)})"


def default_name(recipe: Recipe, parent: Variant) -> str:
    """``magnitude-50``, ``uniform-8b``, ``magnitude-50+uniform-4b`` …"""
    p = recipe.params
    if recipe.kind == "prune":
        from workbench.prune.base import check_sparsity

        stem = f"{recipe.method}-{round(100 * check_sparsity(p.get('sparsity', 0.5)))}"
        if recipe.method == "nm":  # N:M fixes its own sparsity: name it by the pattern
            stem = f"nm-{p.get('n', 2)}:{p.get('m', 4)}"
    else:
        stem = f"{recipe.method}-{p.get('bits')}b"
    return stem if parent.name == BASE else f"{parent.name}+{stem}"


__all__ = ["Session", "Variant", "BASE", "WorkbenchError"]
