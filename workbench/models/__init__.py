"""Model architectures (a registry), the embedded default model, and loading user models."""

from workbench.models.registry import MODELS, create_model, register_model
from workbench.models import zoo as _zoo  # noqa: F401  (registers the architectures)

__all__ = ["MODELS", "create_model", "register_model"]
