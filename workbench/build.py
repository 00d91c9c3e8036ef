"""Turn a :class:`~workbench.recipe.Recipe` into a :class:`~workbench.session.Variant`."""

from __future__ import annotations

import inspect

from workbench.data import Dataset
from workbench.errors import ParameterError, WorkbenchError
from workbench.recipe import Recipe

FINETUNE_KEYS = ("finetune_epochs", "finetune_lr")


def check_params(fn, params: dict, method: str, fixed=()) -> None:
    """Refuse parameters ``fn`` does not take, listing the ones it does."""
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [n for n, p in sig.parameters.items()
                if p.kind is p.KEYWORD_ONLY and n not in fixed]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ParameterError(f"{method} does not take {unknown}; it accepts {accepted}")


def _run(method: str, call):
    try:
        return call()
    except WorkbenchError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as err:
        raise WorkbenchError(
            f"{method} failed on this model: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def build_variant(recipe: Recipe, parent, data: Dataset):
    """Run the recipe's method on ``parent`` (never modified) and return the new Variant."""
    from workbench.session import Variant
    from workbench.storage import weight_sizes

    params = dict(recipe.params)
    reference = parent.reference or weight_sizes(parent.model)
    if recipe.kind == "prune":
        from workbench.prune import PRUNERS
        from workbench.prune.base import check_sparsity, positive_float, positive_int
        from workbench.train import apply_masks_, fit

        entry = PRUNERS[recipe.method]
        sparsity = check_sparsity(params.pop("sparsity", 0.5))
        epochs = positive_int(params.pop("finetune_epochs", 0), "finetune_epochs", minimum=0)
        lr = positive_float(params.pop("finetune_lr", 1e-3), "finetune_lr")
        check_params(entry.fn, params, f"pruning method {recipe.method!r}", fixed=("data", "seed"))
        pruned = _run(recipe.method, lambda: entry(parent.model, sparsity, data=data,
                                                   seed=recipe.seed, **params))
        masks = dict(pruned.masks)
        if entry.structured and parent.masks:
            # channels were removed, so the parent's masks no longer fit the weights; the
            # sliced weights keep their zeros, which become the masks
            layers = dict(pruned.model.named_modules())
            masks = {n: layers[n].weight.detach() != 0 for n in parent.masks if n in layers}
        elif masks and parent.masks:  # weights pruned earlier stay pruned
            masks = {n: m & parent.masks[n] if n in parent.masks else m for n, m in masks.items()}
            masks.update({n: m for n, m in parent.masks.items() if n not in masks})
            apply_masks_(pruned.model, masks)
        if epochs:
            fit(pruned.model, data.x_train, data.y_train, epochs=epochs, lr=lr, seed=recipe.seed,
                masks=masks, progress=f"fine-tuning {recipe.name}")
        return Variant(recipe.name, recipe, pruned.model, data, masks, {}, dict(pruned.info),
                       reference)
    if recipe.kind == "quantize":
        from workbench.quantize import QUANTIZERS
        from workbench.quantize.base import check_bits

        entry = QUANTIZERS[recipe.method]
        bits = params.pop("bits", entry.bits[0])
        if "per_layer_bits" not in params:
            bits = check_bits(bits, entry.bits, f"quantization method {recipe.method!r}")
        check_params(entry.fn, params, f"quantization method {recipe.method!r}",
                     fixed=("data", "seed", "masks"))
        q = _run(recipe.method, lambda: entry(parent.model, bits, data=data, seed=recipe.seed,
                                              masks=parent.masks or None, **params))
        return Variant(recipe.name, recipe, q.model, data, dict(parent.masks), dict(q.layers),
                       dict(q.info), reference)
    raise ParameterError(f"unknown recipe kind {recipe.kind!r}")
