"""The instruction sets the compiled kernels are built for, and which one this CPU runs.

Every kernel source (``csrc/*.c``) is written once, with portable C (GCC vector extensions and
plain loops) and intrinsic branches under feature macros (``__AVX512VNNI__``, ``__BMI2__``,
``__ARM_FEATURE_DOTPROD``, ...). An :class:`Isa` is one set of compiler flags for those sources;
the build (:mod:`workbench.backend.native`) makes one shared library per ISA, on demand, and the
engines load the best one the CPU runs, unless ``WORKBENCH_ISA`` (or an engine's ``isa=``) says
otherwise. The CPU's features come from the kernels' own probe (``csrc/cpu.c``: cpuid through
``__builtin_cpu_supports`` on x86-64, ``getauxval`` on Linux/ARM, ``sysctl`` on macOS).

Why one library per ISA rather than ``target_clones`` in one library: the intrinsic branches are
chosen by the preprocessor, which a function attribute does not re-run, so multiversioning would
mean a second copy of every intrinsic loop; separate builds of the same translation units keep
one source per kernel, cost nothing per call (no indirect dispatch in the ~1 µs batch-1 calls),
and only the ISA in use is compiled (~4 s with gcc on 2 cores).

Examples
--------
>>> [isa.name for isa in ISAS["x86_64"]]
['avx512', 'avx2', 'scalar']
>>> best_isa("x86_64", {"avx", "avx2", "fma", "bmi", "bmi2", "f16c", "movbe", "lzcnt"}).name
'avx2'
>>> best_isa("aarch64", {"asimd"}).name
'scalar'
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from workbench.errors import ParameterError

ENV = "WORKBENCH_ISA"


@dataclass(frozen=True)
class Isa:
    """One build of the kernels: ``flags`` for the C compiler, ``requires`` the CPU features
    (as ``csrc/cpu.c`` names them) it needs; ``speed`` says what is known of its speed where
    its kernels are not tuned yet (empty for a tuned build)."""

    name: str
    arch: str
    flags: tuple[str, ...]
    requires: frozenset[str]
    description: str
    speed: str = ""

    def missing(self, features) -> list[str]:
        """The required features ``features`` lacks, sorted."""
        return sorted(self.requires - set(features))


# benchmarks/results/backend-avx2-forced.json (the avx2 build on an AVX-512 Xeon, against
# dense baselines that keep AVX-512): GCC lowers the kernels' 16-float vectors through the
# stack without AVX-512, so most paths are slower than dense torch until they are rewritten
# for 8-float vectors
_UNTUNED_X86 = ("correct but not tuned yet: slower than dense torch at batch 64 on tiled "
                "sparse (0.3-0.5x), 2:4 (0.1-0.15x) and dense packed low-bit layers (0.02-0.1x); "
                "faster at 95 % sparsity at batch 1 (2-3x), on Rice-coded pruned + quantized "
                "layers (0.9-1.9x) and XNOR (1.4-10x)")
_V3 = frozenset({"avx", "avx2", "fma", "bmi", "bmi2", "f16c", "movbe", "lzcnt"})
_V4 = _V3 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}

# Best first. The AVX-512 build asks for the Ice Lake / Zen 4 set its kernels use (VNNI for the
# int8 dot products, VBMI/VBMI2 for the byte compress/permute decoders, VPOPCNTDQ for XNOR);
# a Skylake-X without them runs the AVX2 build.
ISAS: dict[str, tuple[Isa, ...]] = {
    "x86_64": (
        Isa("avx512", "x86_64",
            ("-march=x86-64-v4", "-mavx512vnni", "-mavx512vbmi", "-mavx512vbmi2",
             "-mavx512vpopcntdq", "-mavx512bitalg", "-mtune=generic"),
            _V4 | {"avx512vnni", "avx512vbmi", "avx512vbmi2", "avx512vpopcntdq",
                   "avx512bitalg"},
            "AVX-512 F/BW/DQ/VL + VNNI, VBMI2, VPOPCNTDQ"),
        Isa("avx2", "x86_64", ("-march=x86-64-v3", "-mtune=generic"), _V3,
            "AVX2 + FMA + BMI2 (x86-64-v3)", _UNTUNED_X86),
        Isa("scalar", "x86_64", ("-march=x86-64", "-mtune=generic"), frozenset(),
            "portable C (x86-64 baseline, SSE2)", _UNTUNED_X86),
    ),
    "aarch64": (
        Isa("neon", "aarch64", ("-march=armv8.2-a+dotprod",), frozenset({"asimd", "asimddp"}),
            "NEON + dot product (Armv8.2-A)", "correct (checked under qemu), speed not measured"),
        Isa("scalar", "aarch64", ("-march=armv8-a",), frozenset(),
            "portable C (Armv8-A baseline)", "correct (checked under qemu), speed not measured"),
    ),
}

NAMES = ("avx512", "avx2", "neon", "scalar")


def machine() -> str:
    """This machine's architecture as :data:`ISAS` keys it (``x86_64``, ``aarch64``, ...)."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


def isas(arch: str | None = None) -> tuple[Isa, ...]:
    """The ISAs of ``arch`` (default: this machine), best first; empty if unknown."""
    return ISAS.get(arch or machine(), ())


def get_isa(name: str, arch: str | None = None) -> Isa:
    """The ISA called ``name`` on ``arch``; a clear error for any other name."""
    for isa in isas(arch):
        if isa.name == name:
            return isa
    known = [i.name for i in isas(arch)]
    raise ParameterError(f"unknown instruction set {name!r} for {arch or machine()}: "
                         f"choose one of {known}")


def best_isa(arch: str, features) -> Isa:
    """The best ISA of ``arch`` whose requirements ``features`` meets (the last one needs
    none)."""
    for isa in isas(arch):
        if not isa.missing(features):
            return isa
    raise ParameterError(f"no kernel build for the {arch} architecture")


def requested() -> str | None:
    """The ISA named by ``$WORKBENCH_ISA`` (``None`` if unset or empty), checked."""
    name = os.environ.get(ENV, "").strip().lower()
    if not name:
        return None
    if name not in NAMES:
        raise ParameterError(f"{ENV}={name!r} is not an instruction set: choose one of "
                             f"{list(NAMES)}")
    return name
