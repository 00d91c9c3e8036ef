"""Build and load workbench's C kernels (``csrc/*.c``) with the system C compiler.

The kernels are compiled once per instruction set (:mod:`workbench.backend.isa`: ``avx512``,
``avx2`` or ``scalar`` on x86-64, ``neon`` or ``scalar`` on ARM) into the workbench cache
(``cache_dir("kernels")``), keyed by the sources, the compiler and its version, the flags and the
ISA, never by ``-march=native``: a home directory shared by two machines holds one library per
ISA and each machine loads one its CPU runs. Which ISA: ``load_kernels(isa)``, else
``$WORKBENCH_ISA``, else the best one the CPU's own feature probe (``csrc/cpu.c``) allows.

Each source is compiled on its own (two at a time); one that fails for an ISA is compiled for the
next lower one, and the library records that (``lib.source_isa``, ``lib.notes``), so a compiler
that lacks one ISA's intrinsics costs only that kernel its fast path. If no compiler is found,
or nothing builds, :func:`load_kernels` raises :class:`KernelUnavailable` and the ``sparse`` and
``lowbit`` engines run every layer on torch and say why in their report.

Why C and not numba: gcc's CSR kernels ran ~3x faster than the same loops under numba (72 vs
230 µs for a 90 %-sparse 1024² SpMV), and the int8/binary kernels need VNNI / VPOPCNTDQ
intrinsics. The main kernels share work through ``csrc/pool.c``; small helper loops use OpenMP
from torch's own libgomp.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from workbench.backend import isa as isas
from workbench.backend.isa import Isa
from workbench.cache import cache_dir, cache_key
from workbench.errors import WorkbenchError

CSRC = Path(__file__).with_name("csrc")
PROBE = "cpu.c"  # built for the architecture's baseline in every library (see csrc/cpu.c)
COMMON = ["-O3", "-fopenmp", "-pthread", "-fPIC", "-fno-math-errno", "-fno-trapping-math",
          "-fassociative-math", "-fno-signed-zeros", "-ffp-contract=fast", "-std=gnu11",
          "-Werror=implicit-function-declaration"]
LINK = ["-fopenmp", "-pthread", "-lm"]

_P, _I, _L, _F, _S = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_char_p
SIGNATURES = {
    "wb_cpu_features": (_S, []),
    "wb_isa_name": (_S, []),
    "wb_tile_width": (_I, [_L]),
    "wb_work_floats": (_L, [_L, _L, _L]),
    "wb_csr_spmm": (None, [_P, _P, _P, _P, _P, _P, _P, _P, _L, _L, _L, _L, _I, _I]),
    "wb_bitmask_spmm": (None, [_I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _L, _L, _L, _L, _I,
                               _I]),
    "wb_nm24_spmm": (None, [_P, _P, _P, _P, _P, _P, _L, _L, _L, _L, _I, _I]),
    "wb_im2col": (None, [_P, _P, _L, _L, _L, _L, _I, _I, _I, _I, _I, _I, _I, _I, _L, _L, _I, _I]),
    "wb_has_vnni": (_I, []),
    "wb_quantize_columns": (None, [_P, _P, _P, _P, _P, _L, _L, _L, _L, _F, _I, _I]),
    "wb_lowbit_gemm": (None, [_P, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _L, _L, _L, _L, _L,
                              _I, _I]),
    "wb_lowbit_work_bytes": (_L, [_L, _L]),
    "wb_lowbit_forward": (None, [_P, _P, _P, _I, _P, _P, _P, _P, _P, _L, _L, _L, _L, _L, _F, _I,
                                 _I, _I, _I]),
    "wb_binarize_columns": (None, [_P, _P, _P, _L, _L, _L, _L, _I]),
    "wb_xnor_gemm": (None, [_P, _P, _P, _P, _P, _P, _L, _L, _L, _L, _L, _I, _I]),
    "wb_wq_gemm": (None, [_P, _P, _I, _P, _P, _P, _P, _P, _L, _L, _L, _L, _I, _I]),
    "wb_wq_work": (_L, [_I, _L, _L]),
    "wb_wq_rows": (None, [_P, _P, _P, _P, _P, _P, _L, _L, _L, _L, _I, _I]),
    "wb_lowbit_rows": (None, [_P, _P, _P, _P, _P, _P, _P, _P, _L, _L, _L, _L, _F, _I, _I, _I,
                              _I]),
    "wb_wq_rice_work": (_L, [_L, _L]),
    "wb_wq_rice": (None, [_P, _P, _P, _P, _P, _I, _I, _I, _P, _P, _P, _P, _P, _L, _L, _L, _L,
                          _L, _I, _I]),
}

_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}
_errors: dict[str, str] = {}


class KernelUnavailable(WorkbenchError, RuntimeError):
    """The C kernels could not be built or loaded (the message says why)."""


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else the first of cc, gcc, clang on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.lru_cache(maxsize=None)
def compiler_version(cc: str) -> str:
    """``cc --version``'s first line (part of every cache key)."""
    out = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else cc


