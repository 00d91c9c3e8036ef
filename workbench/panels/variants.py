"""The variant manager: list, rename and delete variants, download their recipes as YAML, and
save the session to a workspace directory or open one (:class:`WorkspaceControls`, under the list).

Examples
--------
>>> import workbench
>>> from workbench.panels.state import SessionState
>>> state = SessionState(session=workbench.Session.default(progress=False))
>>> _ = state.add("prune", "magnitude", sparsity=0.5)
>>> manager = VariantManager(state=state)
>>> manager.param.update(target="magnitude-50", new_name="half")  # doctest: +ELLIPSIS
<...>
>>> manager.param.trigger("rename")
>>> state.variants, manager.target
(['base', 'half'], 'half')
>>> "method: magnitude" in manager.recipe_file().read()
True
"""

from __future__ import annotations

import io

import panel as pn
import param

from workbench.errors import ParameterError
from workbench.panels.alerts import message_alert
from workbench.panels.compress import error_message
from workbench.panels.state import SessionState
from workbench.panels.workspace import WorkspaceControls
from workbench.session import BASE


class VariantManager(pn.viewable.Viewer):
    """Rename, delete and export the session's variants; save or open the workspace."""

    state = param.ClassSelector(class_=SessionState, doc="The shared dashboard state.")
    target = param.Selector(default=BASE, objects=[BASE], label="Variants")
    new_name = param.String(default="", label="New name")
    rename = param.Event(label="Rename")
    delete = param.Event(label="Delete")
    error = param.String(default="")
    message = param.String(default="")

    def __init__(self, **params):
        super().__init__(**params)
        if self.state is None:
            raise ParameterError("VariantManager needs a SessionState (state=...)")
        self.workspace = WorkspaceControls(state=self.state)
        self._sync_targets()

    @param.depends("state.variants", watch=True)
    def _sync_targets(self):
        names = list(self.state.variants)
        target = self.target if self.target in names else names[-1]
        self.param.target.objects = names  # a linked widget may reset target here
        self.target = target

    def _run(self, action, done: str) -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001  shown in the panel
            self.param.update(error=error_message(err), message="")
        else:
            self.param.update(error="", message=done)

    @param.depends("rename", watch=True)
    def _rename(self):
        old, new = self.target, self.new_name.strip()

        def action():
            self.state.rename(old, new)
            self.param.update(target=new, new_name="")

        self._run(action, f"Renamed {old} to {new}.")

    @param.depends("delete", watch=True)
    def _delete(self):
        name = self.target
        self._run(lambda: self.state.remove(name), f"Deleted {name}.")

    def recipes_file(self) -> io.StringIO:
        """Recipes of every variant as YAML."""
        return io.StringIO(self.state.export_recipes())

    def recipe_file(self) -> io.StringIO:
        """Recipe of the chosen variant (and its parents) as YAML."""
        names = [] if self.target == BASE else [self.target]
        return io.StringIO(self.state.export_recipes(names=names))

    @param.depends("target")
    def _recipe_filename(self) -> str:
        return f"{self.target}.yaml"

    def __panel__(self):
        w = pn.widgets
        return pn.Column(
            pn.pane.Markdown("### Variants", margin=(0, 10)),
            w.Select.from_param(self.param.target, size=6, sizing_mode="stretch_width",
                                css_classes=["wb-variant-list"]),
            w.TextInput.from_param(self.param.new_name, placeholder="new name",
                                   sizing_mode="stretch_width"),
            pn.Row(w.Button.from_param(self.param.rename, color="default"),
                   w.Button.from_param(self.param.delete, color="danger")),
            pn.Row(w.FileDownload(callback=self.recipe_file, filename=self._recipe_filename,
                                  label="Recipe", color="light"),
                   w.FileDownload(callback=self.recipes_file, filename="workbench-recipes.yaml",
                                  label="All recipes", color="light")),
            message_alert(self.param.error, "danger"),
            message_alert(self.param.message, "success"),
            self.workspace,
            sizing_mode="stretch_width",
        )


__all__ = ["VariantManager"]
