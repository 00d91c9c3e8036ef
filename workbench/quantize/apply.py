"""Apply a per-weight quantizer to every Conv2d/Linear layer of a copy of a model.

Every quantization method is a function ``quantize_weight(weight, bits, mask) ->
QuantizedTensor`` handed to :func:`quantize_model`, which does the shared work: choose the
layers (``exclude``), check masks and per-layer bit widths, copy the model, write the
de-quantized weights into the copy, report the error and optionally calibrate activations.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from workbench.errors import ParameterError, UnsupportedLayerError
from workbench.quantize.activations import check_calibration, install_activation_quant_
from workbench.quantize.base import Quantized, QuantizedTensor, check_bits
from workbench.quantize.error import quantization_error

QUANTIZABLE_TYPES = (nn.Conv2d, nn.Linear)


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def quantizable_layers(model: nn.Module, exclude: Iterable[str] = (),
                       method: str = "quantization") -> dict[str, nn.Module]:
    """Conv2d and Linear layers of ``model`` by name, minus ``exclude`` (names or prefixes).

    Any other layer holding a weight matrix (Conv1d, Embedding, LSTM, …) raises
    :class:`UnsupportedLayerError` unless excluded; 1-D parameters (biases, norms) stay float.

    Examples
    --------
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(4, 4), nn.Embedding(3, 4))
    >>> list(quantizable_layers(m, exclude=["1"]))
    ['0']
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = tuple(exclude or ())
    modules = dict(model.named_modules())
    unknown = [e for e in exclude if e not in modules]
    if unknown:
        known = [n for n, m in modules.items() if isinstance(m, QUANTIZABLE_TYPES)]
        raise ParameterError(f"exclude names unknown layers {unknown}; quantizable layers are "
                             f"{known}")
    layers = {}
    for name, m in modules.items():
        if _excluded(name, exclude):
            continue
        if isinstance(m, QUANTIZABLE_TYPES):
            layers[name] = m
        elif any(p.ndim >= 2 for p in m.parameters(recurse=False)):
            raise UnsupportedLayerError(
                f"{method} cannot quantize layer {name!r} ({type(m).__name__}): only Conv2d and "
                f"Linear weights are supported; pass exclude=[{name!r}] to keep it in float"
            )
    if not layers:
        raise UnsupportedLayerError(
            "the model has no Conv2d or Linear layer left to quantize after exclusions"
        )
    return layers


def _check_masks(masks, model: nn.Module) -> dict[str, torch.Tensor]:
    if not masks:
        return {}
    modules = dict(model.named_modules())
    out = {}
    for name, mask in masks.items():
        weight = getattr(modules.get(name), "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ParameterError(f"masks name {name!r}, which is not a layer with a weight")
        mask = torch.as_tensor(mask)
        if mask.shape != weight.shape:
            raise ParameterError(f"the mask of {name!r} has shape {tuple(mask.shape)} but its "
                                 f"weight has shape {tuple(weight.shape)}")
        out[name] = mask.bool()
    return out


def _layer_bits(bits, per_layer_bits, names, supported, method) -> dict[str, int]:
    per_layer_bits = dict(per_layer_bits or {})
    unknown = sorted(set(per_layer_bits) - set(names))
    if unknown:
        raise ParameterError(f"per_layer_bits names {unknown}, which are not quantized layers; "
                             f"they are {list(names)}")
    default = check_bits(bits, supported, method)
    return {n: (check_bits(per_layer_bits[n], supported, f"{method} (layer {n!r})")
                if n in per_layer_bits else default) for n in names}


def quantize_model(
    model: nn.Module,
    quantize_weight: Callable[[torch.Tensor, int, torch.Tensor | None], QuantizedTensor],
    bits,
    *,
    supported: tuple[int, ...],
    method: str,
    exclude: Iterable[str] = (),
    masks: Mapping[str, torch.Tensor] | None = None,
    per_layer_bits: Mapping[str, int] | None = None,
    data=None,
    activations: bool = False,
    calibration_batches: int = 8,
    info: dict | None = None,
) -> Quantized:
    """Quantize a copy of ``model`` layer by layer with ``quantize_weight``.

    ``quantize_weight`` receives the weight with masked entries already zeroed, the layer's bit
    width and the mask (or ``None``); it must keep masked entries at exactly zero.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from workbench.quantize.base import QuantizedTensor
    >>> def halves(w, b, mask):  # round to multiples of 0.5
    ...     return QuantizedTensor(torch.round(w * 2), torch.tensor([0.5]), torch.tensor([0]), b)
    >>> q = quantize_model(nn.Linear(3, 2), halves, 4, supported=(4,), method="halves")
    >>> sorted(q.layers), sorted(q.info["error"][""])
    ([''], ['bits', 'max_abs', 'mse', 'rel'])
    """
    if not isinstance(activations, bool):
        raise ParameterError(f"activations must be True or False, got {activations!r}")
    if activations:
        check_calibration(data, calibration_batches)
    layers = quantizable_layers(model, exclude, method)
    masks = _check_masks(masks, model)
    layer_bits = _layer_bits(bits, per_layer_bits, list(layers), supported, method)
    out = copy.deepcopy(model).eval()
    modules = dict(out.named_modules())
    quantized, errors = {}, {}
    with torch.no_grad():
        for name in layers:
            module = modules[name]
            mask = masks.get(name)
            original = module.weight.detach().clone()
            weight = original if mask is None else original * mask
            qt = quantize_weight(weight, layer_bits[name], mask)
            values = qt.dequantize()
            if mask is not None and bool(values[~mask].any()):  # a method bug, not a user error
                raise RuntimeError(f"{method} did not keep the pruned weights of {name!r} at zero")
            module.weight.copy_(values)
            quantized[name] = qt
            errors[name] = quantization_error(original, values, qt.bits)
    result_info = {**(info or {}), "bits": {n: qt.bits for n, qt in quantized.items()},
                   "excluded": sorted(n for n, m in modules.items()
                                      if isinstance(m, QUANTIZABLE_TYPES) and n not in layers),
                   "error": errors}
    if activations:
        result_info["activations"] = install_activation_quant_(out, list(layers), data,
                                                               calibration_batches)
    return Quantized(out, quantized, result_info)
