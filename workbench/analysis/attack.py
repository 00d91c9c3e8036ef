"""A universal adversarial perturbation from the active subspace of the input gradients.

Cui, Zhang et al. (SIMODS 2020, §4; ``AS_Attack.py`` in chunfengc/ASNet) perturb every input by
the same vector: the dominant eigenvector ``v₁`` of ``C = E[∇ₓℓ ∇ₓℓᵀ]``, the direction in which
the loss changes most on average. Its sign is arbitrary, so both are tried. This module computes
that single step (the reference's Algorithm 4.1 repeats it on the samples not yet fooled) and
compares it, at equal L2 norms, with

* a random direction (Gaussian, seeded; the mean over ``n_random`` of them), and
* a universal gradient-sign direction: ``sign(Σ_i sign(∇ₓℓ_i))``, the universal analogue of FGSM,
  rescaled to the same L2 norm.

The samples are split (seeded) into a *fit* part, which gives the directions and picks each
direction's better sign at each norm, and a held-out *eval* part on which success is reported.
Perturbed inputs are clipped to ``clip`` (``[0, 1]`` for images). Success rate = fraction of the
eval samples the model classified correctly that are misclassified after the perturbation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from workbench.analysis.subspace import (INPUT, _data, _positive, gradient_batches,
                                         subspace_from_gradients)
from workbench.cancel import step
from workbench.errors import DataError, ParameterError
from workbench.evaluate import predict_logits


@dataclass(frozen=True, eq=False)
class AttackCurve:
    """Success rates of universal perturbations of growing L2 norm.

    Attributes
    ----------
    norms : np.ndarray
        L2 norms of the perturbation (before clipping).
    success_as, success_random, success_sign : np.ndarray
        Success rate at each norm on the held-out samples: active-subspace direction, random
        directions (mean over ``meta["n_random"]``), universal gradient sign.
    perturbation : np.ndarray
        The unit-norm active-subspace direction, shaped like one input, with the sign chosen
        at the largest norm (``perturbation * norm`` is the attack).
    signs : dict
        ``"as"``, ``"sign"`` → the sign (±1) chosen at each norm on the fit samples.
    directions : dict
        ``"sign"`` → the unit gradient-sign direction; ``"random"`` → the random directions
        (``n_random`` × input shape).
    n_eval : int
        Held-out samples that were classified correctly (the denominator of the rates).
    meta : dict
        ``seed``, ``holdout``, ``n_fit``, ``n_random``, ``clip``, ``eigenvalues`` (leading
        input-gradient eigenvalues), ``clean_accuracy`` (held-out).
    """

    norms: np.ndarray
    success_as: np.ndarray
    success_random: np.ndarray
    success_sign: np.ndarray
    perturbation: np.ndarray = field(repr=False)
    signs: dict = field(default_factory=dict, repr=False)
    directions: dict = field(default_factory=dict, repr=False)
    n_eval: int = 0
    meta: dict = field(default_factory=dict, repr=False)


def _check_norms(norms) -> np.ndarray:
    try:
        arr = np.asarray(norms, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ParameterError(f"norms must be a sequence of non-negative numbers, got {norms!r}") \
            from None
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ParameterError(f"norms must be a non-empty sequence of finite numbers >= 0, got "
                             f"{norms!r}")
    return arr


def _fooled(model, x, y, correct, delta, clip, batch_size) -> float:
    """Fraction of the ``correct`` samples misclassified after adding ``delta``."""
    if not correct.any():
        return 0.0
    xs = x[correct] + delta
    if clip is not None:
        xs = xs.clamp(*clip)
    pred = predict_logits(model, xs, batch_size).argmax(1)
    return float((pred != y[correct]).float().mean())


def attack_curve(model, x=None, y=None, norms=(0.5, 1.0, 2.0, 3.0, 4.0), *, seed: int = 0,
                 holdout: float = 0.5, n_random: int = 5, clip=(0.0, 1.0), target="loss",
                 batch_size: int = 256) -> AttackCurve:
    """Universal attack success vs perturbation norm: active subspace, random and gradient sign.

    Parameters
    ----------
    model : nn.Module or Variant
        Never modified. A Variant without ``x, y`` brings its test split.
    x, y : torch.Tensor
        Inputs and integer labels.
    norms : sequence of float
        L2 norms of the perturbation.
    seed : int
        Seeds the fit/eval split and the random directions.
    holdout : float
        Fraction of samples held out for reporting (0: fit and report on all samples).
    n_random : int
        Random directions averaged for the baseline.
    clip : (low, high) or None
        Range the perturbed inputs are clipped to.
    target : {"loss", "logit"}, int or callable
        What the input gradients differentiate (see
        :func:`~workbench.analysis.subspace.active_subspace`).
    batch_size : int

    Returns
    -------
    AttackCurve

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> c = attack_curve(s.base, norms=[0.0, 2.0])
    >>> float(c.success_as[0]), bool(c.success_as[1] > c.success_random[1])
    (0.0, True)
    """
    if not isinstance(model, nn.Module) and hasattr(model, "data") and x is None and y is None:
        x, y = model.data.x_test, model.data.y_test
    module, x, y = _data(model, x, y)
    norms = _check_norms(norms)
    try:
        holdout = float(holdout)
    except (TypeError, ValueError):
        holdout = float("nan")
    if not 0.0 <= holdout < 1.0:
        raise ParameterError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    n_random = _positive(n_random, "n_random")
    batch_size = _positive(batch_size, "batch_size")
    if clip is not None:
        try:
            lo, hi = (float(c) for c in clip)
        except (TypeError, ValueError):
            raise ParameterError(f"clip must be a (low, high) pair or None, got {clip!r}") from None
        if not lo < hi:
            raise ParameterError(f"clip must satisfy low < high, got {clip!r}")
        clip = (lo, hi)

    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(x), generator=gen)
    n_fit = len(x) - int(round(holdout * len(x)))
    if holdout and (n_fit < 1 or n_fit == len(x)):
        raise DataError(f"{len(x)} samples are too few to hold out {holdout:.0%} of them")
    fit_idx = order[:n_fit]
    eval_idx = order[n_fit:] if holdout else order
    x_fit, y_fit, x_eval, y_eval = x[fit_idx], y[fit_idx], x[eval_idx], y[eval_idx]

    rows: list[torch.Tensor] = []
    gradient_batches(module, x_fit, y_fit, [INPUT], lambda g: rows.append(g[INPUT]),
                     target=target, batch_size=batch_size)
    G = torch.cat(rows)
    space = subspace_from_gradients(G, layer=INPUT, neuron_shape=tuple(x.shape[1:]), rank=8,
                                    seed=seed)
    shape = tuple(x.shape[1:])
    v_as = torch.as_tensor(space.eigenvectors[:, 0], dtype=x.dtype)
    v_sign = torch.sign(torch.sign(G).sum(0)).to(x.dtype)
    v_sign = v_sign / v_sign.norm().clamp_min(1e-12)
    v_rand = torch.randn(n_random, G.shape[1], generator=gen, dtype=torch.float64).to(x.dtype)
    v_rand = v_rand / v_rand.norm(dim=1, keepdim=True)

    fit_correct = predict_logits(module, x_fit, batch_size).argmax(1) == y_fit
    eval_correct = predict_logits(module, x_eval, batch_size).argmax(1) == y_eval

    def best(v: torch.Tensor, eps: float) -> tuple[float, int]:
        """Held-out success of ``±eps·v``, the sign chosen on the fit samples."""
        if eps == 0:
            return _fooled(module, x_eval, y_eval, eval_correct, 0.0, clip, batch_size), 1
        d = eps * v.reshape(shape)
        plus = _fooled(module, x_fit, y_fit, fit_correct, d, clip, batch_size)
        minus = _fooled(module, x_fit, y_fit, fit_correct, -d, clip, batch_size)
        sign = 1 if plus >= minus else -1
        return _fooled(module, x_eval, y_eval, eval_correct, sign * d, clip, batch_size), sign

    success = {"as": [], "random": [], "sign": []}
    signs = {"as": [], "sign": []}
    for eps in norms:
        step(1)  # a progress step: lets a CancelToken stop the work here
        rate, s = best(v_as, float(eps))
        success["as"].append(rate)
        signs["as"].append(s)
        rate, s = best(v_sign, float(eps))
        success["sign"].append(rate)
        signs["sign"].append(s)
        success["random"].append(float(np.mean([best(v, float(eps))[0] for v in v_rand])))
    as_sign = signs["as"][int(np.argmax(norms))]
    return AttackCurve(
        norms=norms,
        success_as=np.array(success["as"]),
        success_random=np.array(success["random"]),
        success_sign=np.array(success["sign"]),
        perturbation=(as_sign * v_as).reshape(shape).numpy(),
        signs={k: np.array(v) for k, v in signs.items()},
        directions={"sign": v_sign.reshape(shape).numpy(),
                    "random": v_rand.reshape(n_random, *shape).numpy()},
        n_eval=int(eval_correct.sum()),
        meta={"seed": int(seed), "holdout": holdout, "n_fit": int(n_fit),
              "n_random": n_random, "clip": clip, "eigenvalues": space.eigenvalues.tolist(),
              "active_dim": space.active_dim,
              "clean_accuracy": float(eval_correct.float().mean())},
    )


__all__ = ["AttackCurve", "attack_curve"]
