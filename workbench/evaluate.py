"""Accuracy, loss and per-class accuracy of a model on labelled inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from workbench.errors import DataError


@dataclass(frozen=True)
class Evaluation:
    """Classification quality on one set of samples."""

    accuracy: float
    loss: float
    per_class_accuracy: tuple[float, ...]
    n: int


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Logits of ``model`` for ``x`` in eval mode, batched, without autograd."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outs = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    except RuntimeError as err:
        raise DataError(
            f"the model cannot process inputs shaped {tuple(x.shape[1:])}: {str(err).splitlines()[0]}"
        ) from err
    finally:
        model.train(was_training)
    return torch.cat(outs)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None,
             batch_size: int = 2048) -> Evaluation:
    """Evaluate ``model`` on ``(x, y)``.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> ev = evaluate(m, torch.randn(10, 2), torch.zeros(10, dtype=torch.long))
    >>> 0 <= ev.accuracy <= 1
    True
    """
    logits = predict_logits(model, x, batch_size)
    num_classes = num_classes or logits.shape[1]
    if logits.ndim != 2 or logits.shape[1] < num_classes:
        raise DataError(
            f"the model outputs shape {tuple(logits.shape[1:])}, expected {num_classes} class scores"
        )
    loss = float(F.cross_entropy(logits, y))
    correct = logits.argmax(1) == y
    per_class = []
    for c in range(num_classes):
        m = y == c
        per_class.append(float(correct[m].float().mean()) if m.any() else float("nan"))
    return Evaluation(float(correct.float().mean()), loss, tuple(per_class), len(y))
