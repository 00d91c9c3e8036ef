"""Side-by-side latency, throughput, size and accuracy of variants × engines × batch sizes.

Every (variant, engine) pair is compiled once, checked against the variant's own outputs on the
test split, then timed *interleaved*: each repeat calls every compiled model once in turn, so
background load hits all of them alike; the result reports medians and 90th percentiles.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from workbench.backend.base import ENGINES, compile_variant
from workbench.errors import ParameterError


@dataclass
class BenchmarkRow:
    """One (variant, engine, batch size) measurement (times in milliseconds)."""

    variant: str
    engine: str
    batch: int
    threads: int
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    throughput: float | None = None  # samples per second at the median latency
    repeats: int = 0
    weight_bytes: int | None = None  # the Conv/Linear weights in the engine's format
    model_bytes: int | None = None  # those plus every other parameter at its dtype
    peak_memory_bytes: int | None = None
    accuracy: float | None = None
    agreement: float | None = None  # argmax agreement with the variant's own model
    max_abs_diff: float | None = None  # max |Δlogit| against the variant's own model
    kernels: dict = field(default_factory=dict)  # kernel -> number of layers
    isa: str = ""  # instruction set(s) of our compiled kernels in it ("" if none ran)
    all_torch: bool = False  # an engine other than torch eager ran every layer on torch
    error: str | None = None


@dataclass
class BenchmarkResult:
    """All rows of a :func:`benchmark` run plus its settings; JSON-serialisable."""

    rows: list[BenchmarkRow]
    settings: dict

    def as_dicts(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({"settings": self.settings, "rows": self.as_dicts()}, indent=1)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    def row(self, variant: str, engine: str, batch: int) -> BenchmarkRow:
        for r in self.rows:
            if (r.variant, r.engine, r.batch) == (variant, engine, batch):
                return r
        raise KeyError((variant, engine, batch))

    def speedup(self, variant: str, engine: str, baseline: str, batch: int,
                baseline_variant: str | None = None) -> float | None:
        """Median latency of ``baseline`` divided by that of ``engine`` (> 1: faster);
        ``None`` where ``engine`` ran every layer on torch (the same code as torch eager: any
        ratio would be cache and order effects)."""
        row = self.row(variant, engine, batch)
        a, b = row.median_ms, self.row(baseline_variant or variant, baseline, batch).median_ms
        return None if not a or not b or row.all_torch else b / a

    def table(self) -> str:
        head = f"{'variant':<22}{'engine':<26}{'batch':>6}{'median ms':>11}{'p90 ms':>9}" \
               f"{'samples/s':>11}{'weights':>10}{'acc':>7}{'agree':>7}"
        lines = [head]
        for r in self.rows:
            if r.error:
                lines.append(f"{r.variant:<22}{r.engine:<26}{r.batch:>6}  error: {r.error}")
                continue
            lines.append(f"{r.variant:<22}{r.engine:<26}{r.batch:>6}{r.median_ms:>11.3f}"
                         f"{r.p90_ms:>9.3f}{r.throughput:>11.0f}{r.weight_bytes or 0:>10}"
                         f"{r.accuracy:>7.3f}{r.agreement:>7.3f}"
                         + ("  (every layer on torch)" if r.all_torch else ""))
        return "\n".join(lines)


def other_parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters that are not a Conv/Linear weight (biases, norms, embeddings,
    recurrent weights, ...), each at its own dtype."""
    from workbench.backend.graph import find_sites

    weights = {id(s.layer.weight) for s in find_sites(model)}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in weights)


def _as_variants(variants) -> list:
    if hasattr(variants, "variants") and hasattr(variants, "base"):  # a Session
        return list(variants.variants.values())
    if isinstance(variants, dict):
        return list(variants.values())
    if hasattr(variants, "model") and hasattr(variants, "data"):
        return [variants]
    return list(variants)


