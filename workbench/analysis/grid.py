"""Evaluate one model at many points of its parameter space at once.

Point ``p`` of a grid is the state ``θ + Σ_j coords[p, j] · d_j``. Instead of copying the model or
loading a ``state_dict`` per point (the loss-landscapes approach), a chunk of points is built as
one batched tensor per varying parameter and evaluated with ``torch.func.functional_call`` under
``torch.func.vmap`` (mode ``"vmap"``), or point by point with ``functional_call`` (mode
``"loop"``). Parameters and buffers that no direction moves are shared, unbatched. The model is
evaluated in eval mode (BatchNorm uses its running statistics) on a private copy, so the caller's
module is never touched, not even temporarily.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F
from workbench.cancel import tqdm  # tqdm.auto, stoppable by a CancelToken

from workbench.errors import DataError, ParameterError

MODES = ("auto", "vmap", "loop")
#: Sample evaluations per vmapped call when ``chunk`` is chosen automatically.
TARGET_WORK = 4096
MAX_CHUNK = 64


def check_data(model: nn.Module, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` as tensors of the model's dtype and int64, or a clear :class:`DataError`."""
    if x is None or y is None:
        raise DataError("pass inputs x and labels y (or a Variant, whose test split is used)")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"x has {len(x)} samples and y has {len(y)}; they must match and be > 0")
    if y.ndim != 1:
        raise DataError(f"labels y must be a 1-D vector of class indices, got shape {tuple(y.shape)}")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return x.to(dtype), y.long()


