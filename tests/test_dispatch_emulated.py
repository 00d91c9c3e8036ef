"""On a CPU without AVX-512: this process runs again under ``qemu-x86_64 -cpu EPYC-Milan`` (a
Zen 3: AVX2, FMA, BMI2, no AVX-512), where cpuid itself reports no AVX-512. The probe must say
so, the AVX2 build must be chosen and load, every engine must put its layers on it, and
forcing the AVX-512 build must be refused with the missing features named, not crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from workbench.backend import isa, native

ZEN3 = "EPYC-Milan"
CHILD = textwrap.dedent("""
    import json, torch
    from torch import nn
    from workbench.backend import compile_model, native
    from workbench.prune import PRUNERS
    from workbench.quantize import QUANTIZERS

    out = {"features": sorted(native.cpu_features()), "default": native.default_isa().name}
    lib = native.load_kernels()
    out["loaded"] = lib.isa
    try:
        native.load_kernels("avx512")
        out["avx512"] = "loaded"
    except native.KernelUnavailable as err:
        out["avx512"] = str(err)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    pruned = PRUNERS["global_magnitude"](model, 0.9).model
    q = QUANTIZERS["uniform"](model, 4)
    x = torch.randn(9, 256)
    runs = {"sparse": (compile_model(pruned, "sparse", max_density=1.0), pruned),
            "lowbit": (compile_model(q.model, "lowbit", quant=q.layers), q.model),
            "lowbit-int8": (compile_model(q.model, "lowbit-int8", quant=q.layers), None)}
    for name, (cm, ref) in runs.items():
        err = None
        if ref is not None:
            with torch.no_grad():
                err = float((cm(x) - ref(x)).abs().max())
        out[name] = {"isas": cm.report.isas(), "kernels": cm.report.kernels(), "err": err}
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_a_cpu_without_avx512_gets_the_avx2_kernels(tmp_path):
    if isa.machine() != "x86_64":
        pytest.skip("emulates an x86-64 CPU")
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-x86_64 is missing (apt-get install qemu-user)")
        pytest.skip("qemu-x86_64 not installed (Debian package qemu-user)")
    native.library_path("avx2")  # built here: gcc under emulation would take minutes
    env = {k: v for k, v in os.environ.items() if k != isa.ENV}
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([qemu, "-cpu", ZEN3, os.path.realpath(sys.executable), str(script)],
                          capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    assert "avx2" in out["features"] and "avx512f" not in out["features"]
    assert out["default"] == out["loaded"] == "avx2"
    assert "cannot run the avx512 kernels" in out["avx512"] and "avx512f" in out["avx512"]
    for engine in ("sparse", "lowbit", "lowbit-int8"):
        assert set(out[engine]["isas"].values()) == {"avx2"}, out[engine]
        assert "torch" not in out[engine]["kernels"].values(), out[engine]
    assert out["sparse"]["err"] < 1e-4 and out["lowbit"]["err"] < 1e-4
