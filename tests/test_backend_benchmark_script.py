"""benchmarks/backend.py still runs end to end (a quick run on two small workloads), and what it
writes has the shape the notes and the issue's targets are read from."""

from __future__ import annotations

import json
import subprocess
import sys

from serving import REPO


def test_quick_backend_benchmark_writes_every_run_and_target(tmp_path):
    out = tmp_path / "backend.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "backend.py"), "--quick", "--threads", "1",
         "--batches", "1", "64", "--workloads", "mlp-784-1024-1024-10", "default-cnn",
         "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    runs = {(r["workload"], r["threads"], r["batch"]) for r in result["runs"]}
    assert runs == {(w, 1, b) for w in ("mlp-784-1024-1024-10", "default-cnn") for b in (1, 64)}
    for run in result["runs"]:
        timing = run["timing"]
        assert run["ort_spinning"] == (run["batch"] < 8)
        assert run["best_dense"] in ("torch", "ort-fp32", "mkldnn")
        assert timing[run["best_dense"]]["median_ms"] == min(
            timing[k]["median_ms"] for k in ("torch", "ort-fp32", "mkldnn"))
        for t in timing.values():
            assert 0 < t["min_ms"] <= t["median_ms"] <= t["p90_ms"]
    targets = {c["target"] for c in result["targets"]}
    assert "sparse 90% >= 1.5x best dense" in targets
    assert "int8 >= 1.0x ONNX Runtime int8" in targets
    # the stored sizes are computed, not timed: the Rice-coded pruned + int8 / int4 codes and the
    # sparse fp32 formats of the MLP stay within 10 % of the information-theoretic size
    storage = result["storage_vs_bound"]["mlp-784-1024-1024-10"]
    for name in ("sparse-90-forced", "sparse-95-forced", "int8-sparse-90", "int4-sparse-90",
                 "int8", "int4"):
        assert 1.0 <= storage[name] <= 1.10, (name, storage[name])
    assert storage["int4-dense-90"] > 4  # dense packed codes of a 90 % pruned layer: no gain
    overhead = result["lowbit"]["call_overhead_us"]["1"]
    assert 0 < overhead["ctypes no-op call"] < overhead["lowbit-int8 (CompiledModel)"]
