"""Save the dashboard's session to a workspace directory, or open one in its place.

A directory field with **Save** and **Open** (see :mod:`workbench.workspace` for what a workspace
holds). Open replaces the session of the shared :class:`~workbench.panels.state.SessionState`, so
every tab sees the reopened variants (the analysis panels drop results of the old session and
cancel work in progress). A missing, damaged or incompatible workspace shows its error and leaves
the current session as it was. Open never discards work silently: if the current session has
variants made since it was last saved or opened, the first press only names them (Save first, or
press Open again to discard them).

Examples
--------
>>> import tempfile, workbench
>>> from workbench.panels.state import SessionState
>>> state = SessionState(session=workbench.Session.default(progress=False))
>>> _ = state.add("prune", "magnitude", sparsity=0.5)
>>> controls = WorkspaceControls(state=state, path=tempfile.mkdtemp() + "/ws")
>>> controls.save_now() is not None, controls.error
(True, '')
>>> state.remove("magnitude-50"); state.variants
['base']
>>> _ = controls.open_now(); state.variants
['base', 'magnitude-50']
>>> _ = state.add("prune", "random", sparsity=0.3)
>>> controls.open_now() is None, controls.notice.startswith("Unsaved: random-30")
(True, True)
>>> _ = controls.open_now(); state.variants  # the second press discards random-30
['base', 'magnitude-50']
"""

from __future__ import annotations

import asyncio
import warnings
from functools import partial
from pathlib import Path

import panel as pn
import param

from workbench.errors import ParameterError, WorkbenchError
from workbench.panels.alerts import message_alert
from workbench.panels.compress import error_message
from workbench.panels.state import SessionState
from workbench.session import BASE, Session
from workbench.workspace import MANIFEST


