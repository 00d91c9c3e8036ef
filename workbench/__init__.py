"""workbench: prune and quantize a neural network interactively and see what it does.

Examples
--------
>>> import workbench
>>> session = workbench.Session.default(progress=False)
>>> variant = session.prune("global_magnitude", sparsity=0.8)
>>> variant.metrics.accuracy > 0.5
True
>>> "magnitude" in workbench.methods("prune")
True
"""

from workbench.offline import keep_resources_local

keep_resources_local()  # before any pn.extension(): notebooks embed Panel's JS/CSS, no CDN

from workbench.errors import (CheckpointError, DataError, ParameterError,
                              UnsupportedLayerError, WorkbenchError)
from workbench.session import Session, Variant

__version__ = "0.1.0"


def methods(kind: str = "prune") -> list[str]:
    """Names of the registered methods of ``kind``: ``"prune"`` or ``"quantize"``."""
    if kind == "prune":
        from workbench.prune import PRUNERS

        return PRUNERS.names()
    if kind == "quantize":
        from workbench.quantize import QUANTIZERS

        return QUANTIZERS.names()
    raise ParameterError(f"kind must be 'prune' or 'quantize', got {kind!r}")


def load_model(source, arch=None, **kwargs):
    """Load a user model; see :func:`workbench.models.loading.load_model`."""
    from workbench.models.loading import load_model as _load

    return _load(source, arch=arch, **kwargs)


__all__ = ["Session", "Variant", "methods", "load_model", "WorkbenchError", "DataError",
           "CheckpointError", "ParameterError", "UnsupportedLayerError", "__version__"]
