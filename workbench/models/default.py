"""The embedded default: a LeNet-5 style CNN trained on scikit-learn's digits.

Trained on first use (a few seconds, with a progress bar) and cached on disk, keyed by
architecture, data fingerprint, seed and training settings, so the second start is instant.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.cache import atomic_write_bytes, cache_dir, cache_key
from workbench.data import Dataset, load_dataset
from workbench.models.registry import create_model
from workbench.train import fit

DEFAULT_ARCH = "lenet5"
DEFAULT_TRAINING = {"epochs": 40, "lr": 3e-3, "batch_size": 64}


def trained_model(arch: str, data: Dataset, seed: int = 0, progress: bool = True,
                  **training) -> nn.Module:
    """A ``arch`` model trained on ``data.train``, loaded from the disk cache when present.

    Examples
    --------
    >>> from workbench.data import load_dataset
    >>> m = trained_model("mlp", load_dataset("digits"), epochs=2, progress=False)
    >>> m.fc.out_features
    10
    """
    settings = {**DEFAULT_TRAINING, **training}
    key = cache_key(kind="trained", arch=arch, data=data.fingerprint(), seed=seed,
                    torch=torch.__version__.split("+")[0], **settings)
    path = cache_dir("models") / f"{arch}-{data.name}-{key}.safetensors"
    model = create_model(arch, data.input_shape, data.num_classes, seed=seed)
    if path.exists():
        from safetensors.torch import load

        try:
            model.load_state_dict(load(path.read_bytes()))
            return model.eval()
        except Exception:  # a damaged cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    fit(model, data.x_train, data.y_train, seed=seed,
        progress=f"training {arch} on {data.name}" if progress else False, **settings)
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model.eval()


def default_model_and_data(seed: int = 0, progress: bool = True) -> tuple[nn.Module, Dataset]:
    """The embedded default: ``(trained lenet5, digits dataset)``."""
    data = load_dataset("digits", seed=seed)
    return trained_model(DEFAULT_ARCH, data, seed=seed, progress=progress), data
