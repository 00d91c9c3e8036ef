"""Record the C kernel calls of real compiled models on the host and replay them elsewhere.

Python and torch do not run under qemu-user, so the kernels are checked on another
architecture by *record and replay*:

1. :func:`recording` swaps ``native.load_kernels`` for a :class:`RecordingLibrary` around the
   host library: every ``wb_*`` call an engine makes is kept as a :class:`Call` (name,
   arguments, return value, and for every pointer argument the bytes of the whole torch
   storage it points into, before and after the call).
2. :func:`write_calls` writes them to a binary file; :func:`driver_source` generates, from
   ``native.SIGNATURES``, a C program that replays each call on freshly allocated buffers
   holding the recorded "before" bytes and writes back the return value and the bytes of the
   output buffers. :func:`build_driver` cross-compiles it with every kernel source
   (``native.build``), :func:`run_driver` runs it (under ``qemu-aarch64``) and reads the
   results back.
3. :func:`compare` checks the replayed results against the recorded host ones.

The file formats (all integers little-endian) are private to this module and its generated
driver; the driver is generated at test time and never committed.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import gc
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from workbench.backend import isa as isas
from workbench.backend import native

MAGIC = b"WBREPLAY"
RESULTS_MAGIC = b"WBRESULT"
VERSION = 1
ALIGN = 64  # replayed buffers keep their storage's address modulo this
# functions that report on the library itself, not kernel work: never recorded
PROBES = ("wb_cpu_features", "wb_isa_name")
ARG_NULL, ARG_INT, ARG_FLOAT, ARG_PTR = 0, 1, 2, 3
QEMU_PREFIX = "/usr/aarch64-linux-gnu"


# --------------------------------------------------------------------------- recorded calls

@dataclass(frozen=True)
class Arg:
    """One recorded argument: ``kind`` is ``"null"``, ``"int"``, ``"float"`` or ``"ptr"``;
    ``value`` the integer, the float (as float32), or for ``"ptr"`` the byte offset into
    buffer ``buf`` of the call."""

    kind: str
    value: int | float = 0
    buf: int = 0


@dataclass(frozen=True)
class Buffer:
    """A storage a call's pointers point into: its size, address modulo :data:`ALIGN`, and
    the blob ids of its bytes before and after the call."""

    size: int
    align: int
    before: int
    after: int


@dataclass(frozen=True)
class Call:
    """One recorded kernel call."""

    name: str
    args: tuple[Arg, ...]
    ret: int | None
    buffers: tuple[Buffer, ...]

    def shape(self) -> tuple:
        """The call's scalar arguments (sizes, flags, threads) for reports."""
        return tuple(a.value for a in self.args if a.kind in ("int", "float"))


@dataclass
class Recording:
    """Recorded calls and the deduplicated bytes (blobs) their buffers refer to."""

    calls: list[Call] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    _ids: dict = field(default_factory=dict, repr=False)

    def blob(self, data: bytes) -> int:
        """The id of ``data`` in :attr:`blobs`, added if new (identical bytes share one id)."""
        key = hashlib.blake2b(data, digest_size=20).digest() + len(data).to_bytes(8, "little")
        if key not in self._ids:
            self._ids[key] = len(self.blobs)
            self.blobs.append(bytes(data))
        return self._ids[key]

    def functions(self) -> set[str]:
        """The names of the functions called at least once."""
        return {c.name for c in self.calls}


# --------------------------------------------------------------------------- finding buffers

