"""Registry of model architectures: ``create_model("lenet5", input_shape, num_classes)``."""

from __future__ import annotations

from torch import nn

from workbench.errors import ParameterError
from workbench.registry import Registry

MODELS: Registry = Registry("model architecture")
register_model = MODELS.register


def create_model(name: str, input_shape=(1, 8, 8), num_classes: int = 10, seed: int = 0,
                 **params) -> nn.Module:
    """Build a registered architecture with seeded initial weights.

    Examples
    --------
    >>> m = create_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    >>> sum(p.numel() for p in m.parameters()) > 0
    True
    """
    import torch

    input_shape = tuple(int(s) for s in input_shape)
    if num_classes < 2:
        raise ParameterError(f"num_classes must be at least 2, got {num_classes}")
    factory = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(input_shape=input_shape, num_classes=num_classes, **params)
    model.workbench_arch = {"name": name, "input_shape": list(input_shape),
                            "num_classes": num_classes, "params": dict(params)}
    return model.eval()
