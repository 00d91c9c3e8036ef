"""Errors raised by workbench.

Every problem a user can cause (bad file, bad parameter, unsupported layer) is raised as a
:class:`WorkbenchError` subclass with a message that names the culprit and what to do, so a
notebook shows one clear line instead of a traceback from deep inside torch.
"""


class WorkbenchError(Exception):
    """Base class of all errors workbench raises on purpose."""


class DataError(WorkbenchError, ValueError):
    """A data file or tensor is unreadable, inconsistent or does not fit the model."""


class CheckpointError(WorkbenchError, ValueError):
    """A model file cannot be loaded safely or does not match the architecture."""


class ParameterError(WorkbenchError, ValueError):
    """A method parameter is out of range or of the wrong kind."""


class UnsupportedLayerError(WorkbenchError, TypeError):
    """A method cannot handle a layer of the model; the message names the layer and why."""


class UnknownNameError(WorkbenchError, KeyError):
    """A registry lookup named something that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""
