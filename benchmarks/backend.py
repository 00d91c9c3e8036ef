"""Our sparse / low-bit kernels side by side with dense baselines, in one run.

Workloads: a 784-1024-1024-10 MLP, single 1024×1024 and 4096×4096 Linear layers, and the
default CNN (LeNet-5 on 8×8 digits). For each workload, thread count (1 and 2) and batch size
(1 and 64) every candidate is warmed up and then timed in interleaved rounds (each round calls
every candidate once, in a fresh seeded random order, so background load and the cache state a
candidate finds hit all alike); medians are compared. Baselines:
torch eager fp32 and the strongest dense option (the fastest of ONNX Runtime fp32, ``to_mkldnn``
and, with ``--inductor``, ``torch.compile(freezing=True)``). Ratios > 1 mean faster than the
baseline. Results go to ``benchmarks/results/backend.json``. The low-bit candidates, targets,
sparse-codes break-even, per-call overhead, accuracy-cost table and a batch-1 run of the 4096²
layer with the last-level cache flushed before every call live in
``benchmarks/backend_lowbit.py`` (JSON key ``lowbit``).

    python benchmarks/backend.py            # about 2-3 minutes on 2 cores
    python benchmarks/backend.py --quick    # fewer rounds and workloads, for a smoke run
    python benchmarks/backend.py --inductor # also torch.compile (slow first compile)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.backend import compile_model  # noqa: E402
from workbench.backend.graph import find_sites  # noqa: E402
from workbench.backend.native import cpu_name, describe, load_kernels, machine_info  # noqa: E402
from workbench.models import create_model  # noqa: E402
from workbench.prune import PRUNERS  # noqa: E402
from workbench.quantize import QUANTIZERS  # noqa: E402
from backend_lowbit import (accuracy_cost, break_even, call_overhead, cold_batch1,  # noqa: E402
                            lowbit_candidates, lowbit_checks, print_checks,
                            print_lowbit_section)
from workbench.storage import information_bound_bits  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "backend.json"
DENSE = ("torch", "ort-fp32", "mkldnn", "inductor")


# --- candidates ------------------------------------------------------------------------------
def mkldnn_runner(model: nn.Module):
    """Dense fp32 through oneDNN with prepacked weights (``torch.utils.mkldnn.to_mkldnn``)."""
    from torch.utils import mkldnn

    m = mkldnn.to_mkldnn(copy.deepcopy(model).eval())
    return lambda x: m(x)


def inductor_runner(model: nn.Module, x: torch.Tensor):
    cm = compile_model(model, "torch-compile", freezing=True, example=x)
    return cm


def pruned(model, sparsity):
    return PRUNERS["magnitude"](model, sparsity)


def storage_bound_bits(w: torch.Tensor, bits: int = 32) -> float:
    """Information-theoretic size of a sparse weight: log2 C(n, k) index bits + k values."""
    return information_bound_bits(w, bits)


# --- sparse section --------------------------------------------------------------------------
class TorchSparseLinear(nn.Module):
    """A Linear whose weight is a ``torch.sparse_csr`` tensor (the torch.sparse.mm baseline)."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.weight = layer.weight.detach().to_sparse_csr()
        self.bias = None if layer.bias is None else layer.bias.detach()

    def forward(self, x):
        y = torch.sparse.mm(self.weight, x.t()).t()
        return y if self.bias is None else y + self.bias


