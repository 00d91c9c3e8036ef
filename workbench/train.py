"""Training and fine-tuning loops (seeded, progress bar, masks kept at zero)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from workbench.cancel import tqdm
from workbench.errors import ParameterError


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None):
    """Yield ``(x, y)`` mini-batches, shuffled with ``generator`` (in order if None)."""
    order = torch.randperm(len(x), generator=generator) if generator is not None else None
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        yield x[idx], y[idx]


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> None:
    """Zero the weights of ``model`` where ``masks[layer_name]`` is False (in place)."""
    if not masks:
        return
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask.to(modules[name].weight.dtype))


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    masks: Mapping[str, torch.Tensor] | None = None,
    weight_decay: float = 0.0,
    progress: bool | str = True,
    step_callback=None,
) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy; returns it in eval mode.

    Pruned weights (``masks`` False) stay exactly zero: the masks are re-applied after every
    optimizer step. ``step_callback(model)`` runs after each step (ADMM uses it).

    Examples
    --------
    >>> import torch
    >>> from workbench.models import create_model
    >>> m = create_model("mlp", (4,), 2)
    >>> x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
    >>> _ = fit(m, x, y, epochs=5, progress=False)
    """
    if epochs < 0:
        raise ParameterError(f"epochs must be >= 0, got {epochs}")
    if epochs == 0:
        return model.eval()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    desc = progress if isinstance(progress, str) else "training"
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for xb, yb in batches(x, y, batch_size, gen):
                opt.zero_grad(set_to_none=True)
                loss_fn(model(xb), yb).backward()
                opt.step()
                apply_masks_(model, masks)
                if step_callback is not None:
                    step_callback(model)
                bar.update()
    bar.close()
    return model.eval()