def _batch(x: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // len(x))
    return torch.cat([x] * reps)[:n].contiguous()


def _peak_rss_delta(fn) -> int | None:
    """Peak resident memory growth while ``fn`` runs (Linux: VmHWM after resetting it)."""
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None

    def read(key):
        for line in status.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        return None

    before = read("VmRSS:")
    fn()
    peak = read("VmHWM:")
    return None if before is None or peak is None else max(0, peak - before)


def benchmark(variants, engines=("torch", "onnxruntime", "sparse", "lowbit"),
              batch_sizes=(1, 32, 256), repeats: int = 20, warmup: int = 3,
              threads: int | None = None, time_budget: float | None = None,
              progress: bool = True, engine_options: dict | None = None) -> BenchmarkResult:
    """Compile every variant with every engine and time them side by side.

    Parameters
    ----------
    variants : Variant, list or dict of Variants, or a Session (all its variants)
    engines : sequence of str
        Names from :data:`~workbench.backend.ENGINES`.
    batch_sizes : sequence of int
    repeats, warmup : int
        Timed and untimed calls per (variant, engine, batch); timed calls are interleaved.
    threads : int, optional
        CPU threads for every engine (default: torch's current setting).
    time_budget : float, optional
        Seconds; once spent, the remaining repeats are skipped (each configuration keeps at
        least one timed call).
    engine_options : dict, optional
        Engine name → extra keyword arguments for its compile function.

    Examples
    --------
    >>> import workbench
    >>> s = workbench.Session.default(progress=False)
    >>> r = benchmark(s.base, ["torch"], batch_sizes=(1,), repeats=3, progress=False)
    >>> row = r.rows[0]
    >>> row.engine, row.batch, row.agreement, row.median_ms > 0
    ('torch', 1, 1.0, True)
    """
    variants = _as_variants(variants)
    engines = list(engines)
    for e in engines:
        ENGINES[e]  # unknown names fail before any work
    batch_sizes = [int(b) for b in batch_sizes]
    if not variants or not engines or not batch_sizes or min(batch_sizes) < 1:
        raise ParameterError("benchmark needs variants, engines and positive batch sizes")
    if repeats < 1 or warmup < 0:
        raise ParameterError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    threads = threads or torch.get_num_threads()
    engine_options = engine_options or {}
    start = time.perf_counter()

    from workbench.cancel import step, tqdm

    bar = tqdm(total=len(variants) * len(engines) * (1 + len(batch_sizes)),
               desc="benchmark", disable=not progress, leave=False)
    compiled, rows = [], []
    for v in variants:
        x_test = v.data.x_test
        with torch.inference_mode():
            ref = v.model.eval()(x_test)
        others = other_parameter_bytes(v.model)
        for e in engines:
            base = BenchmarkRow(v.name, e, 0, threads)
            try:
                cm = compile_variant(v, e, threads=threads, **engine_options.get(e, {}))
                out = cm(x_test)
                base.weight_bytes = cm.weight_bytes
                if cm.weight_bytes is not None:
                    base.model_bytes = cm.weight_bytes + others
                base.accuracy = float((out.argmax(1) == v.data.y_test).float().mean())
                base.agreement = float((out.argmax(1) == ref.argmax(1)).float().mean())
                base.max_abs_diff = float((out - ref).abs().max())
                kinds: dict = {}
                for lr in cm.report.layers:
                    kinds[lr.kernel] = kinds.get(lr.kernel, 0) + 1
                base.kernels = kinds
                base.isa = ",".join(sorted(set(cm.report.isas().values())))
                base.all_torch = e != "torch" and set(kinds) == {"torch"}
            except Exception as err:  # noqa: BLE001  one failing engine must not stop the run
                cm, base.error = None, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            bar.update(1)
            for b in batch_sizes:
                row = BenchmarkRow(**{**asdict(base), "batch": b})
                rows.append(row)
                if cm is not None:
                    compiled.append((row, cm, _batch(x_test, b), []))
    # warm-up (also compiles per-shape engines), then memory, then interleaved timing
    for row, cm, x, _ in compiled:
        try:
            for _ in range(warmup):
                cm(x)
            row.peak_memory_bytes = _peak_rss_delta(lambda: cm(x))
        except Exception as err:  # noqa: BLE001
            row.error = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        bar.update(1)
    live = [c for c in compiled if c[0].error is None]
    for rep in range(repeats):
        if rep and time_budget is not None and time.perf_counter() - start > time_budget:
            break
        step(0)  # a Cancel button stops the timing loop between repeats
        for row, cm, x, times in live:
            t0 = time.perf_counter()
            cm(x)
            times.append(time.perf_counter() - t0)
    bar.close()
    for row, _, x, times in live:
        t = np.asarray(times) * 1e3
        row.median_ms, row.p90_ms = float(np.median(t)), float(np.percentile(t, 90))
        row.min_ms, row.repeats = float(t.min()), len(t)
        row.throughput = float(len(x) / (row.median_ms / 1e3))
    from workbench.backend.native import machine_info

    settings = {"machine": machine_info(), "engines": engines, "batch_sizes": batch_sizes,
                "repeats": repeats, "warmup": warmup, "threads": threads,
                "time_budget": time_budget, "torch": torch.__version__, "elapsed_s": round(time.perf_counter() - start, 2)}
    return BenchmarkResult(rows, settings)
