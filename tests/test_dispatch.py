"""The kernels' instruction-set dispatch (``workbench.backend.isa``, ``native``): every ISA of
this architecture builds, the CPU probe agrees with the operating system, the best build this
CPU runs loads and is used by every layer of every engine (no silent fallback to torch), a
source that fails for one ISA falls back alone with the reason in the report, and the cache
never hands one CPU's build to another."""

from __future__ import annotations

import collections
import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from workbench.backend import compile_model, isa, native
from workbench.errors import ParameterError
from workbench.prune import PRUNERS
from workbench.quantize import QUANTIZERS

# /proc/cpuinfo's spelling of the probe's feature names where they differ
CPUINFO_NAMES = {"bmi1": "bmi", "abm": "lzcnt", "sse4_2": "sse4.2", "avx512_vnni": "avx512vnni",
                 "avx512_vbmi2": "avx512vbmi2", "avx512_vpopcntdq": "avx512vpopcntdq",
                 "avx512_bitalg": "avx512bitalg", "avx_vnni": "avxvnni"}
WORK_FUNCTIONS = {"wb_csr_spmm", "wb_bitmask_spmm", "wb_nm24_spmm", "wb_im2col",
                  "wb_lowbit_forward", "wb_lowbit_rows", "wb_binarize_columns", "wb_xnor_gemm",
                  "wb_wq_gemm", "wb_wq_rows", "wb_wq_rice"}