def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    """``(address, nbytes)`` of the CPU storage of ``t``, or None (empty or not CPU memory)."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter):  # FakeTensor & co. own no memory
        return None
    try:
        if t.device.type != "cpu" or t.is_sparse:
            return None
        s = t.untyped_storage()
        base, n = s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return (base, n) if base and n else None


def _tensors_in(value, depth: int):
    """Tensors in ``value``: itself, or inside containers and object attributes, ``depth``
    levels down."""
    if isinstance(value, torch.Tensor):
        yield value
        return
    if depth <= 0 or isinstance(value, (str, bytes, int, float, type)) \
            or type(value).__name__ == "module":
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        items = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        items = getattr(value, "__dict__", {}).values() if hasattr(value, "__dict__") else ()
    for item in list(items)[:256]:
        yield from _tensors_in(item, depth - 1)


class TensorIndex:
    """Live torch storages by address, to find the buffer behind a raw pointer.

    Candidates come from the callers' frames (their locals, two levels into containers and
    attributes: ``y``, ``work``, ``self.packed``), then from every tensor the garbage collector
    tracks. Entries hold weak references, so a storage is only trusted while a tensor of it is
    alive (a freed address may be reused by a different allocation).
    """

    def __init__(self):
        self._entries: dict[int, weakref.ref] = {}
        self._bases: list[int] | None = []

    def _add(self, t: torch.Tensor) -> None:
        st = _storage(t)
        if st is None:
            return
        base = st[0]
        old = self._entries.get(base)
        if old is None or old() is None or _storage(old()) != st:
            try:
                self._entries[base] = weakref.ref(t)
            except TypeError:
                return
            self._bases = None

    def _lookup(self, address: int) -> tuple[int, int] | None:
        if self._bases is None:
            self._bases = sorted(self._entries)
        i = bisect.bisect_right(self._bases, address) - 1
        for j in range(i, max(i - 4, -1), -1):  # storages do not overlap, but be lenient
            base = self._bases[j]
            t = self._entries[base]()
            st = _storage(t) if t is not None else None
            if st is None or st[0] != base:
                continue
            if base <= address < base + st[1]:
                return st
        return None

    def _prune(self) -> None:
        dead = [b for b, r in self._entries.items() if r() is None]
        for b in dead:
            del self._entries[b]
        self._bases = None

    def find(self, address: int, frame=None) -> tuple[int, int] | None:
        """``(storage address, nbytes)`` of the live storage holding ``address``, or None."""
        hit = self._lookup(address)
        if hit is not None:
            return hit
        f, depth = frame, 0
        while f is not None and depth < 12:
            for value in list(f.f_locals.values()):
                for t in _tensors_in(value, 2):
                    self._add(t)
            f, depth = f.f_back, depth + 1
        hit = self._lookup(address)
        if hit is not None:
            return hit
        self._prune()
        for obj in gc.get_objects():
            if issubclass(type(obj), torch.Tensor):
                self._add(obj)
        return self._lookup(address)


# --------------------------------------------------------------------------- recording

class RecordingFunction:
    """A ``wb_*`` function of the real library that records every call into a
    :class:`Recording`; ``argtypes`` / ``restype`` are the real function's."""

    def __init__(self, name: str, fn, recording: Recording, index: TensorIndex):
        self.__name__ = self.name = name
        self._fn, self._recording, self._index = fn, recording, index

    @property
    def argtypes(self):
        return self._fn.argtypes

    @argtypes.setter
    def argtypes(self, value):
        self._fn.argtypes = value

    @property
    def restype(self):
        return self._fn.restype

    @restype.setter
    def restype(self, value):
        self._fn.restype = value

    def _encode(self, args, frame):
        """The recorded arguments and the ``(address, nbytes)`` of each distinct buffer."""
        argtypes = list(self._fn.argtypes or [])
        if len(args) != len(argtypes):
            raise TypeError(f"{self.name}: {len(args)} arguments, its signature has "
                            f"{len(argtypes)}")
        encoded, storages, slot = [], [], {}
        for i, (ctype, value) in enumerate(zip(argtypes, args)):
            if ctype is ctypes.c_void_p:
                if value is None or value == 0:
                    encoded.append(Arg("null"))
                    continue
                if not isinstance(value, int):
                    raise TypeError(f"{self.name}: pointer argument {i} is a "
                                    f"{type(value).__name__}, not an address")
                st = self._index.find(value, frame)
                if st is None:
                    raise LookupError(f"{self.name}: pointer argument {i} (0x{value:x}) lies "
                                      "in no live torch tensor")
                if st[0] not in slot:
                    slot[st[0]] = len(storages)
                    storages.append(st)
                encoded.append(Arg("ptr", value - st[0], slot[st[0]]))
            elif ctype is ctypes.c_float:
                encoded.append(Arg("float", struct.unpack("<f", struct.pack("<f", value))[0]))
            elif ctype in (ctypes.c_int, ctypes.c_int64):
                encoded.append(Arg("int", int(value)))
            else:
                raise TypeError(f"{self.name}: argument {i} has unsupported type {ctype}")
        return tuple(encoded), storages

    def __call__(self, *args):
        if self.name in PROBES:
            return self._fn(*args)
        encoded, storages = self._encode(args, sys._getframe(1))
        before = [self._recording.blob(ctypes.string_at(b, n)) for b, n in storages]
        ret = self._fn(*args)
        buffers = tuple(Buffer(n, b % ALIGN, pre, self._recording.blob(ctypes.string_at(b, n)))
                        for (b, n), pre in zip(storages, before))
        self._recording.calls.append(Call(self.name, encoded, ret, buffers))
        return ret

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._fn, name)


