"""How much each layer alone matters: the accuracy lost when only that layer is pruned."""

from __future__ import annotations

from workbench.errors import ParameterError
from workbench.evaluate import evaluate
from workbench.prune import PRUNERS, prunable_layers

SPLITS = ("val", "test")


def layer_sensitivity(session, sparsity: float = 0.5, *, variant: str | None = None,
                      split: str = "val") -> dict[str, float]:
    """Accuracy drop of each prunable layer when it alone is magnitude-pruned to ``sparsity``.

    For every Conv2d/Linear layer, ``PRUNERS["magnitude"]`` prunes that layer (``exclude=`` all
    the others) and the result is evaluated; the value is ``accuracy(variant) - accuracy(pruned)``
    as a fraction (0.01 = one percentage point; negative if pruning the layer helps).

    Parameters
    ----------
    session : workbench.Session
    sparsity : float
        Fraction of the layer's weights removed, in [0, 1).
    variant : str, optional
        Whose layers to probe (default: the base model).
    split : {"val", "test"}
        Evaluation split. The validation split (default) keeps the test split for final numbers
        and falls back to the test split when the dataset has no validation samples.

    Returns
    -------
    dict
        Layer name → accuracy drop, in the model's layer order.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> drops = layer_sensitivity(s, 0.5)
    >>> list(drops)
    ['features.0', 'features.3', 'classifier.0', 'classifier.2', 'fc']
    >>> all(-1 <= d <= 1 for d in drops.values())
    True
    """
    if split not in SPLITS:
        raise ParameterError(f"split must be one of {SPLITS}, got {split!r}")
    data = session.data
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if len(y) == 0:
        x, y = data.x_test, data.y_test
    model = session[variant or "base"].model
    reference = evaluate(model, x, y, data.num_classes).accuracy
    names = list(prunable_layers(model))
    drops = {}
    for name in names:
        pruned = PRUNERS["magnitude"](model, sparsity, exclude=[n for n in names if n != name],
                                      seed=session.seed)
        drops[name] = reference - evaluate(pruned.model, x, y, data.num_classes).accuracy
    return drops
