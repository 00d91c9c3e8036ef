"""Model architectures (a registry), the embedded default model, and loading user models."""

from workbench.models.registry import MODELS, create_model, register_model
from workbench.models import zoo as _zoo  # noqa: F401  (registers the architectures)
from workbench.models.loading import load_model

__all__ = ["MODELS", "create_model", "load_model", "register_model"]