class RecordingLibrary:
    """A stand-in for a kernel library (``native.load_kernels``): ``wb_*`` functions record,
    every other attribute (``isa``, ``isa_info``, ``source_isa``, ``notes``) is the real one."""

    def __init__(self, lib, recording: Recording | None = None):
        self._lib = lib
        self.recording = recording if recording is not None else Recording()
        self._index = TensorIndex()
        self._functions: dict[str, RecordingFunction] = {}

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_lib", "_functions", "_index", "recording"):
            raise AttributeError(name)
        attr = getattr(self._lib, name)
        if name.startswith("wb_") and callable(attr):
            if name not in self._functions:
                self._functions[name] = RecordingFunction(name, attr, self.recording,
                                                          self._index)
            return self._functions[name]
        return attr

    def __deepcopy__(self, memo):
        return self  # compiled models may be deep-copied; the library is shared


@contextlib.contextmanager
def recording(isa: str = "scalar"):
    """Make ``native.load_kernels`` return a :class:`RecordingLibrary` around the host
    library for ``isa`` while the block runs; yields its :class:`Recording`."""
    real = native.load_kernels
    proxy = RecordingLibrary(real(isa))

    def load(requested=None):
        if requested not in (None, isa):
            raise AssertionError(f"recording the {isa} kernels, but {requested} was asked for")
        return proxy

    native.load_kernels = load
    try:
        yield proxy.recording
    finally:
        native.load_kernels = real


# --------------------------------------------------------------------------- the call file

_ARG = struct.Struct("<IIq")      # kind, buffer, value (int, float32 bits, or offset)
_BUF = struct.Struct("<QIIII")    # size, align, flags (1: write back), blob, reserved
_KIND = {"null": ARG_NULL, "int": ARG_INT, "float": ARG_FLOAT, "ptr": ARG_PTR}


def output_buffers(call: Call, outputs: dict) -> set[int]:
    """The buffer indices of ``call`` that its output pointer arguments (``outputs[name]``:
    argument index -> dtype) point into."""
    return {call.args[i].buf for i in outputs.get(call.name, {})
            if call.args[i].kind == "ptr"}


def write_calls(path: Path, rec: Recording, outputs: dict, calls=None) -> None:
    """Write ``calls`` (default: all of ``rec``) and the blobs they use to ``path``; the
    buffers of the output arguments (``outputs``) are marked to be written back."""
    calls = rec.calls if calls is None else calls
    used = sorted({i for c in calls for b in c.buffers for i in (b.before,)})
    remap = {old: new for new, old in enumerate(used)}
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<IIII", VERSION, len(used), len(calls), 0))
        for i in used:
            data = rec.blobs[i]
            f.write(struct.pack("<Q", len(data)) + data + b"\0" * (-len(data) % 8))
        for call in calls:
            name = call.name.encode()
            outs = output_buffers(call, outputs)
            f.write(struct.pack("<I", len(name)) + name
                    + struct.pack("<II", len(call.args), len(call.buffers)))
            for a in call.args:
                value = a.value
                if a.kind == "float":
                    value = struct.unpack("<I", struct.pack("<f", a.value))[0]
                f.write(_ARG.pack(_KIND[a.kind], a.buf, int(value)))
            for j, b in enumerate(call.buffers):
                f.write(_BUF.pack(b.size, b.align, int(j in outs), remap[b.before], 0))


@dataclass
class Result:
    """What the driver reported for one call: ``status`` 0 if it ran, the return value, and
    the bytes of the written-back buffers (buffer index -> bytes)."""

    status: int
    ret: int
    buffers: dict[int, bytes]


