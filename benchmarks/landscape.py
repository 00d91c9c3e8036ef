"""Benchmark: loss-landscape grid points per second, batched engine vs a per-point state_dict loop.

Cases: the default CNN (LeNet-5 on 8×8 digits) on its 360-image test split and on a 64-image
preview subset, and an untrained LeNet-5 on 2,000 MNIST test images (28×28). For each case the
same grid points are evaluated by

* ``vmap``: :func:`workbench.analysis.grid.evaluate_points` with chunks of points per call,
* ``loop``: the same engine, one ``functional_call`` per point,
* ``state_dict``: the reference approach (loss-landscapes / tomgoldstein style): one model copy,
  ``load_state_dict(w + a·d1 + b·d2)`` per point, then a plain forward pass,

and the values are checked against each other. Finally a full 21×21 default landscape
(``mode="auto"``) is timed. Results go to ``benchmarks/results/landscape.json``.

Run: ``python benchmarks/landscape.py`` (about a minute on two idle cores).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import workbench  # noqa: E402
from workbench.analysis import landscape_2d, random_directions  # noqa: E402
from workbench.analysis.grid import evaluate_points  # noqa: E402
from workbench.models import create_model  # noqa: E402

MNIST = REPO.parent / "shared" / "datasets" / "mnist"
OUT = REPO / "benchmarks" / "results" / "landscape.json"


def read_mnist(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` MNIST test images (scaled to [0, 1]) and labels, straight from the IDX files."""
    with gzip.open(MNIST / "t10k-images-idx3-ubyte.gz", "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(MNIST / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return (torch.from_numpy(images[:n].astype(np.float32) / 255.0),
            torch.from_numpy(labels[:n].astype(np.int64)))


def grid(steps: int) -> np.ndarray:
    a = np.linspace(-1, 1, steps)
    aa, bb = np.meshgrid(a, a)
    return np.stack([aa.ravel(), bb.ravel()], 1)


def state_dict_loop(model, x, y, coords, d1, d2, batch_size=1024):
    """The reference: load a state_dict per point into one model copy, then evaluate."""
    m = copy.deepcopy(model).eval()
    base = {k: v.clone() for k, v in m.state_dict().items()}
    losses = []
    with torch.no_grad():
        for a, b in coords:
            state = dict(base)
            for n in d1:
                state[n] = base[n] + float(a) * d1[n] + float(b) * d2[n]
            m.load_state_dict(state)
            total = 0.0
            for i in range(0, len(x), batch_size):
                total += float(F.cross_entropy(m(x[i:i + batch_size]), y[i:i + batch_size],
                                               reduction="sum"))
            losses.append(total / len(x))
    return np.array(losses)


def timed(fn):
    """``(result, wall seconds, CPU seconds of this process)``.

    On a shared machine the wall time depends on the other jobs; the CPU time much less so.
    """
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def bench_case(name, model, x, y, steps):
    coords = grid(steps)
    d1, d2 = random_directions(model, seed=0, count=2)
    evaluate_points(model, x[:8], y[:8], coords[:2], [d1, d2], progress=False)  # warm-up
    row = {"case": name, "samples": len(x), "points": len(coords),
           "params": sum(p.numel() for p in model.parameters())}
    results = {}
    for mode in ("vmap", "loop"):
        (loss, _, info), sec, cpu = timed(lambda: evaluate_points(model, x, y, coords, [d1, d2],
                                                                  mode=mode, progress=False))
        results[mode] = loss
        row[f"{mode}_points_per_s"] = round(len(coords) / sec, 2)
        row[f"{mode}_points_per_cpu_s"] = round(len(coords) / cpu, 2)
        row[f"{mode}_chunk"] = info["chunk"]
    ref, sec, cpu = timed(lambda: state_dict_loop(model, x, y, coords, d1, d2))
    row["state_dict_points_per_s"] = round(len(coords) / sec, 2)
    row["state_dict_points_per_cpu_s"] = round(len(coords) / cpu, 2)
    for unit in ("s", "cpu_s"):
        best = max(row[f"vmap_points_per_{unit}"], row[f"loop_points_per_{unit}"])
        row[f"speedup_best_vs_state_dict_per_{unit}"] = round(
            best / row[f"state_dict_points_per_{unit}"], 2)
    row["max_rel_diff_vs_reference"] = float(max(
        np.max(np.abs(results[m] - ref) / np.maximum(np.abs(ref), 1e-12)) for m in results))
    return row


def main(threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    session = workbench.Session.default(progress=False)
    model, data = session.base.model, session.data
    xm, ym = read_mnist(2000)
    mnist_model = create_model("lenet5", (1, 28, 28), 10, seed=0).eval()

    rows = [
        bench_case("default lenet5, digits test (360)", model, data.x_test, data.y_test, 7),
        bench_case("default lenet5, preview subset (64)", model, data.x_test[:64],
                   data.y_test[:64], 7),
        bench_case("lenet5 28x28, MNIST (2000)", mnist_model, xm, ym, 3),
    ]
    ls, sec, cpu = timed(lambda: landscape_2d(model, data.x_test, data.y_test, steps=21,
                                              progress=False))
    full = {"steps": 21, "points": 441, "seconds": round(sec, 3), "cpu_seconds": round(cpu, 3),
            "mode": ls.meta["mode"],
            "calibration_s_per_point": ls.meta.get("calibration"),
            "chunk": ls.meta["chunk"], "target_seconds": 15}
    result = {
        "benchmark": "loss landscape grid evaluation",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cases": rows, "default_21x21": full,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    for unit, label in (("s", "wall"), ("cpu_s", "CPU")):
        print(f"grid points per {label} second:")
        for r in rows:
            print(f"  {r['case']:38s} {r['points']:3d} pts  vmap {r[f'vmap_points_per_{unit}']:7.1f}"
                  f"  loop {r[f'loop_points_per_{unit}']:7.1f}  state_dict "
                  f"{r[f'state_dict_points_per_{unit}']:7.1f}  best/state_dict "
                  f"x{r[f'speedup_best_vs_state_dict_per_{unit}']}")
    print("max relative difference to the state_dict reference: "
          + ", ".join(f"{r['max_rel_diff_vs_reference']:.1e}" for r in rows))
    print(f"21x21 default landscape: {full['seconds']} s wall, {full['cpu_seconds']} s CPU "
          f"(mode {full['mode']}, target < 15 s)")
    print(f"load average before/after: {result['load_average_before']} / "
          f"{result['load_average_after']}  -> {OUT.relative_to(REPO)}")
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    main(parser.parse_args().threads)
