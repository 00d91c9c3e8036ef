"""The Panel dashboard: a shared :class:`~workbench.panels.state.SessionState` and views of it."""