def read_results(path: Path) -> dict[int, Result]:
    """The driver's results file: call index -> :class:`Result` (calls that did not finish
    are missing)."""
    data = Path(path).read_bytes() if Path(path).exists() else b""
    out, pos = {}, 0
    while pos + len(RESULTS_MAGIC) <= len(data):
        if data[pos:pos + len(RESULTS_MAGIC)] != RESULTS_MAGIC:
            raise ValueError(f"corrupt results file {path} at byte {pos}")
        pos += len(RESULTS_MAGIC)
        try:
            index, status, ret, nout = struct.unpack_from("<IIqI", data, pos)
            pos += 20
            buffers = {}
            for _ in range(nout):
                b, size = struct.unpack_from("<IQ", data, pos)
                pos += 12
                if pos + size > len(data):
                    raise struct.error("truncated")
                buffers[b] = data[pos:pos + size]
                pos += size
        except struct.error:
            break  # the driver died while writing this record
        out[index] = Result(status, ret, buffers)
    return out


# --------------------------------------------------------------------------- the C driver

_CTYPE = {ctypes.c_void_p: "void *", ctypes.c_int: "int", ctypes.c_int64: "int64_t",
          ctypes.c_float: "float", ctypes.c_char_p: "const char *", None: "void"}
_VALUE = {ctypes.c_void_p: "a[{i}].p", ctypes.c_int: "(int)a[{i}].i",
          ctypes.c_int64: "a[{i}].i", ctypes.c_float: "a[{i}].f"}

