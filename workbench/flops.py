"""Multiply-accumulate counts (dense and effective-sparse) of Conv2d and Linear layers."""

from __future__ import annotations

import torch
from torch import nn


def layer_macs(model: nn.Module, input_shape, masks=None) -> dict[str, tuple[int, int]]:
    """Per layer ``(dense MACs, MACs on nonzero weights)`` for one input sample.

    Measured with forward hooks on a single zero input; the hooks are always removed.

    Examples
    --------
    >>> from torch import nn
    >>> layer_macs(nn.Sequential(nn.Linear(3, 2)), (3,))
    {'0': (6, 6)}
    """
    masks = masks or {}
    out: dict[str, tuple[int, int]] = {}
    handles = []

    def hook(name):
        def record(module, inputs, output):
            w = module.weight
            nz = int(masks[name].sum()) if name in masks else int((w != 0).sum())
            per_weight = output[0].numel() // w.shape[0] if isinstance(module, nn.Conv2d) else 1
            out[name] = (w.numel() * per_weight, nz * per_weight)
        return record

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return out
