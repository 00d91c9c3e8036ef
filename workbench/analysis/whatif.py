"""A quick robustness and geometry summary of a candidate model, for the live what-if preview.

:func:`whatif_summary` measures, on a small fixed sample of the test split (seeded), the error
under a handful of common corruptions at one middle severity and the feature geometry of the
penultimate layer (:mod:`workbench.analysis.geometry`): mean signed margin, the fraction of
negative margins, mean feature length and mean angle to the true class direction. The corrupted
images do not depend on the model, so they are made once per dataset and settings
(:func:`probe_set`, memoised) and a summary costs one forward pass over ``(1 + corruptions) ×
samples`` images: a few milliseconds for the default LeNet-5 on digits.

"Mean corruption error" here is the mean top-1 error over the corruptions at that severity
(unnormalised); :meth:`WhatIf.mce` normalises it by a baseline's errors like Hendrycks &
Dietterich's mCE, restricted to this one severity.

Examples
--------
>>> import workbench
>>> s = workbench.Session.default(progress=False)
>>> w = whatif_summary(s.base)
>>> w.samples, w.severity, len(w.errors)
(256, 3, 5)
>>> 0 <= w.clean_error <= w.mean_corruption_error <= 1
True
>>> whatif_summary(s.base) == w  # deterministic for a seed
True
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from workbench.errors import DataError, ParameterError

#: Corruptions every channel count supports, one or two per family (noise, blur, digital,
#: weather); ``fog`` is the slowest (~0.2 s for 360 digits), paid once per dataset.
DEFAULT_CORRUPTIONS = ("shot_noise", "impulse_noise", "motion_blur", "brightness", "fog")
DEFAULT_SEVERITY = 3
DEFAULT_SAMPLES = 256

_probe_lock = threading.Lock()
_probes: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class ProbeSet:
    """The clean and corrupted images a what-if summary is measured on.

    Attributes
    ----------
    x : torch.Tensor
        The clean sample of the test split, ``(samples, C, H, W)``.
    y : torch.Tensor
        Its labels.
    corrupted : tuple of torch.Tensor
        ``x`` under each corruption, in the order of ``corruptions``.
    corruptions : tuple of str
    severity, seed : int
    indices : tuple of int
        Positions of the sample in the test split.
    """

    x: torch.Tensor = field(repr=False)
    y: torch.Tensor = field(repr=False)
    corrupted: tuple = field(repr=False)
    corruptions: tuple = ()
    severity: int = DEFAULT_SEVERITY
    seed: int = 0
    indices: tuple = field(default=(), repr=False)


def sample_indices(n: int, samples: int, seed: int) -> list[int]:
    """``samples`` seeded positions out of ``n`` in ascending order (all of them if fewer).

    Examples
    --------
    >>> sample_indices(5, 10, 0)
    [0, 1, 2, 3, 4]
    >>> len(sample_indices(100, 8, 0)), sample_indices(100, 8, 0) == sample_indices(100, 8, 0)
    (8, True)
    """
    if samples >= n:
        return list(range(n))
    gen = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=gen)[:samples].tolist())


def _check_settings(corruptions, severity, samples, seed) -> tuple:
    from workbench.corruptions.base import check_seed, check_severity

    if isinstance(corruptions, str):
        corruptions = (corruptions,)
    corruptions = tuple(corruptions)
    if not corruptions:
        raise ParameterError("a what-if summary needs at least one corruption")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ParameterError(f"samples must be a positive integer, got {samples!r}")
    return corruptions, check_severity(severity), int(samples), check_seed(seed)


def probe_set(data, corruptions=DEFAULT_CORRUPTIONS, severity: int = DEFAULT_SEVERITY,
              samples: int = DEFAULT_SAMPLES, seed: int = 0) -> ProbeSet:
    """The seeded test sample of ``data`` and its corrupted copies (memoised per dataset).

    Examples
    --------
    >>> from workbench.data import load_dataset
    >>> p = probe_set(load_dataset("digits"), ["rotate"], samples=10)
    >>> tuple(p.x.shape), len(p.corrupted), p.corruptions
    ((10, 1, 8, 8), 1, ('rotate',))
    """
    from workbench.analysis.robustness import check_corruptions
    from workbench.corruptions import CORRUPTIONS
    from workbench.corruptions.base import check_images

    key = _check_settings(corruptions, severity, samples, seed)
    names, severity, samples, seed = key
    if not hasattr(data, "x_test") or len(data.y_test) == 0:
        raise DataError("a what-if summary needs a dataset with a non-empty test split")
    with _probe_lock:
        cached = _probes.get(data, {}).get(key)
    if cached is not None:
        return cached
    idx = sample_indices(len(data.y_test), samples, seed)
    x, _ = check_images(data.x_test[idx])
    names = check_corruptions(names, x)
    corrupted = tuple(CORRUPTIONS[c](x, severity, seed=seed) for c in names)
    probe = ProbeSet(x, torch.as_tensor(data.y_test[idx]).long(), corrupted, names, severity,
                     seed, tuple(idx))
    with _probe_lock:
        _probes.setdefault(data, {})[key] = probe
    return probe


@dataclass(frozen=True)
class WhatIf:
    """Robustness and geometry summary of one model on a :class:`ProbeSet`.

    Attributes
    ----------
    clean_error : float
        Top-1 error on the clean sample.
    errors : tuple of (str, float)
        Error under each corruption at ``severity``.
    mean_corruption_error : float
        Mean of ``errors`` (unnormalised; see :meth:`mce` for the normalised mCE).
    mean_margin : float
        Mean signed margin of the penultimate features (finite margins only).
    negative_margin_fraction : float
        Fraction of samples with a negative margin (misclassified by the final layer).
    mean_length : float
        Mean feature length ``||h||``.
    mean_angle : float
        Mean angle (degrees) between ``h`` and the true class direction (``nan`` ignored).
    samples, severity, seed : int
    """

    clean_error: float
    errors: tuple
    mean_corruption_error: float
    mean_margin: float
    negative_margin_fraction: float
    mean_length: float
    mean_angle: float
    samples: int
    severity: int
    seed: int

    @property
    def corruptions(self) -> tuple:
        return tuple(c for c, _ in self.errors)

    def mce(self, baseline: "WhatIf") -> float:
        """``mean_c E_c / E_base_c`` over the corruptions the baseline gets wrong at all
        (``nan`` if it gets none wrong): 1.0 is as robust as the baseline.

        Examples
        --------
        >>> a = WhatIf(0, (("x", 0.2), ("y", 0.3)), 0.25, 1, 0, 1, 30, 10, 3, 0)
        >>> b = WhatIf(0, (("x", 0.1), ("y", 0.3)), 0.2, 1, 0, 1, 30, 10, 3, 0)
        >>> a.mce(b)
        1.5
        """
        if self.corruptions != baseline.corruptions or self.severity != baseline.severity \
                or self.samples != baseline.samples or self.seed != baseline.seed:
            raise ParameterError("the baseline was measured on other corruptions or samples")
        ratios = [e / b for (_, e), (_, b) in zip(self.errors, baseline.errors) if b > 0]
        return float(np.mean(ratios)) if ratios else float("nan")


def _module(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if hasattr(model, "model") and isinstance(model.model, nn.Module):
        return model.model
    raise ParameterError(f"expected a torch.nn.Module or a workbench Variant, got "
                         f"{type(model).__name__}")


def whatif_summary(model, data=None, *, corruptions=DEFAULT_CORRUPTIONS,
                   severity: int = DEFAULT_SEVERITY, samples: int = DEFAULT_SAMPLES,
                   seed: int = 0, threads: int | None = 1) -> WhatIf:
    """Corruption errors and penultimate-layer geometry of ``model`` on a small fixed sample.

    Parameters
    ----------
    model : nn.Module or Variant
        Never modified. A Variant supplies its data when ``data`` is omitted.
    data : Dataset, optional
        Its test split is sampled.
    corruptions : sequence of str
        Registered corruptions the images' channels support.
    severity : int
        One severity (1..5) for all of them.
    samples : int
        Test images used (seeded; all of them if the split is smaller).
    seed : int
        Seeds the sample and the corruptions.
    threads : int or None
        Intra-op threads while predicting (restored afterwards); 1 suits the small models
        and busy machines this runs on (see :func:`workbench.analysis.robustness.corruption_errors`).

    Returns
    -------
    WhatIf
        Equal for equal inputs.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> dense = whatif_summary(s.base)
    >>> pruned = whatif_summary(s.prune("magnitude", sparsity=0.9))
    >>> pruned.mean_corruption_error > dense.mean_corruption_error
    True
    """
    from workbench.analysis.geometry import features_and_logits, geometry_from_features
    from workbench.analysis.robustness import intra_op_threads
    from workbench.evaluate import predict_logits

    module = _module(model)
    if data is None:
        data = getattr(model, "data", None)
    if data is None:
        raise DataError("pass data=<workbench Dataset> (a Variant supplies its own)")
    probe = probe_set(data, corruptions, severity, samples, seed)
    labels = probe.y.numpy()
    with intra_op_threads(threads):
        name, h, logits = features_and_logits(module, probe.x)
        fc = dict(module.named_modules())[name]
        bias = fc.bias.detach() if fc.bias is not None else torch.zeros(fc.out_features)
        g = geometry_from_features(h.double().numpy(), fc.weight.detach().double().numpy(),
                                   bias.double().numpy(), labels, logits.double().numpy(), name)
        errors = tuple((c, float((predict_logits(module, xc).argmax(1).numpy() != labels).mean()))
                       for c, xc in zip(probe.corruptions, probe.corrupted))
    margin = np.asarray(g.margin)
    finite = margin[np.isfinite(margin)]
    angle = np.asarray(g.angle)
    return WhatIf(
        clean_error=float((np.asarray(g.predictions) != labels).mean()),
        errors=errors,
        mean_corruption_error=float(np.mean([e for _, e in errors])),
        mean_margin=float(finite.mean()) if len(finite) else float("nan"),
        negative_margin_fraction=float((margin < 0).mean()),
        mean_length=float(np.mean(g.length)),
        mean_angle=float(np.nanmean(angle)) if np.isfinite(angle).any() else float("nan"),
        samples=len(labels), severity=probe.severity, seed=probe.seed)


__all__ = ["WhatIf", "whatif_summary", "ProbeSet", "probe_set", "sample_indices",
           "DEFAULT_CORRUPTIONS", "DEFAULT_SEVERITY", "DEFAULT_SAMPLES"]
