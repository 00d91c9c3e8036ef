"""The state every dashboard view shares: one session, its variant names, the selection.

No Panel here: views watch ``revision`` (bumped on every change of the session's variants), so a
variant made in one panel shows in all of them. Changes go through the session, never around it.

Examples
--------
>>> import workbench
>>> state = SessionState(session=workbench.Session.default(progress=False))
>>> v = state.add("prune", "magnitude", sparsity=0.5)
>>> state.variants, state.selected, state.revision
(['base', 'magnitude-50'], ['base', 'magnitude-50'], 2)
>>> _ = state.rename("magnitude-50", "m50"); state.variants
['base', 'm50']
"""

from __future__ import annotations

import param

from workbench.errors import ParameterError
from workbench.recipe import KINDS
from workbench.session import BASE, Session, Variant

MAX_SELECTED = 8


class SessionState(param.Parameterized):
    """A :class:`~workbench.session.Session` plus what the views need to stay in sync."""

    session = param.ClassSelector(class_=Session, doc="The session all views work on.")
    variants = param.List(default=[], item_type=str, constant=True,
                          doc="Variant names in session order ('base' first).")
    selected = param.ListSelector(default=[], objects=[],
                                  doc="Variants chosen for side-by-side comparison.")
    revision = param.Integer(default=0, constant=True,
                             doc="Bumped whenever the session's variants change.")

    def __init__(self, **params):
        super().__init__(**params)
        if self.session is None:
            raise ParameterError("SessionState needs a session")
        self.refresh()

    @param.depends("session", watch=True)
    def _session_changed(self):
        self.selected = []
        self.refresh()

    def refresh(self) -> None:
        """Re-read the session's variants (call after changing the session directly)."""
        names = list(self.session.variants)
        self.param.selected.objects = names
        keep = [n for n in self.selected if n in names] or names[:1]
        with param.edit_constant(self):
            self.param.update(variants=names, selected=keep, revision=self.revision + 1)

    # --- changes ----------------------------------------------------------------------------
    def create(self, kind: str, method: str, **params) -> Variant:
        """Build a variant in the session without notifying the views (safe off the UI thread).

        Call :meth:`refresh` afterwards, or use :meth:`add` which does both.
        """
        if kind == "prune":
            variant = self.session.prune(method, **params)
        elif kind == "quantize":
            variant = self.session.quantize(method, **params)
        else:
            raise ParameterError(f"kind must be one of {KINDS}, got {kind!r}")
        variant.metrics  # noqa: B018  computed here, off the UI thread when run in a worker
        return variant

    def add(self, kind: str, method: str, **params) -> Variant:
        """Prune or quantize (``params`` as for :meth:`Session.prune` / :meth:`Session.quantize`),
        select the new variant and notify the views."""
        variant = self.create(kind, method, **params)
        self.added(variant.name)
        return variant

    def added(self, name: str) -> None:
        """Notify the views that ``name`` was added, and select it for comparison."""
        self.refresh()
        self.selected = (self.selected + [name])[-MAX_SELECTED:]

    def remove(self, name: str) -> None:
        """Delete a variant (refused for the base model and for parents of other variants)."""
        self.session.remove(name)
        self.refresh()

    def rename(self, old: str, new: str) -> Variant:
        """Rename a variant; the selection follows."""
        new = (new or "").strip()
        variant = self.session.rename(old, new)
        selected = [new if n == old else n for n in self.selected]
        self.param.selected.objects = list(self.session.variants)
        self.selected = selected
        self.refresh()
        return variant

    def export_recipes(self, names=None, fmt: str = "yaml") -> str:
        """Recipes of all (or the named) variants and their parents, as YAML or JSON text."""
        return self.session.export_recipes(names=names, fmt=fmt)

    # --- reading ----------------------------------------------------------------------------
    def variant(self, name: str | None = None) -> Variant:
        return self.session[name or BASE]


__all__ = ["SessionState"]