class WorkspaceControls(pn.viewable.Viewer):
    """Save the session to a directory, or open a saved one in its place."""

    state = param.ClassSelector(class_=SessionState, doc="The shared dashboard state.")
    path = param.String(default="", label="Workspace directory")
    save = param.Event(label="Save")
    open = param.Event(label="Open")
    busy = param.Boolean(default=False)
    error = param.String(default="")
    notice = param.String(default="", doc="What Open would discard (press again to confirm).")
    message = param.String(default="")

    def __init__(self, **params):
        super().__init__(**params)
        if self.state is None:
            raise ParameterError("WorkspaceControls needs a SessionState (state=...)")
        if not self.path and self.state.session.workspace is not None:
            self.path = str(self.state.session.workspace)
        self._kept: tuple = (None, {})  # (session, {name: variant}) as last saved or opened
        self._confirmed: tuple | None = None
        if self.state.session.workspace is not None:
            self._remember()

    def _remember(self) -> None:
        session = self.state.session
        self._kept = (session, dict(session.variants))

    def unsaved(self) -> list[str]:
        """Variants of the current session not in its last save or open (Open would lose them)."""
        session = self.state.session
        kept = self._kept[1] if self._kept[0] is session else {}
        return [n for n, v in session.variants.items() if n != BASE and kept.get(n) is not v]

    def _discard_confirmed(self, directory: Path) -> bool:
        """False (and a warning naming them) on the first Open that would lose variants.

        A directory without a manifest goes straight to its "not a workspace" error.
        """
        lost = self.unsaved()
        if not lost or not (directory / MANIFEST).is_file():
            return True
        key = (str(directory), id(self.state.session), tuple(lost))
        if self._confirmed == key:
            return True
        self._confirmed = key
        self.param.update(notice=f"Unsaved: {', '.join(lost)}. Save them first, or press "
                                  "**Open** again to discard them.", message="", error="")
        return False

    # --- the work (any thread) -----------------------------------------------------------------
    def _directory(self) -> Path:
        path = (self.path or "").strip()
        if not path:
            raise ParameterError("enter the workspace directory first")
        return Path(path).expanduser()

    @staticmethod
    def _read(directory: Path) -> tuple[Session, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session = Session.open(directory)
        return session, [str(w.message) for w in caught]

    # --- applying the outcome (UI thread) -------------------------------------------------------
    def _saved(self, path: Path) -> None:
        self._remember()
        n = len(self.state.session.variants)
        self.param.update(path=str(path), error="", notice="",
                          message=f"Saved {n} variant{'s' * (n != 1)} to `{path}`.")

    def _opened(self, session: Session, notes: list[str], directory: Path) -> None:
        self.state.session = session  # every view follows the shared state
        self._remember()
        self._confirmed = None
        n = len(session.variants)
        text = f"Opened {n} variant{'s' * (n != 1)} from `{directory}`."
        if notes:
            text += "\n\n" + "\n\n".join(f"⚠ {note}" for note in notes)
        self.param.update(path=str(directory), error="", notice="", message=text)

    def _failed(self, what: str, err: Exception) -> None:
        text = error_message(err)
        if not isinstance(err, WorkbenchError):
            text = f"{type(err).__name__}: {text}"
        self.param.update(error=f"{what} failed: {text} (the current session is unchanged)",
                          message="", notice="")

    # --- blocking versions (notebooks, tests) --------------------------------------------------
    def save_now(self) -> Path | None:
        """Save the session to ``path``; the directory, or None (``error`` says why)."""
        try:
            saved = self.state.session.save(self._directory())
        except Exception as err:  # noqa: BLE001  shown in the panel
            self._failed("Save", err)
            return None
        self._saved(saved)
        return saved

    def open_now(self) -> Session | None:
        """Open the workspace at ``path`` as the dashboard's session; None on failure (or on a
        first press that would discard unsaved variants)."""
        try:
            directory = self._directory()
            if not self._discard_confirmed(directory):
                return None
            session, notes = self._read(directory)
        except Exception as err:  # noqa: BLE001
            self._failed("Open", err)
            return None
        self._opened(session, notes, directory)
        return session

    # --- buttons (a worker thread; the page stays live) --------------------------------------
    async def _in_worker(self, what: str, fn):
        if self.busy:
            return None
        self.param.update(busy=True, error="", notice="", message=f"{what}…")
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn)
        except Exception as err:  # noqa: BLE001
            self._failed(what, err)
            return None
        finally:
            self.busy = False

    @param.depends("save", watch=True)
    async def _on_save(self):
        try:
            directory = self._directory()
        except ParameterError as err:
            self._failed("Save", err)
            return
        saved = await self._in_worker("Saving", partial(self.state.session.save, directory))
        if saved is not None:
            self._saved(saved)

    @param.depends("open", watch=True)
    async def _on_open(self):
        try:
            directory = self._directory()
        except ParameterError as err:
            self._failed("Open", err)
            return
        if not self._discard_confirmed(directory):
            return
        opened = await self._in_worker("Opening", partial(self._read, directory))
        if opened is not None:
            self._opened(*opened, directory)

    # --- view ----------------------------------------------------------------------------------
    def __panel__(self):
        w = pn.widgets
        return pn.Column(
            pn.pane.Markdown("### Workspace", margin=(0, 10)),
            w.TextInput.from_param(self.param.path, placeholder="e.g. ~/runs/lenet-ws",
                                   sizing_mode="stretch_width", css_classes=["wb-ws-path"]),
            pn.Row(w.Button.from_param(self.param.save, color="primary", loading=self.param.busy,
                                       css_classes=["wb-ws-save"]),
                   w.Button.from_param(self.param.open, color="default", loading=self.param.busy,
                                       css_classes=["wb-ws-open"])),
            message_alert(self.param.error, "danger", css_classes=["wb-ws-error"]),
            message_alert(self.param.notice, "warning", css_classes=["wb-ws-warning"]),
            message_alert(self.param.message, "success", css_classes=["wb-ws-message"]),
            sizing_mode="stretch_width",
        )


__all__ = ["WorkspaceControls"]