@pytest.fixture
def fresh_libraries(monkeypatch, tmp_path):
    """An empty kernel cache and no library loaded yet (restored afterwards)."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv(isa.ENV, raising=False)
    monkeypatch.setattr(native, "_libs", {})
    monkeypatch.setattr(native, "_errors", {})
    return tmp_path


def _cpuinfo_features() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return {CPUINFO_NAMES.get(f, f) for f in line.split(":", 1)[1].split()}
    return None


def test_the_probe_agrees_with_the_operating_system():
    features = native.cpu_features()
    listed = _cpuinfo_features()
    if listed is None:
        if platform.system() == "Linux":
            pytest.fail("/proc/cpuinfo has no flags/Features line to compare the probe with")
        pytest.skip(f"no /proc/cpuinfo on {platform.system()} to compare the probe with")
    known = {f for i in isa.isas() for f in i.requires}
    assert features & known == listed & known
    if isa.machine() == "x86_64":
        assert {"sse4.2", "popcnt"} <= features  # every x86-64 CPU of the last 15 years


def test_the_best_build_this_cpu_runs_loads_with_every_source(monkeypatch):
    """This must fail, not skip, when the kernels do not build or load on this machine."""
    monkeypatch.delenv(isa.ENV, raising=False)
    runnable = native.runnable_isas()
    assert runnable, f"no kernel build runs on this {platform.machine()} CPU"
    lib = native.load_kernels()
    assert lib.isa == runnable[0].name == native.default_isa().name
    assert set(lib.source_isa.values()) == {lib.isa}, lib.notes
    assert lib.notes == []
    assert lib.wb_isa_name().decode() == lib.isa
    if {"avx2", "fma", "bmi2"} <= native.cpu_features():
        assert lib.isa in ("avx2", "avx512")
    if "avx512vnni" in native.cpu_features() and "avx512vbmi2" in native.cpu_features():
        assert lib.isa == "avx512" and lib.wb_has_vnni() == 1


@pytest.mark.parametrize("name", [i.name for i in isa.isas()])
def test_every_isa_of_this_architecture_builds(name, tmp_path):
    """Also the ones this CPU cannot run (an AVX2 machine still compiles the AVX-512 code):
    warnings about undeclared functions are errors and the library must have no undefined
    symbols (a BMI2 intrinsic without its header once built and then failed to load)."""
    target = isa.get_isa(name)
    made = native.build(target, native.compiler(), tmp_path / f"{name}.so")
    assert set(made.source_isa.values()) == {name}, made.notes
    assert set(made.source_isa) == {f.name for f in native.kernel_sources()}
    assert (tmp_path / f"{name}.so").stat().st_size > 10_000


def test_each_forced_isa_runs_the_same_layer_to_the_same_result(monkeypatch):
    model = nn.Sequential(nn.Linear(300, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.2)
    x = torch.randn(17, 300)
    with torch.no_grad():
        ref = model(x)
    for target in native.runnable_isas():
        cm = compile_model(model, "sparse", max_density=1.0, isa=target.name)
        assert cm.report.isas() == {"0": target.name, "2": target.name}
        assert any(f"kernels built for {target.name}" in n for n in cm.report.notes)
        assert f"[{target.name}]" in str(cm.report)
        assert float((cm(x) - ref).abs().max()) < 1e-4
        monkeypatch.setenv(isa.ENV, target.name)
        assert compile_model(model, "sparse", max_density=1.0).report.isas()["0"] == target.name
        monkeypatch.delenv(isa.ENV)


def test_a_bad_isa_name_is_a_clear_error(monkeypatch):
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ParameterError, match="choose one of"):
        compile_model(model, "sparse", isa="avx3")
    monkeypatch.setenv(isa.ENV, "sse9")
    with pytest.raises(ParameterError, match="WORKBENCH_ISA='sse9'"):
        compile_model(model, "sparse")


def test_an_isa_the_cpu_lacks_is_refused_and_the_layers_fall_back(fresh_libraries,
                                                                     monkeypatch):
    """A CPU with just the second-best build's features (AVX2 without AVX-512 on x86-64,
    NEON without the dot product on ARM)."""
    top, second = isa.isas()[:2]
    monkeypatch.setattr(native, "cpu_features", lambda: frozenset(second.requires))
    assert native.default_isa() == second
    lacking = ", ".join(top.missing(second.requires))
    with pytest.raises(native.KernelUnavailable, match=f"lacks {lacking}$"):
        native.load_kernels(top.name)
    cm = compile_model(nn.Sequential(nn.Linear(8, 4)), "sparse", max_density=1.0, isa=top.name)
    assert cm.report.kernels() == {"0": "torch"}
    assert any(f"cannot run the {top.name} kernels" in n for n in cm.report.notes)
    assert native.load_kernels().isa == second.name


def test_a_source_that_fails_for_one_isa_falls_back_alone(fresh_libraries, monkeypatch):
    """rice.c made to fail for the best ISA: only its kernel runs the next lower build, and the
    library, the layer report and the engine notes say so."""
    best, lower = native.runnable_isas()[0], native.runnable_isas()[1]
    command = native.object_command

    def failing(cc, target, source, out, label=None):
        cmd = command(cc, target, source, out, label)
        return cmd + ["-DWB_TEST_BROKEN", "-include", "/nonexistent/broken.h"] \
            if source.name == "rice.c" and target == best else cmd

    monkeypatch.setattr(native, "object_command", failing)
    lib = native.load_kernels()
    assert lib.isa == best.name and lib.source_isa["rice.c"] == lower.name
    assert {v for k, v in lib.source_isa.items() if k != "rice.c"} == {best.name}
    assert any(n.startswith(f"rice.c does not build for {best.name}") for n in lib.notes)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 48))
    pruned = PRUNERS["global_magnitude"](model, 0.9).model
    q = QUANTIZERS["uniform"](pruned, 4)
    cm = compile_model(q.model, "lowbit", quant=q.layers, max_density=1.0)
    assert cm.report.kernels()["0"] == "int4-sparse-fp32"
    assert cm.report.isas()["0"] == lower.name
    assert any(f"its kernels run the {lower.name} path" in n for n in cm.report.notes)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert float((cm(x) - q.model(x)).abs().max()) < 1e-4


def test_the_cache_is_keyed_by_isa_and_compiler(fresh_libraries, monkeypatch):
    paths = {t.name: native.library_path(t.name)[0] for t in native.runnable_isas()[:2]}
    assert len(set(paths.values())) == len(paths)
    assert all(f"wb_kernels_{name}_" in p.name for name, p in paths.items())
    name = native.runnable_isas()[0].name
    real = native.compiler_version
    monkeypatch.setattr(native, "compiler_version", lambda cc: real(cc) + " (another build)")
    assert native.library_path(name)[0] != paths[name]


class _Counting:
    """The kernel library with a count of calls per function."""

    def __init__(self, lib):
        self._lib, self.calls = lib, collections.Counter()

    def __getattr__(self, name):
        attr = getattr(self._lib, name)
        if not name.startswith("wb_"):
            return attr

        def call(*args):
            self.calls[name] += 1
            return attr(*args)

        call.argtypes, call.restype = attr.argtypes, attr.restype
        return call


def _variants():
    g = torch.Generator().manual_seed(0)
    mlp = nn.Sequential(nn.Linear(256, 192), nn.ReLU(), nn.Linear(192, 160), nn.ReLU(),
                        nn.Linear(160, 5)).eval()
    cnn = nn.Sequential(nn.Conv2d(4, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 40, 3, 2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(40 * 7 * 7, 10)).eval()
    for m in (mlp, cnn):
        for p in m.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return mlp, cnn


def test_every_kernel_of_ours_is_used_on_this_machine(monkeypatch):
    """No silent fallback: the automatic choices of every engine put each layer that fits on
    our kernels, built for the best ISA, and together they call every work function."""
    monkeypatch.delenv(isa.ENV, raising=False)
    best = native.runnable_isas()[0].name
    counting = _Counting(native.load_kernels())
    monkeypatch.setattr(native, "load_kernels", lambda isa=None: counting)
    mlp, cnn = _variants()
    xs = {id(mlp): torch.randn(70, 256), id(cnn): torch.randn(9, 4, 16, 16)}
    runs = []
    for model in (mlp, cnn):
        x = xs[id(model)]
        pruned = PRUNERS["global_magnitude"](model, 0.9).model
        nm = PRUNERS["nm"](model, 0.5).model
        runs += [(compile_model(pruned, "sparse"), x, pruned, "sparse")]
        runs += [(compile_model(nm, "sparse", max_density=1.0), x, nm, "2:4")]
        for fmt in ("csr", "bitmask", "bitmask-2level"):
            runs += [(compile_model(pruned, "sparse", max_density=1.0, formats=(fmt,)), x,
                      pruned, fmt)]
        for bits in (8, 4, 2):
            q = QUANTIZERS["uniform"](model, bits)
            runs += [(compile_model(q.model, "lowbit", quant=q.layers), x, q.model, "wq")]
            runs += [(compile_model(q.model, "lowbit-int8", quant=q.layers), x, None, "int8")]
            qs = QUANTIZERS["uniform"](pruned, bits)
            runs += [(compile_model(qs.model, "lowbit", quant=qs.layers), x, qs.model, "rice")]
        b = QUANTIZERS["binary"](model, 1)
        runs += [(compile_model(b.model, "lowbit", quant=b.layers, binary_activations=True), x,
                  None, "xnor")]
    for cm, x, model, what in runs:
        on_torch = cm.report.fallbacks()
        # the automatic sparse choice leaves only layers below MIN_WEIGHTS on torch
        allowed = {n for n, why in on_torch.items() if "too small" in why or "not quantized" in why}
        assert set(on_torch) == allowed, (what, cm.report)
        assert set(cm.report.isas().values()) == {best}, (what, cm.report)
        out = cm(x)
        if model is not None:
            with torch.no_grad():
                ref = model(x)
            assert float((out - ref).abs().max()) < 1e-3 * (1 + float(ref.abs().max())), what
    assert WORK_FUNCTIONS <= set(counting.calls), WORK_FUNCTIONS - set(counting.calls)