_DRIVER = r"""/* Generated by tests/kernel_replay.py from workbench.backend.native.SIGNATURES:
 * replays recorded kernel calls (see that module). Usage: driver CALLS RESULTS [START] | --probe */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

%(prototypes)s

typedef struct { void *p; int64_t i; float f; } value_t;

/* Calls the function called name; *known = 0 if there is none with nargs arguments. */
static int64_t dispatch(const char *name, uint32_t nargs, const value_t *a, int *known) {
    *known = 1;
%(cases)s
    *known = 0;
    return 0;
}

static const uint8_t *cur, *end;

static void take(void *dst, size_t n) {
    if ((size_t)(end - cur) < n) { fprintf(stderr, "replay: truncated call file\n"); exit(3); }
    memcpy(dst, cur, n);
    cur += n;
}
static uint32_t u32(void) { uint32_t v; take(&v, 4); return v; }
static uint64_t u64(void) { uint64_t v; take(&v, 8); return v; }

int main(int argc, char **argv) {
    printf("features=%%s\nisa=%%s\n", wb_cpu_features(), wb_isa_name());
    fflush(stdout);
    if (argc == 2 && !strcmp(argv[1], "--probe")) return 0;
    if (argc < 3) { fprintf(stderr, "usage: %%s CALLS RESULTS [START]\n", argv[0]); return 2; }
    long start = argc > 3 ? atol(argv[3]) : 0;
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 2; }
    fseek(in, 0, SEEK_END);
    long size = ftell(in);
    fseek(in, 0, SEEK_SET);
    uint8_t *file = malloc((size_t)size + 1);
    if (!file || fread(file, 1, (size_t)size, in) != (size_t)size) { perror("read"); return 2; }
    fclose(in);
    cur = file;
    end = file + size;
    char magic[8];
    take(magic, 8);
    if (memcmp(magic, "WBREPLAY", 8) || u32() != %(version)d) {
        fprintf(stderr, "replay: not a call file of version %(version)d\n");
        return 2;
    }
    uint32_t nblobs = u32(), ncalls = u32();
    (void)u32();
    const uint8_t **blob = malloc(sizeof *blob * (nblobs + 1));
    uint64_t *blob_size = malloc(sizeof *blob_size * (nblobs + 1));
    for (uint32_t i = 0; i < nblobs; i++) {
        blob_size[i] = u64();
        blob[i] = cur;
        uint64_t padded = (blob_size[i] + 7) / 8 * 8;
        if ((uint64_t)(end - cur) < padded) {
            fprintf(stderr, "replay: truncated blob\n");
            return 3;
        }
        cur += padded;
    }
    FILE *out = fopen(argv[2], start ? "ab" : "wb");
    if (!out) { perror(argv[2]); return 2; }
    for (uint32_t c = 0; c < ncalls; c++) {
        char name[128];
        uint32_t len = u32();
        if (len >= sizeof name) { fprintf(stderr, "replay: bad name\n"); return 3; }
        take(name, len);
        name[len] = 0;
        uint32_t nargs = u32(), nbufs = u32();
        uint32_t kind[32], abuf[32];
        int64_t aval[32];
        if (nargs > 32) { fprintf(stderr, "replay: %%s has too many arguments\n", name); return 3; }
        for (uint32_t i = 0; i < nargs; i++) {
            kind[i] = u32();
            abuf[i] = u32();
            aval[i] = (int64_t)u64();
        }
        uint64_t *bsize = malloc(sizeof *bsize * (nbufs + 1));
        uint32_t *balign = malloc(sizeof *balign * (nbufs + 1));
        uint32_t *bflags = malloc(sizeof *bflags * (nbufs + 1));
        uint32_t *bblob = malloc(sizeof *bblob * (nbufs + 1));
        for (uint32_t b = 0; b < nbufs; b++) {
            bsize[b] = u64();
            balign[b] = u32();
            bflags[b] = u32();
            bblob[b] = u32();
            (void)u32();
        }
        if ((long)c < start) { free(bsize); free(balign); free(bflags); free(bblob); continue; }
        /* fresh buffers, each at its recorded address modulo 64, holding the "before" bytes */
        void **base = malloc(sizeof *base * (nbufs + 1));
        uint8_t **data = malloc(sizeof *data * (nbufs + 1));
        for (uint32_t b = 0; b < nbufs; b++) {
            size_t total = ((size_t)balign[b] + bsize[b] + 64 + 63) / 64 * 64;
            base[b] = aligned_alloc(64, total);
            if (!base[b]) { fprintf(stderr, "replay: out of memory\n"); return 4; }
            memset(base[b], 0, total);
            data[b] = (uint8_t *)base[b] + balign[b];
            if (bblob[b] >= nblobs || blob_size[bblob[b]] != bsize[b]) {
                fprintf(stderr, "replay: call %%u: bad blob\n", c);
                return 3;
            }
            memcpy(data[b], blob[bblob[b]], bsize[b]);
        }
        value_t a[32];
        memset(a, 0, sizeof a);
        for (uint32_t i = 0; i < nargs; i++) {
            if (kind[i] == %(ptr)d) a[i].p = data[abuf[i]] + aval[i];
            else if (kind[i] == %(int)d) a[i].i = aval[i];
            else if (kind[i] == %(float)d) {
                uint32_t bits = (uint32_t)aval[i];
                memcpy(&a[i].f, &bits, 4);
            }
        }
        int known;
        int64_t ret = dispatch(name, nargs, a, &known);
        uint32_t nout = 0, status = known ? 0 : 1;
        for (uint32_t b = 0; b < nbufs; b++) nout += bflags[b] & 1;
        fwrite("WBRESULT", 1, 8, out);
        fwrite(&c, 4, 1, out);
        fwrite(&status, 4, 1, out);
        fwrite(&ret, 8, 1, out);
        fwrite(&nout, 4, 1, out);
        for (uint32_t b = 0; b < nbufs; b++) {
            if (!(bflags[b] & 1)) continue;
            fwrite(&b, 4, 1, out);
            fwrite(&bsize[b], 8, 1, out);
            fwrite(data[b], 1, bsize[b], out);
        }
        fflush(out);
        for (uint32_t b = 0; b < nbufs; b++) free(base[b]);
        free(base); free(data); free(bsize); free(balign); free(bflags); free(bblob);
    }
    fclose(out);
    return 0;
}
"""