def torch_sparse_runner(model: nn.Module):
    """``model`` with every Linear on ``torch.sparse.mm`` (None if it has a Conv2d)."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    m = copy.deepcopy(model).eval()
    if isinstance(m, nn.Linear):
        return TorchSparseLinear(m)
    for name, child in list(m.named_modules()):
        for key, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear):
                setattr(child, key, TorchSparseLinear(sub))
    return m


def sparse_candidates(model, spec, threads, add, cands, info):
    """Our sparse engine at each sparsity of the workload (automatic per-layer placement and,
    for the break-even scan, forced onto the kernels), 2:4, and torch.sparse.mm at 90 %."""
    import warnings

    for s in spec.get("sparsity", ()):
        p = pruned(model, s)
        bound = sum(storage_bound_bits(p.model.get_submodule(n).weight) for n in p.masks)
        name = f"sparse-{round(s * 100)}"
        cm = compile_model(p.model, "sparse", masks=p.masks, threads=threads)
        add(name, cm, bound)
        info[name]["formats"] = {r.name: f"{r.kernel}: {r.reason}" for r in cm.report.layers}
        if s in spec.get("forced", ()):
            add(f"{name}-forced", compile_model(p.model, "sparse", masks=p.masks,
                                                threads=threads, max_density=1.0),
                bound if s >= 0.9 else None)  # the formats' storage at 90 % and 95 %
        if round(s * 100) == 90:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                runner = torch_sparse_runner(p.model)
            if runner is not None:
                cands["torch.sparse-90"] = runner
    if spec.get("nm"):
        p = PRUNERS["nm"](model, n=2, m=4)
        cm = compile_model(p.model, "sparse", masks=p.masks, threads=threads)
        add("nm-2:4", cm)
        info["nm-2:4"]["formats"] = {r.name: f"{r.kernel}: {r.reason}" for r in cm.report.layers}


def print_sparse_section(checks: list[dict], runs: list[dict]) -> None:
    """Which format each layer got (and why), then every sparse target with pass/fail."""
    print("\nsparse: formats per layer (first run of each workload)")
    seen = set()
    for run in runs:
        if run["workload"] in seen:
            continue
        seen.add(run["workload"])
        for name, i in run["info"].items():
            for layer, fmt in i.get("formats", {}).items():
                print(f"  {run['workload']:<22} {name:<10} {layer:<12} {fmt}")
    print_checks("sparse", checks)


def sparse_checks(runs: list[dict], storage: dict) -> list[dict]:
    """The issue's sparse targets, each with its measured value and pass/fail.

    Speed ratios are medians of interleaved rounds against the strongest dense baseline of
    the run (``value_of_minimums``: the same ratio of the fastest rounds, less noisy).
    "Never slower than dense" allows 5 % for timing noise and says so in its name.
    """
    checks = []

    def check(target, run, a, base, goal):
        res = run["timing"]
        if a in res and base in res:
            value, of_min = ratio(res, a, base), ratio(res, a, base, "min_ms")
            checks.append({"section": "sparse", "target": target, "workload": run["workload"],
                           "threads": run["threads"], "batch": run["batch"],
                           "value": round(value, 3), "value_of_minimums": round(of_min, 3),
                           "goal": goal, "met": bool(value >= goal)})

    for run in runs:
        w, b, best = run["workload"], run["batch"], run["best_dense"]
        wide = w in ("linear-1024", "mlp-784-1024-1024-10", "linear-4096")
        if wide and (b == 64 or (b == 1 and w != "linear-4096")):
            check("sparse 90% >= 1.5x best dense", run, "sparse-90", best, 1.5)
        if wide and b == 64:
            check("sparse 95% >= 3x best dense", run, "sparse-95", best, 3.0)
        if b == 64:
            check("N:M 2:4 >= 1.3x best dense", run, "nm-2:4", best, 1.3)
        check("sparse 90% >= 1.0x torch.sparse.mm", run, "sparse-90", "torch.sparse-90", 1.0)
        for name in run["timing"]:  # layers that fall back run on torch eager
            if name.startswith("sparse-") and not name.endswith("-forced"):
                if set(run["info"][name]["kernels"]) == {"torch"}:
                    # every layer fell back: the same code as torch eager, so the ratio only
                    # measures the cache state the interleaving left (0.87-1.11 over runs)
                    check(f"{name} (every layer on torch eager; informational)", run, name,
                          "torch", 0.95)
                    continue
                check(f"{name} (automatic fallback) never slower than torch eager (>= 0.95x)",
                      run, name, "torch", 0.95)
        if w == "linear-1024" and b == 64:
            res = run["timing"]
            faster = [int(k.split("-")[1]) for k in res
                      if k.startswith("sparse-") and k.endswith("-forced")
                      and ratio(res, k, best) > 1.0]
            if faster:
                checks.append({"section": "sparse", "target": "break-even sparsity <= 75% "
                               "(value: lowest forced sparsity faster than dense)",
                               "workload": w, "threads": run["threads"], "batch": b,
                               "value": min(faster), "value_of_minimums": None, "goal": 75,
                               "met": bool(min(faster) <= 75)})
    kernels = {}  # (workload, candidate) -> kernels of its layers
    for run in runs:
        for name, i in run["info"].items():
            kernels[run["workload"], name] = set(i.get("kernels", ()))
    for workload, ratios in storage.items():
        for name, r in ratios.items():  # only where every layer is in a sparse format
            if name.startswith("sparse-") and "torch" not in kernels.get((workload, name), {1}):
                checks.append({"section": "sparse", "target": "storage within 10% of the "
                               "information-theoretic size (value: size / bound)",
                               "workload": workload, "threads": None, "batch": None,
                               "value": r, "value_of_minimums": None, "goal": 1.10,
                               "met": bool(r <= 1.10)})
    return checks


# ONNX Runtime's threads busy-wait between calls by default. With 2 threads on 2 cores that
# wins ORT ~15-30 % at batch 1 (no wake-up per call) but at batch 64 the spinning threads of
# the ORT sessions take the cores from whatever runs next: measured on a 1024² layer, torch
# eager 14.2 ms with spinning ORT sessions in the process vs 1.29 ms without, ORT fp32 itself
# 1.55 vs 1.59 ms and ORT int8 0.46 vs 0.38 ms. So every ORT candidate gets its faster setting:
# spinning below this batch size, not from it on.
SPIN_BELOW_BATCH = 8
SMALL_BATCH = 8  # batches up to this get 4x the timing rounds


def build(workload: str, threads: int, x: torch.Tensor, args, spinning: bool = True) -> dict:
    """Candidate name → (callable, model-level info) for one workload, thread count and
    ONNX Runtime spinning setting."""
    model = WORKLOADS[workload]["model"]()
    cands, info = {}, {}

    def add(name, cm, bound_bits=None):
        cands[name] = cm
        wb = getattr(cm, "weight_bytes", None)
        info[name] = {"weight_bytes": wb,
                      "kernels": sorted({r.kernel for r in cm.report.layers})
                      if hasattr(cm, "report") else []}
        if bound_bits and wb:
            info[name]["storage_vs_bound"] = wb / (bound_bits / 8)

    example = x[:64]
    add("torch", compile_model(model, "torch", threads=threads))
    add("ort-fp32", compile_model(model, "onnxruntime", example=example, threads=threads,
                                  spinning=spinning))
    cands["mkldnn"] = mkldnn_runner(model)
    if args.inductor:
        add("inductor", inductor_runner(model, x))
    spec = WORKLOADS[workload]
    sparse_candidates(model, spec, threads, add, cands, info)
    lowbit_candidates(workload, model, spec, threads, add, x, spinning)  # backend_lowbit.py
    return cands, info


def linear(d):
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(d, d)).eval()
    return make


def mlp():
    return create_model("mlp", (784,), 10, seed=0, hidden=(1024, 1024)).eval()


def default_cnn():
    import workbench

    return workbench.Session.default(progress=False).base.model


WORKLOADS = {
    "linear-1024": dict(model=linear(1024), inputs=(1024,),
                        sparsity=(0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95),
                        forced=(0.5, 0.6, 0.7, 0.75, 0.8), nm=True, bits=(8, 4),
                        ort_int8=("static", "dynamic"), binary=True),
    # forced: the 1024->10 layer (10,240 weights) stays on torch automatically, so the forced
    # variants show the storage of every layer in a sparse format
    "mlp-784-1024-1024-10": dict(model=mlp, inputs=(784,), sparsity=(0.9, 0.95),
                                 forced=(0.9, 0.95), nm=True,
                                 bits=(8, 4), ort_int8=("static", "dynamic"), binary=True),
    "linear-4096": dict(model=linear(4096), inputs=(4096,), sparsity=(0.9,), bits=(8, 4),
                        ort_int8=("dynamic",), binary=True),
    "default-cnn": dict(model=default_cnn, inputs=(1, 8, 8), sparsity=(0.9,), forced=(0.9,),
                        bits=(8,),
                        ort_int8=("static",)),
}


# --- timing ----------------------------------------------------------------------------------
def interleaved(cands: dict, x: torch.Tensor, rounds: int, warmup: int, budget: float) -> dict:
    """Median / p90 / min milliseconds per candidate over interleaved rounds."""
    times = {k: [] for k in cands}
    # a fixed order let each candidate always follow the same one: a layer that fell back to
    # torch eager measured 0.87-0.88x of torch eager itself at batch 1 (same code, different
    # cache state) in every run; shuffled, 0.93-1.11x over three runs, 1/2 threads, batch 1/64
    order, rng = list(cands), np.random.default_rng(0)
    with torch.inference_mode():
        for fn in cands.values():
            for _ in range(warmup):
                fn(x)
        start = time.perf_counter()
        for r in range(rounds):
            if r >= 3 and time.perf_counter() - start > budget:
                break
            rng.shuffle(order)
            for name in order:
                fn = cands[name]
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
    out = {}
    for k, t in times.items():
        t = np.asarray(t) * 1e3
        out[k] = {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
                  "min_ms": float(t.min()), "rounds": len(t)}
    return out


# --- targets ---------------------------------------------------------------------------------
def ratio(res, a, b, key="median_ms"):
    return res[b][key] / res[a][key] if a in res and b in res else None


def evaluate(runs: list[dict]) -> list[dict]:
    """Check the issue's targets on every (workload, threads, batch) run they apply to."""
    checks = []

    def check(target, run, value, goal, of_min=None):
        if value is not None:
            checks.append({"target": target, "workload": run["workload"], "threads":
                           run["threads"], "batch": run["batch"], "value": round(value, 3),
                           "value_of_minimums": None if of_min is None else round(of_min, 3),
                           "goal": goal, "met": bool(value >= goal)})

    for run in runs:
        res, w, b = run["timing"], run["workload"], run["batch"]
        best = run["best_dense"]

        def both(a, base):  # median ratio, and the ratio of minimum times (less noise)
            return ratio(res, a, base), ratio(res, a, base, "min_ms")

        wide = w in ("linear-1024", "mlp-784-1024-1024-10", "linear-4096")
        if wide and b == 64:
            check("int8 >= 2.5x best dense", run, *both("int8", best)[:1], 2.5, both("int8", best)[1])
            ort = [k for k in ("ort-int8-static", "ort-int8-dynamic") if k in res]
            if ort:
                fastest = min(ort, key=lambda k: res[k]["median_ms"])
                check("int8 >= 1.0x ONNX Runtime int8", run, *both("int8", fastest)[:1], 1.0,
                      both("int8", fastest)[1])
            check("binary (XNOR) >= 5x best dense", run, *both("binary-xnor", best)[:1], 5.0,
                  both("binary-xnor", best)[1])
        if w == "linear-4096" and b == 1:
            check("int4 >= 1.3x our int8 (batch 1, 4096^2)", run, *both("int4", "int8")[:1], 1.3,
                  both("int4", "int8")[1])
    return checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, skip linear-4096")
    ap.add_argument("--inductor", action="store_true", help="include torch.compile(freezing)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=None,
                    help="only these workloads (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 25)
    budget = 2.0 if args.quick else 6.0
    lib = load_kernels()
    print(f"{describe(lib)}; CPU: {cpu_name()}")
    t_start = time.perf_counter()
    runs, storage = [], {}
    names = args.workloads or [w for w in WORKLOADS if not (args.quick and w == "linear-4096")]
    for workload in names:
        spec = WORKLOADS[workload]
        for threads in args.threads:
            torch.set_num_threads(threads)
            x_all = torch.randn(max(args.batches + [256]), *spec["inputs"],
                                generator=torch.Generator().manual_seed(0))
            if workload == "default-cnn":
                import workbench

                x_all = workbench.Session.default(progress=False).data.x_test
            for batch in args.batches:
                cands = None
                gc.collect()  # the previous candidates' ORT sessions and their threads go now
                cands, info = build(workload, threads, x_all, args,
                                    spinning=batch < SPIN_BELOW_BATCH)
                for name, i in info.items():
                    if "storage_vs_bound" in i:
                        storage.setdefault(workload, {})[name] = round(i["storage_vs_bound"], 3)
                x = x_all[:batch].contiguous() if len(x_all) >= batch else \
                    torch.cat([x_all] * -(-batch // len(x_all)))[:batch].contiguous()
                # small batches: each call is ~0.05-0.5 ms and its time depends on what the
                # previous candidate left in the caches, so 25 rounds left medians 20 % apart
                # between runs; 4x the rounds cost a few seconds
                timing = interleaved(cands, x, rounds * (4 if batch <= SMALL_BATCH else 1), 2,
                                     budget)
                best = min((k for k in DENSE if k in timing),
                           key=lambda k: timing[k]["median_ms"])
                runs.append({"workload": workload, "threads": threads, "batch": batch,
                             "ort_spinning": batch < SPIN_BELOW_BATCH, "best_dense": best,
                             "timing": timing, "info": info})
                line = "  ".join(f"{k}={ratio(timing, k, best):.2f}x" for k in timing
                                 if k not in DENSE)
                print(f"{workload:<22} t={threads} b={batch:<3} best dense={best} "
                      f"({timing[best]['median_ms']:.3f} ms; torch "
                      f"{timing['torch']['median_ms']:.3f} ms)\n    {line}", flush=True)
    checks = evaluate(runs)
    sparse = sparse_checks(runs, storage)
    print_sparse_section(sparse, runs)
    checks += sparse
    lowbit = lowbit_checks(runs, storage)
    print_lowbit_section(lowbit, runs)
    checks += lowbit
    overhead = {t: call_overhead(t) for t in args.threads}
    cold = [cold_batch1(t) for t in args.threads] if not args.quick else []
    for c in cold:  # the same target as in the interleaved run, with every call cold
        checks.append({"section": "lowbit", "target": "int4 weight-only >= 1.3x our int8 "
                       "(int8 activations; batch 1, 4096^2, L3 flushed before every call)",
                       "workload": c["workload"], "threads": c["threads"], "batch": 1,
                       "value": c["int4-fp32 vs int8"], "value_of_minimums": None,
                       "goal": 1.3, "met": bool(c["int4-fp32 vs int8"] >= 1.3)})
    accuracy = accuracy_cost(args.quick)
    print("\ntargets (median ratios; noisy machine: see p90/min in the JSON):")
    for c in checks:
        mins = "" if c["value_of_minimums"] is None else f" (of minimums: {c['value_of_minimums']})"
        print(f"  [{'met' if c['met'] else 'MISSED'}] {c['target']}: {c['value']}{mins} "
              f"({c['workload']}, {c['threads']} thread(s), batch {c['batch']})")
    print("\nstorage / information-theoretic bound (goal <= 1.10):", json.dumps(storage))
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = None
    out = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                       **machine_info(), "kernels": describe(lib),
                       "vnni": bool(lib.wb_has_vnni()), "loadavg_at_end": load},
           "settings": {"rounds": rounds, "rounds_small_batch": 4 * rounds, "batches": args.batches, "threads": args.threads,
                        "inductor": args.inductor, "quick": args.quick,
                        "elapsed_s": round(time.perf_counter() - t_start, 1)},
           "runs": runs, "targets": checks, "storage_vs_bound": storage,
           "lowbit": {"accuracy": accuracy, "call_overhead_us": overhead, "cold_batch1": cold,
                      "sparse_break_even": break_even(runs)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out} in {out['settings']['elapsed_s']} s")


if __name__ == "__main__":
    main()