def kernel_sources() -> list[Path]:
    """The kernel sources (every ``csrc/*.c`` but the CPU probe), sorted."""
    return [f for f in sorted(CSRC.glob("*.c")) if f.name != PROBE]


@functools.lru_cache(maxsize=None)
def exported_functions(source: str) -> tuple[str, ...]:
    """The ``wb_*`` functions a source defines (non-static, at the start of a line)."""
    text = (CSRC / source).read_text()
    return tuple(re.findall(r"^(?!static)[A-Za-z_][\w\s\*]*?\b(wb_\w+)\s*\([^;]*?\)\s*\{",
                            text, flags=re.M))


def object_command(cc: str, isa: Isa, source: Path, out: Path,
                   label: str | None = None) -> list[str]:
    """The compiler call that builds ``source`` for ``isa`` into the object file ``out``;
    ``label`` (default: ``isa``'s name) is the ISA name the library reports."""
    return [cc, *COMMON, *isa.flags, f'-DWB_ISA="{label or isa.name}"', "-I", str(CSRC), "-c",
            str(source), "-o", str(out)]


def _compile_to(path: Path, command: list[str], what: str) -> None:
    """Run ``command + ["-o", tmp]`` and move ``tmp`` to ``path`` (never a half-written file);
    :class:`KernelUnavailable` with the compiler's message if it fails."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, suffix=".tmp")
    os.close(fd)
    proc = subprocess.run([*command, "-o", tmp], capture_output=True, text=True)
    if proc.returncode:
        Path(tmp).unlink(missing_ok=True)
        raise KernelUnavailable(f"{what} with {command[0]} failed:\n" + proc.stderr[-2000:])
    os.replace(tmp, path)


@dataclass
class Build:
    """What :func:`build` made: ``source_isa`` maps each source to the ISA it was built for."""

    path: Path
    isa: str
    source_isa: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def build(isa: Isa, cc: str, out: Path, *, extra_sources=(), executable: bool = False,
          jobs: int | None = None) -> Build:
    """Compile the kernels for ``isa`` with ``cc`` into ``out`` (a shared library, or an
    executable with ``extra_sources`` holding ``main``; the cross-compiled kernel tests use
    that). A source that fails for ``isa`` is retried for the next lower ISA of its
    architecture.

    Raises
    ------
    KernelUnavailable
        If a source builds for no ISA, or linking fails.
    """
    ladder = isas.isas(isa.arch)
    lower = ladder[ladder.index(isa):]
    result = Build(Path(out), isa.name)
    with tempfile.TemporaryDirectory() as tmp:
        def compile_one(source: Path):
            errors = []
            targets = [ladder[-1]] if source.name == PROBE else lower
            for target in targets:
                obj = Path(tmp) / f"{source.stem}.{target.name}.o"
                cmd = object_command(cc, target, source, obj, label=isa.name)
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode == 0:
                    return source, target.name, obj, errors
                errors.append(f"{target.name}: {proc.stderr.strip()[-600:]}")
            return source, None, None, errors

        sources = [*kernel_sources(), CSRC / PROBE, *map(Path, extra_sources)]
        with ThreadPoolExecutor(max_workers=jobs or min(4, os.cpu_count() or 1)) as pool:
            done = list(pool.map(compile_one, sources))
        objects = []
        for source, built, obj, errors in done:
            if built is None:
                raise KernelUnavailable(f"compiling {source.name} with {cc} failed for every "
                                        "instruction set:\n" + "\n".join(errors))
            objects.append(str(obj))
            if source.name != PROBE and source.parent == CSRC:
                result.source_isa[source.name] = built
            if built != isa.name and source.name != PROBE:
                first = errors[0].splitlines()[-1] if errors and errors[0] else ""
                result.notes.append(f"{source.name} does not build for {isa.name} ({first}); "
                                    f"its kernels run the {built} path")
        shape = [] if executable else ["-shared", "-Wl,--no-undefined"]
        _compile_to(out, [cc, *shape, *objects, *LINK], f"linking the {isa.name} kernels")
    return result


def _key(cc: str, isa: Isa) -> str:
    return cache_key(kind="kernels", isa=isa.name, arch=isa.arch, flags=[*COMMON, *isa.flags],
                     link=LINK, compiler=compiler_version(cc),
                     sources={f.name: f.read_bytes().hex() for f in sorted(CSRC.glob("*.[ch]"))})


def _need_compiler() -> str:
    cc = compiler()
    if cc is None:
        raise KernelUnavailable("no C compiler found (set $CC or install gcc/clang); the "
                                "compiled kernels are unavailable")
    return cc


def library_path(isa: str | None = None) -> tuple[Path, dict]:
    """The compiled kernels for ``isa`` (default: :func:`default_isa`) and their build record
    (``source_isa``, ``notes``), built on demand."""
    cc = _need_compiler()
    target = isas.get_isa(isa) if isa else default_isa()
    path = cache_dir("kernels") / f"wb_kernels_{target.name}_{_key(cc, target)}.so"
    record = path.with_suffix(".json")
    if not path.exists() or not record.exists():
        made = build(target, cc, path)
        record.write_text(json.dumps({"source_isa": made.source_isa, "notes": made.notes}))
    return path, json.loads(record.read_text())


@functools.lru_cache(maxsize=1)
def _probe_features() -> frozenset:
    cc = _need_compiler()
    base = isas.isas()[-1] if isas.isas() else None
    flags = list(base.flags) if base else []
    key = cache_key(kind="probe", flags=flags, compiler=compiler_version(cc),
                    source=(CSRC / PROBE).read_text())
    path = cache_dir("kernels") / f"wb_cpu_{key}.so"
    if not path.exists():
        _compile_to(path, [cc, "-O2", "-fPIC", "-shared", *flags, str(CSRC / PROBE)],
                    "compiling the CPU probe")
    lib = ctypes.CDLL(str(path))
    lib.wb_cpu_features.restype = ctypes.c_char_p
    return frozenset(filter(None, lib.wb_cpu_features().decode().split(",")))


def cpu_features() -> frozenset:
    """This CPU's features as the kernels' probe reports them (``csrc/cpu.c``).

    Raises
    ------
    KernelUnavailable
        If the probe cannot be compiled.
    """
    try:
        return _probe_features()
    except OSError as err:
        raise KernelUnavailable(f"the CPU probe does not load: {err}") from None


def runnable_isas() -> list[Isa]:
    """The ISAs of this machine that its CPU runs, best first (empty without a compiler or on
    an architecture without kernel builds)."""
    try:
        features = cpu_features()
    except KernelUnavailable:
        return []
    return [i for i in isas.isas() if not i.missing(features)]


def default_isa() -> Isa:
    """``$WORKBENCH_ISA`` if set, else the best ISA this CPU runs."""
    name = isas.requested()
    if name:
        return isas.get_isa(name)
    if not isas.isas():
        raise KernelUnavailable(f"no kernel build for the {isas.machine()} architecture")
    return isas.best_isa(isas.machine(), cpu_features())


def load_kernels(isa: str | None = None):
    """The kernel library for ``isa`` (default: :func:`default_isa`), built on first use: a
    ``ctypes.CDLL`` with typed functions and ``isa`` (its name), ``source_isa`` (source →
    ISA it was built for) and ``notes``.

    Raises
    ------
    KernelUnavailable
        If there is no working C compiler, or the CPU cannot run ``isa``.
    ParameterError
        If ``isa`` (or ``$WORKBENCH_ISA``) names no instruction set of this architecture.

    Examples
    --------
    >>> lib = load_kernels()
    >>> lib.isa in ("avx512", "avx2", "neon", "scalar")
    True
    >>> lib.wb_tile_width(100)  # columns per packed tile (in the SIMD lanes)
    64
    """
    target = isas.get_isa(isa) if isa else default_isa()
    with _lock:
        if target.name in _libs:
            return _libs[target.name]
        if target.name in _errors:
            raise KernelUnavailable(_errors[target.name])
        try:
            missing = target.missing(cpu_features())
            if missing:
                raise KernelUnavailable(f"this CPU cannot run the {target.name} kernels: it "
                                        f"lacks {', '.join(missing)}")
            import torch  # noqa: F401  load torch's OpenMP runtime first, so both share it

            path, record = library_path(target.name)
            lib = ctypes.CDLL(str(path))
        except (OSError, KernelUnavailable) as err:
            _errors[target.name] = str(err)
            raise KernelUnavailable(_errors[target.name]) from None
        for name, (res, args) in SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        assert lib.wb_isa_name().decode() == target.name, (lib.wb_isa_name(), target.name)
        lib.isa, lib.isa_info = target.name, target
        lib.source_isa, lib.notes = dict(record["source_isa"]), list(record["notes"])
        _libs[target.name] = lib
        return lib


def isa_of(lib, function: str) -> str:
    """The ISA whose code runs ``function`` in ``lib`` (its source's build)."""
    for source, built in lib.source_isa.items():
        if function in exported_functions(source):
            return built
    return lib.isa


def describe(lib) -> str:
    """One line for reports: the ISA of ``lib``, why it was chosen, and any fallback."""
    how = (f"set by {isas.ENV}" if isas.requested() == lib.isa else
           "the best this CPU runs" if runnable_isas()[:1] == [lib.isa_info] else "requested")
    text = f"kernels built for {lib.isa} ({lib.isa_info.description}; {how})"
    speed = [f"the {lib.isa} kernels are {lib.isa_info.speed}"] if lib.isa_info.speed else []
    return "; ".join([text, *speed, *lib.notes])


def kernels_or_none(report, isa: str | None = None):
    """The kernels for ``isa`` with a note in ``report`` saying which build runs, or ``None``
    with a note saying why every layer runs on torch (an engine's first step)."""
    try:
        lib = load_kernels(isa)
    except KernelUnavailable as err:
        report.notes.append(f"compiled kernels unavailable, every layer runs on torch: {err}")
        return None
    report.notes.append(describe(lib))
    return lib


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "CPU part")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or isas.machine()


def machine_info() -> dict:
    """What a benchmark report needs to say where it ran: architecture, CPU, the probe's
    features, and the ISA the kernels use here (or why there are none)."""
    info = {"arch": isas.machine(), "cpu": cpu_name()}
    try:
        info["features"] = sorted(cpu_features())
        info["isa"] = load_kernels().isa
    except WorkbenchError as err:  # no compiler, no build for this CPU, a bad $WORKBENCH_ISA
        info["isa"], info["kernels_unavailable"] = None, str(err)
    return info


def available(isa: str | None = None) -> bool:
    """True if the compiled kernels (for ``isa``, default: :func:`default_isa`) can be used."""
    try:
        load_kernels(isa)
        return True
    except KernelUnavailable:
        return False