def driver_source(signatures: dict | None = None) -> str:
    """C source of the replay driver for ``signatures`` (default ``native.SIGNATURES``):
    prototypes, a dispatch by name, and ``main`` reading the call file."""
    signatures = native.SIGNATURES if signatures is None else signatures
    prototypes, cases = [], []
    for name, (res, args) in signatures.items():
        params = ", ".join(_CTYPE[a] for a in args) or "void"
        prototypes.append(f"{_CTYPE[res]} {name}({params});")
        if res is ctypes.c_char_p:
            continue  # library probes: printed by main, never replayed
        if any(a not in _VALUE for a in args) or res not in (None, ctypes.c_int, ctypes.c_int64):
            raise TypeError(f"{name}: no replay for the signature {res}, {args}")
        call = f"{name}({', '.join(_VALUE[a].format(i=i) for i, a in enumerate(args))})"
        body = f"{call}; return 0;" if res is None else f"return (int64_t){call};"
        cases.append(f'    if (!strcmp(name, "{name}") && nargs == {len(args)}) {{ {body} }}')
    return _DRIVER % {"prototypes": "\n".join(prototypes), "cases": "\n".join(cases),
                      "version": VERSION, "ptr": ARG_PTR, "int": ARG_INT, "float": ARG_FLOAT}


# --------------------------------------------------------------------------- build and run

CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"


def missing_tools() -> list[str]:
    """The cross tools (:data:`CROSS_CC`, :data:`QEMU`) not on the PATH."""
    return [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]


def build_driver(isa_name: str, workdir: Path, arch: str = "aarch64",
                 cc: str = CROSS_CC) -> tuple[Path, native.Build]:
    """Write the generated driver into ``workdir`` and build it with every kernel source for
    ``isa_name`` of ``arch`` into one executable; returns its path and the ``native.Build``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "replay_driver.c"
    source.write_text(driver_source())
    exe = workdir / f"replay_{arch}_{isa_name}"
    made = native.build(isas.get_isa(isa_name, arch), shutil.which(cc) or cc, exe,
                        extra_sources=[source], executable=True)
    return exe, made


def _qemu(exe: Path, *args) -> list[str]:
    return [QEMU, "-L", QEMU_PREFIX, str(exe), *map(str, args)]


def probe(exe: Path) -> dict[str, str]:
    """The driver's ``wb_cpu_features()`` / ``wb_isa_name()`` under qemu:
    ``{"features": ..., "isa": ...}``."""
    proc = subprocess.run(_qemu(exe, "--probe"), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "QEMU_LD_PREFIX": QEMU_PREFIX})
    if proc.returncode:
        raise RuntimeError(f"{exe.name} --probe failed ({proc.returncode}): {proc.stderr}")
    return _probe_lines(proc.stdout)


def _probe_lines(text: str) -> dict[str, str]:
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("features", "isa") and key not in info:
            info[key] = value
    return info


@dataclass
class Replay:
    """A driver run: per call its :class:`Result`, the calls that crashed it (index ->
    stderr tail), and the probe output."""

    results: dict[int, Result]
    crashed: dict[int, str]
    probe: dict[str, str]


def run_driver(exe: Path, calls_path: Path, results_path: Path, ncalls: int,
               timeout: float = 600, max_crashes: int = 20) -> Replay:
    """Replay the call file under qemu; a call that kills the driver is noted and the run
    resumes after it (at most ``max_crashes`` times)."""
    env = {**os.environ, "QEMU_LD_PREFIX": QEMU_PREFIX, "OMP_WAIT_POLICY": "passive"}
    crashed, info, start = {}, {}, 0
    Path(results_path).unlink(missing_ok=True)
    while True:
        proc = subprocess.run(_qemu(exe, calls_path, results_path, start), capture_output=True,
                              text=True, timeout=timeout, env=env)
        info = info or _probe_lines(proc.stdout)
        results = read_results(results_path)
        if proc.returncode == 0:
            return Replay(results, crashed, info)
        pending = [i for i in range(start, ncalls) if i not in results]
        if not pending or len(crashed) >= max_crashes:
            crashed[pending[0] if pending else -1] = \
                f"exit {proc.returncode}: {proc.stderr[-1000:].strip()}"
            return Replay(results, crashed, info)
        crashed[pending[0]] = f"exit {proc.returncode}: {proc.stderr[-1000:].strip()}"
        start = pending[0] + 1


# --------------------------------------------------------------------------- comparing

@dataclass
class Mismatch:
    """A replayed call whose results differ from the host's."""

    index: int
    function: str
    shape: tuple
    detail: str

    def __str__(self) -> str:
        return f"call {self.index} {self.function}{self.shape}: {self.detail}"


