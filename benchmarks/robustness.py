"""Benchmark: the full corruption sweep of the default model, and the other robustness analyses.

Cases:

* ``sweep``: :func:`workbench.analysis.robustness.corruption_errors` for the default model
  (LeNet-5 on scikit-learn digits, 360 test images 8×8) over all 15 gray corruptions × 5
  severities, with one intra-op thread (the default) and with two; wall and CPU seconds, and
  seconds per corruption (corrupting 5 × 360 images + 5 forward passes). Target: < 30 s.
* ``sensitivity``: the layer × corruption matrix (5 layers, magnitude 50 %, severity 3).
* ``geometry``: angle / length / margin of the 360 test samples and their PCA embedding.
* ``rgb``: seconds per CIFAR-10-C corruption (5 severities) on 360 random 32×32 colour images.

The machine's load average is recorded: on a shared 2-core box other processes slow every
number down. Results go to ``benchmarks/results/robustness.json``.

Run: ``python benchmarks/robustness.py`` (about half a minute on two idle cores);
``--quick`` skips the two-thread sweep and the rgb timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import workbench  # noqa: E402
from workbench.analysis.geometry import embed, feature_geometry  # noqa: E402
from workbench.analysis.robustness import corruption_errors, layer_sensitivity  # noqa: E402
from workbench.corruptions import CORRUPTIONS, corruption_names  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "robustness.json"
TARGET_SECONDS = 30.0


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def sweep(session, threads):
    result, wall, cpu = timed(corruption_errors, session.base, threads=threads, progress=False)
    return {
        "threads": threads if threads is not None else torch.get_num_threads(),
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "meets_target": wall < TARGET_SECONDS,
        "seconds_per_corruption": {k: round(v, 3) for k, v in result.meta["seconds"].items()},
        "clean_error": result.clean_error,
        "mean_error_per_corruption": {c: round(float(e), 4)
                                      for c, e in zip(result.corruptions, result.mean_error)},
        "error_by_severity": {c: [round(float(v), 4) for v in row]
                              for c, row in zip(result.corruptions, result.error)},
    }


def rgb_timing(n=360):
    torch.manual_seed(0)
    low = torch.rand(n, 3, 4, 4)
    x = torch.nn.functional.interpolate(low, size=(32, 32), mode="bicubic").clamp(0, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name in corruption_names("rgb"):
            t = time.perf_counter()
            for s in range(1, 6):
                CORRUPTIONS[name](x, s, seed=0)
            out[name] = round(time.perf_counter() - t, 3)
    finally:
        torch.set_num_threads(before)
    return {"images": n, "seconds_per_corruption_5_severities": out,
            "total_seconds": round(sum(out.values()), 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one sweep, no rgb timing")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    session = workbench.Session.default(progress=False)
    # warm-up (imports, first-call overheads)
    corruption_errors(session.base, corruptions=["rotate"], severities=(1,), progress=False)
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "torch_threads_default": torch.get_num_threads(),
                    "load_average_1_5_15_at_start": [round(v, 2) for v in load_before]},
        "data": {"dataset": session.data.name, "test_images": len(session.data.y_test),
                 "shape": list(session.data.input_shape), "corruptions": 15, "severities": 5},
        "target_seconds": TARGET_SECONDS,
        "sweep": {"threads_1": sweep(session, 1)},
    }
    if not args.quick:
        results["sweep"]["threads_default"] = sweep(session, None)
    m, wall, cpu = timed(layer_sensitivity, session, severity=3, progress=False)
    results["sensitivity"] = {"layers": len(m.layers), "corruptions": len(m.corruptions),
                              "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3)}
    g, wall_g, cpu_g = timed(feature_geometry, session.base)
    e, wall_e, cpu_e = timed(embed, g, "pca")
    results["geometry"] = {"samples": len(g.labels), "features": g.features.shape[1],
                           "geometry_seconds": round(wall_g, 3), "pca_seconds": round(wall_e, 3)}
    if not args.quick:
        results["rgb"] = rgb_timing()
    results["machine"]["load_average_1_5_15_at_end"] = [round(v, 2) for v in os.getloadavg()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    s1 = results["sweep"]["threads_1"]
    print(f"full gray sweep (15 x 5, {len(session.data.y_test)} images), 1 thread: "
          f"{s1['wall_seconds']:.1f} s wall, {s1['cpu_seconds']:.1f} s CPU "
          f"(target < {TARGET_SECONDS:.0f} s: {'met' if s1['meets_target'] else 'MISSED'})")
    if "threads_default" in results["sweep"]:
        s2 = results["sweep"]["threads_default"]
        print(f"  with {s2['threads']} threads: {s2['wall_seconds']:.1f} s wall, "
              f"{s2['cpu_seconds']:.1f} s CPU")
    slowest = sorted(s1["seconds_per_corruption"].items(), key=lambda kv: -kv[1])[:4]
    print("  slowest:", ", ".join(f"{k} {v:.2f} s" for k, v in slowest))
    print(f"layer sensitivity ({m.delta_error.shape[0]} layers x {m.delta_error.shape[1]}): "
          f"{results['sensitivity']['wall_seconds']:.1f} s; geometry {wall_g:.2f} s, PCA "
          f"{wall_e:.2f} s")
    if "rgb" in results:
        total = results["rgb"]["total_seconds"]
        print(f"rgb corruptions, 360 images x 5 severities: {total:.1f} s")
    print(f"load average at start {load_before[0]:.1f}; wrote {OUT.relative_to(REPO)}")
    return results


if __name__ == "__main__":
    main()