def activation_bytes(model: nn.Module, x1: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one sample (plus the input): a memory estimate."""
    total = [x1.numel() * x1.element_size()]

    def hook(_module, _inputs, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if torch.is_tensor(t):
                total[0] += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x1)
    except RuntimeError as err:
        raise DataError(f"the model cannot process inputs shaped {tuple(x1.shape[1:])}: "
                        f"{str(err).splitlines()[0]}") from err
    finally:
        for h in handles:
            h.remove()
    return total[0]


def chunk_memory_mb(act_bytes: int, param_bytes: int, chunk: int, batch: int) -> float:
    """Estimated peak memory (MB) of evaluating ``chunk`` points on ``batch`` samples at once.

    Two copies of all activations per (point, sample) (vmap's reshapes copy some) plus the
    batched parameters.

    Examples
    --------
    >>> chunk_memory_mb(act_bytes=2 ** 19, param_bytes=0, chunk=2, batch=4)
    8.0
    """
    return (2 * chunk * batch * act_bytes + chunk * param_bytes) / 2 ** 20


def evaluate_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, coords,
                    directions: Sequence[Mapping[str, torch.Tensor]], *,
                    batch_size: int | None = None, chunk: int | None = None,
                    max_memory_mb: float = 1024.0, mode: str = "auto", progress=True,
                    desc: str = "landscape") -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean cross-entropy and accuracy of ``model`` moved to each point of ``coords``.

    Parameters
    ----------
    model : nn.Module
        Not modified (a private eval-mode copy is used).
    x, y : torch.Tensor
        Inputs and integer labels.
    coords : array-like, shape (n_points, k)
        Point ``p`` is ``state + Σ_j coords[p, j] * directions[j]``.
    directions : sequence of k dicts
        Parameter (or floating buffer) name → tensor; missing names do not move.
    batch_size : int, optional
        Samples per forward pass (default: all, at most 1024).
    chunk : int, optional
        Grid points per vmapped call (default: as many as keep ``chunk * batch_size`` near
        ``TARGET_WORK`` and the estimate under ``max_memory_mb``).
    max_memory_mb : float
        Refuse (:class:`ParameterError` with the estimate) if a chunk would need more.
    mode : {"auto", "vmap", "loop"}
        ``"auto"`` evaluates the first chunk with vmap and the second point by point, keeps the
        faster for the rest (vmap wins for small per-point work, the loop for large convolutions,
        where vmap's grouped convolutions are slower), and falls back to the loop if the model has
        an operation vmap cannot batch. The two modes agree to float rounding.
    progress : bool or str
        Show a tqdm bar (a string is its description).

    Returns
    -------
    loss, accuracy : np.ndarray, shape (n_points,)
    info : dict
        ``mode`` (the one used for most points), ``chunk``, ``batch_size``, ``memory_mb``
        (estimate), ``seconds``, ``points_per_second``, ``calibration`` (seconds per point of
        each mode, when ``"auto"`` timed them).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Linear(2, 2)
    >>> x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    >>> d = {"weight": torch.ones(2, 2)}
    >>> loss, acc, info = evaluate_points(net, x, y, [[0.0], [1.0]], [d], progress=False)
    >>> bool(abs(loss[0] - torch.nn.functional.cross_entropy(net(x), y).item()) < 1e-6)
    True
    """
    if mode not in MODES:
        raise ParameterError(f"mode must be one of {MODES}, got {mode!r}")
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != len(directions):
        raise ParameterError(f"coords must be shaped (n_points, {len(directions)}), got "
                             f"{coords.shape}")
    if not np.isfinite(coords).all():
        raise ParameterError("grid coordinates must be finite")
    x, y = check_data(model, x, y)
    template = copy.deepcopy(model).eval()
    for p in template.parameters():
        p.requires_grad_(False)
    state = {**dict(template.named_parameters()), **dict(template.named_buffers())}
    varying = [n for n in state if any(n in d and bool(d[n].any()) for d in directions)]
    fixed = {n: t for n, t in state.items() if n not in varying}
    dirs = [{n: d[n].to(state[n].dtype) for n in varying if n in d} for d in directions]
    n_points, n = len(coords), len(x)

    batch = min(n, 1024) if batch_size is None else int(batch_size)
    if batch < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch = min(batch, n)
    act = activation_bytes(template, x[:1])
    pbytes = sum(state[v].numel() * state[v].element_size() for v in varying)
    if chunk is None:
        per_point = chunk_memory_mb(act, pbytes, 1, batch)
        chunk = max(1, min(MAX_CHUNK, TARGET_WORK // batch, n_points,
                           int(max_memory_mb // per_point) if per_point > 0 else MAX_CHUNK))
    elif not isinstance(chunk, int) or chunk < 1:
        raise ParameterError(f"chunk must be a positive integer, got {chunk!r}")
    chunk = min(chunk, max(n_points, 1))
    memory = chunk_memory_mb(act, pbytes, chunk, batch)
    if memory > max_memory_mb:
        raise ParameterError(
            f"evaluating {chunk} grid point(s) on {batch} samples at once needs about "
            f"{memory:.0f} MB, more than max_memory_mb={max_memory_mb:g}; lower batch_size or "
            "chunk, or raise max_memory_mb"
        )

    coef = torch.as_tensor(coords, dtype=next(iter(state.values())).dtype
                           if state else torch.float32)
    loss_sum = np.zeros(n_points)
    correct = np.zeros(n_points)
    n_chunks = -(-n_points // chunk)
    # "auto" times the first chunk with vmap and the second point by point, then keeps the faster
    chosen = None if mode == "auto" and n_chunks >= 3 else ("loop" if mode == "loop" else "vmap")
    timings: dict[str, float] = {}
    fallback = None
    start = time.perf_counter()
    bar = tqdm(total=n_points, desc=progress if isinstance(progress, str) else desc,
               unit="pt", disable=not progress, leave=False)

    def point_fn(moved, xb, yb):
        out = functional_call(template, {**fixed, **moved}, (xb,))
        return F.cross_entropy(out, yb, reduction="sum"), (out.argmax(1) == yb).sum()

    def run_chunk(how, moved, size):
        ls_total = torch.zeros(size, dtype=torch.float64)
        cs_total = torch.zeros(size, dtype=torch.float64)
        for b0 in range(0, n, batch):
            xb, yb = x[b0:b0 + batch], y[b0:b0 + batch]
            if how == "vmap":
                ls, cs = vmap(point_fn, in_dims=(0, None, None))(moved, xb, yb)
            else:
                outs = [point_fn({v: t[i] for v, t in moved.items()}, xb, yb)
                        for i in range(size)]
                ls, cs = torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
            ls_total += ls.double()
            cs_total += cs.double()
        return ls_total.numpy(), cs_total.numpy()

    try:
        with torch.no_grad():
            template(x[:2])  # warm-up, so the calibration does not time one-off setup
            for ci, lo in enumerate(range(0, n_points, chunk)):
                c = coef[lo:lo + chunk]
                moved = {}
                for v in varying:
                    t = state[v].unsqueeze(0).expand(len(c), *state[v].shape).clone()
                    for j, d in enumerate(dirs):
                        if v in d:
                            t += c[:, j].to(t.dtype).view(-1, *([1] * d[v].ndim)) * d[v]
                    moved[v] = t
                how = chosen or ("vmap" if ci == 0 else "loop")
                t0 = time.perf_counter()
                if how == "vmap":
                    try:
                        ls, cs = run_chunk("vmap", moved, len(c))
                    except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
                        if mode == "vmap" or ci > 0:
                            raise ParameterError(
                                f"cannot evaluate grid points with vmap on this model: "
                                f"{str(err).splitlines()[0]}; use mode='loop'") from err
                        fallback = str(err).splitlines()[0] if str(err) else type(err).__name__
                        how = chosen = "loop"
                        t0 = time.perf_counter()
                        ls, cs = run_chunk("loop", moved, len(c))
                else:
                    ls, cs = run_chunk("loop", moved, len(c))
                if chosen is None:
                    timings[how] = (time.perf_counter() - t0) / len(c)
                    if len(timings) == 2:
                        chosen = min(timings, key=timings.get)
                loss_sum[lo:lo + len(c)] = ls
                correct[lo:lo + len(c)] = cs
                bar.update(len(c))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    info = {"mode": chosen or "vmap", "chunk": chunk, "batch_size": batch,
            "memory_mb": round(memory, 1), "seconds": seconds,
            "points_per_second": n_points / seconds if seconds > 0 else math.inf,
            "samples": n,
            "calibration": {k: round(v, 6) for k, v in timings.items()},
            **({"vmap_error": fallback} if fallback else {})}
    return loss_sum / n, correct / n, info


__all__ = ["evaluate_points", "check_data", "activation_bytes", "chunk_memory_mb"]
