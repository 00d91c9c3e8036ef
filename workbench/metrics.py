"""Everything reported about a variant: quality, sparsity, storage and compute."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from workbench.data import Dataset
from workbench.evaluate import evaluate
from workbench.flops import layer_macs
from workbench.storage import model_storage, other_parameter_bytes


@dataclass(frozen=True)
class Metrics:
    """Metrics of one variant on the session's test split.

    ``bytes_*`` count all parameters: compressible weights in the named format plus everything
    else (biases, BatchNorm) at fp32. ``bytes_compressed`` takes the smallest format per layer.
    """

    accuracy: float
    loss: float
    per_class_accuracy: tuple[float, ...]
    params: int
    nonzero_params: int
    sparsity: float
    layer_sparsity: dict
    bytes_dense: int
    bytes_csr: int
    bytes_bitmask: int
    bytes_compressed: int
    macs: int
    macs_nonzero: int
    bits: dict

    def as_row(self) -> dict:
        """The scalar metrics as a flat dict (one row of a comparison table)."""
        return {k: v for k, v in self.__dict__.items()
                if not isinstance(v, (dict, tuple))}


def compute_metrics(model: nn.Module, data: Dataset, masks=None, quant=None,
                    reference=None) -> Metrics:
    """Evaluate ``model`` on ``data``'s test split and measure its compressed size and MACs.

    ``reference`` (layer name → weight count of the uncompressed model) makes sparsity count
    weights that structured pruning removed physically; without it, sparsity counts zeros.

    Examples
    --------
    >>> from workbench.models import create_model
    >>> from workbench.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> m = compute_metrics(create_model("mlp", ds.input_shape, 10), ds)
    >>> m.sparsity
    0.0
    """
    ev = evaluate(model, data.x_test, data.y_test, data.num_classes)
    storage = model_storage(model, masks, quant)
    other = other_parameter_bytes(model)
    sizes = {n: max(s.numel, (reference or {}).get(n, 0)) for n, s in storage.items()}
    weights = sum(sizes.values())
    nonzero_w = sum(s.nonzero for s in storage.values())
    params = sum(p.numel() for p in model.parameters())
    macs = layer_macs(model, data.input_shape, masks)
    return Metrics(
        accuracy=ev.accuracy,
        loss=ev.loss,
        per_class_accuracy=ev.per_class_accuracy,
        params=params,
        nonzero_params=params - sum(s.numel for s in storage.values()) + nonzero_w,
        sparsity=1 - nonzero_w / weights if weights else 0.0,
        layer_sparsity={n: 1 - s.nonzero / sizes[n] for n, s in storage.items()},
        bytes_dense=4 * params,
        bytes_csr=other + sum(s.csr for s in storage.values()),
        bytes_bitmask=other + sum(s.bitmask for s in storage.values()),
        bytes_compressed=other + sum(s.best for s in storage.values()),
        macs=sum(d for d, _ in macs.values()),
        macs_nonzero=sum(nz for _, nz in macs.values()),
        bits={n: q.bits for n, q in (quant or {}).items()},
    )
