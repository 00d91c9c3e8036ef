"""Counter-based random numbers: a pure function of ``(seed, stream, sample, element)``.

Corruptions need per-sample randomness that is reproducible, vectorised over the batch and
independent of the batch size. ``torch.Generator`` streams fill tensors sequentially (and in
size-dependent chunks), so the noise of image 0 would change with the batch size. Here every
value is a hash of its coordinates instead (Wellons' ``lowbias32`` integer hash, applied in int64
arithmetic masked to 32 bits): image ``i`` of a batch always receives the same numbers for a given
``seed`` and ``stream``, whatever the batch size.

Examples
--------
>>> a = uniform(0, "demo", 3, (4,))
>>> b = uniform(0, "demo", 1, (4,))
>>> bool((a[:1] == b).all()), a.shape, bool(((a >= 0) & (a < 1)).all())
(True, torch.Size([3, 4]), True)
"""

from __future__ import annotations

import math
import zlib

import torch

M32 = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 hash of int64 values in [0, 2**32) (result in the same range)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def _key(seed: int, stream: str) -> int:
    s = torch.tensor([seed & M32, (seed >> 32) & M32, zlib.crc32(stream.encode())],
                     dtype=torch.int64)
    h = _mix(s)
    return int(_mix((h[0] ^ _mix(h[1] + 0x9E3779B9) ^ _mix(h[2] + 0x7F4A7C15)) & M32))


def bits(seed: int, stream: str, n: int, shape=(), start: int = 0) -> torch.Tensor:
    """Hash values in [0, 2**32) shaped ``(n, *shape)``; row ``i`` depends only on
    ``start + i`` (the sample's position in the batch)."""
    k = _key(seed, stream)
    rows = _mix((torch.arange(start, start + n, dtype=torch.int64) * 0x85EBCA6B + k) & M32)
    size = math.prod(shape)
    cols = torch.arange(size, dtype=torch.int64) * 0x9E3779B9
    return _mix((rows[:, None] ^ cols[None, :]) & M32).reshape(n, *shape)


def uniform(seed: int, stream: str, n: int, shape=(), low: float = 0.0,
            high: float = 1.0, start: int = 0) -> torch.Tensor:
    """Float32 uniforms in ``[low, high)`` shaped ``(n, *shape)`` (24 random bits each)."""
    u = (bits(seed, stream, n, shape, start) >> 8).to(torch.float32) * (1.0 / (1 << 24))
    return u * (high - low) + low if (low, high) != (0.0, 1.0) else u


def normal(seed: int, stream: str, n: int, shape=(), mean=0.0, std=1.0) -> torch.Tensor:
    """Float32 Gaussians (Box–Muller on two independent uniform streams)."""
    u1 = uniform(seed, stream + "/u1", n, shape)
    u2 = uniform(seed, stream + "/u2", n, shape)
    z = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)
    return z * std + mean


def randint(seed: int, stream: str, n: int, shape, low: int, high: int) -> torch.Tensor:
    """Int64 integers uniform in ``[low, high)`` (NumPy's ``randint`` convention)."""
    u = uniform(seed, stream, n, shape)
    return (u * (high - low)).floor().long().clamp_(max=high - low - 1) + low


def sign(seed: int, stream: str, n: int, shape=()) -> torch.Tensor:
    """Float32 ±1 with equal probability (``np.random.choice([-1, 1])``)."""
    return torch.where(uniform(seed, stream, n, shape) < 0.5, -1.0, 1.0)


def poisson(rate: torch.Tensor, seed: int, stream: str) -> torch.Tensor:
    """Poisson samples with the given ``rate`` (shaped ``(n, ...)``; float32, same shape).

    Exact inversion of the CDF for every rate: start from the Cornish–Fisher quantile
    ``λ + √λ z + (z² - 1) / 6`` of the uniform draw, then step ``k`` up or down until
    ``P(X ≤ k - 1) < u ≤ P(X ≤ k)`` (CDFs from the regularised incomplete gamma function).

    Examples
    --------
    >>> import torch
    >>> p = poisson(torch.full((200, 50), 4.0), 0, "demo")
    >>> abs(float(p.mean()) - 4) < 0.1, abs(float(p.var()) - 4) < 0.3
    (True, True)
    """
    n = rate.shape[0]
    u = uniform(seed, stream, n, rate.shape[1:]).double().clamp_(1e-12, 1 - 1e-12)
    lam = rate.double().clamp_min(0)
    positive = lam > 0
    lam = torch.where(positive, lam, torch.ones_like(lam))  # rate 0 is handled at the end
    z = torch.special.ndtri(u)
    k = torch.floor(lam + lam.sqrt() * z + (z ** 2 - 1) / 6).clamp_(min=0)
    cdf = torch.special.gammaincc(k + 1, lam)  # P(X <= k)
    pmf = torch.exp(k * torch.log(lam) - lam - torch.lgamma(k + 1))  # P(X = k)
    for _ in range(10_000):
        up = u > cdf
        down = (u <= cdf - pmf) & (k > 0)
        if not bool((up | down).any()):
            break
        # one step up: k+1, add P(X = k+1); one step down: remove P(X = k), then k-1
        new_pmf_up = pmf * lam / (k + 1)
        cdf = torch.where(up, cdf + new_pmf_up, torch.where(down, cdf - pmf, cdf))
        pmf = torch.where(up, new_pmf_up, torch.where(down, pmf * k / lam, pmf))
        k = k + up.double() - down.double()
    return torch.where(positive, k, torch.zeros_like(k)).to(torch.float32)