def _elements(data: bytes, offset: int, dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    piece = data[offset:]
    return np.frombuffer(piece[:len(piece) // dt.itemsize * dt.itemsize], dtype=dt)


def compare_buffer(before: bytes, host: bytes, other: bytes, offset: int, dtype: str,
                   rtol: float) -> str | None:
    """None if the replayed output ``other`` matches ``host`` where either run wrote (the
    elements that differ from ``before``), else why not. Floats: finite and within
    ``rtol * (1 + max|host|)``; integers: equal."""
    if len(host) != len(other):
        return f"{len(other)} bytes written back, the host buffer has {len(host)}"
    dt = np.dtype(dtype)
    raw = np.dtype(f"u{dt.itemsize}")
    b, h, o = (_elements(x, offset, raw) for x in (before, host, other))
    written = (h != b) | (o != b)
    if not written.any():
        return None
    hv, ov = _elements(host, offset, dt)[written], _elements(other, offset, dt)[written]
    if dt.kind == "f":
        same_bits = h[written] == o[written]
        if not (np.isfinite(hv) | same_bits).all() or not (np.isfinite(ov) | same_bits).all():
            return "non-finite values where the host has others"
        finite = np.isfinite(hv) & np.isfinite(ov)
        hv64, ov64 = hv[finite].astype(np.float64), ov[finite].astype(np.float64)
        if not len(hv64):
            return None
        err = float(np.abs(hv64 - ov64).max())
        limit = rtol * (1 + float(np.abs(hv64).max()))
        if err > limit:
            worst = int(np.abs(hv64 - ov64).argmax())
            return (f"max|delta| {err:.3g} > {limit:.3g} over {len(hv64)} written values "
                    f"(worst: host {hv64[worst]!r}, replay {ov64[worst]!r})")
        return None
    bad = int((hv != ov).sum())
    if bad:
        first = int(np.flatnonzero(hv != ov)[0])
        return (f"{bad} of {len(hv)} written {dtype} values differ (first: host {hv[first]}, "
                f"replay {ov[first]})")
    return None


def compare(rec: Recording, calls: list[Call], replay: Replay, outputs: dict,
            queries: tuple, rtol: float = 1e-4) -> list[Mismatch]:
    """Every difference between the host run of ``calls`` and ``replay``: crashed or unknown
    calls, query return values that differ, output buffers out of tolerance."""
    found = []
    for i, call in enumerate(calls):
        r = replay.results.get(i)
        if r is None:
            why = replay.crashed.get(i, "no result (the driver stopped before it)")
            found.append(Mismatch(i, call.name, call.shape(), f"did not run: {why}"))
            continue
        if r.status:
            found.append(Mismatch(i, call.name, call.shape(), "unknown to the driver"))
            continue
        if call.name in queries and r.ret != call.ret:
            found.append(Mismatch(i, call.name, call.shape(),
                                  f"returned {r.ret}, the host {call.ret}"))
        for arg_index, dtype in outputs.get(call.name, {}).items():
            arg = call.args[arg_index]
            if arg.kind != "ptr":
                continue
            buf = call.buffers[arg.buf]
            if arg.buf not in r.buffers:
                found.append(Mismatch(i, call.name, call.shape(),
                                      f"output argument {arg_index} not written back"))
                continue
            why = compare_buffer(rec.blobs[buf.before], rec.blobs[buf.after],
                                 r.buffers[arg.buf], int(arg.value), dtype, rtol)
            if why:
                found.append(Mismatch(i, call.name, call.shape(),
                                      f"output argument {arg_index}: {why}"))
    return found


def with_input(rec: Recording, call: Call, arg_index: int, change) -> Call:
    """A copy of ``call`` whose buffer behind pointer argument ``arg_index`` starts from
    ``change(bytes from the pointer on)`` instead (to prove that :func:`compare` notices)."""
    arg = call.args[arg_index]
    buf = call.buffers[arg.buf]
    data = rec.blobs[buf.before]
    off = int(arg.value)
    new = data[:off] + change(data[off:])
    if len(new) != len(data):
        raise ValueError("the change must keep the buffer's size")
    buffers = list(call.buffers)
    buffers[arg.buf] = replace(buf, before=rec.blob(new))
    return replace(call, buffers=tuple(buffers))
