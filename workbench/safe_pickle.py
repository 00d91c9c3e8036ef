"""Load pickles that may only rebuild plain data and NumPy arrays, never run code.

A pickle can name any importable callable and call it while loading, so ``pickle.load`` on a
downloaded file runs whatever the file says. :func:`safe_load` allows only the few globals that
plain containers and NumPy arrays need and refuses everything else before it is imported.
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
from pathlib import Path

import numpy as np

from workbench.errors import DataError, WorkbenchError


def _latin1_encode(text, encoding="latin1", *rest):
    # Protocol-2 pickles written by Python 3 store ``bytes`` as _codecs.encode(str, "latin1");
    # any other codec could reach arbitrary registered codec code, so only latin-1 is allowed.
    if codecs.lookup(encoding).name != "iso8859-1" or rest or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy import _core as core  # NumPy >= 2 (``numpy.core`` is the deprecated alias)
    except ImportError:  # NumPy 1.x
        from numpy import core

    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        found[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        found[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        found[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return found


#: ``(module, name)`` → object: everything :func:`safe_load` lets a pickle refer to.
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    **_numpy_globals(),
    ("_codecs", "encode"): _latin1_encode,
    **{("builtins", t.__name__): t for t in (bytearray, complex, frozenset, set, slice)},
    **{("__builtin__", t.__name__): t for t in (bytearray, complex, frozenset, set, slice)},
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` only returns :data:`ALLOWED_GLOBALS`.

    Parameters
    ----------
    file : binary file object
    what : str
        How to name the file in error messages (usually its path).
    error : type
        The :class:`~workbench.errors.WorkbenchError` subclass raised on refusal.

    Examples
    --------
    >>> import io, pickle
    >>> blob = pickle.dumps({b"labels": [1, 2]}, protocol=2)
    >>> SafeUnpickler(io.BytesIO(blob), what="blob", encoding="bytes").load()
    {b'labels': [1, 2]}
    """

    def __init__(self, file, *, what: str = "the pickle", error: type = DataError, **kwargs):
        super().__init__(file, **kwargs)
        self.what = what
        self.error = error

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise self.error(
                f"{self.what}: workbench refuses to load it, because unpickling it would execute "
                f"code (it refers to {module}.{name}, which is not plain data or a NumPy array). "
                "Only load pickles from sources you trust; re-save the data as .npz or "
                "safetensors."
            ) from None

    def persistent_load(self, pid):
        raise self.error(f"{self.what}: uses pickle persistent ids, which workbench cannot load")


def safe_load(source, *, what: str | None = None, error: type = DataError,
              encoding: str = "bytes"):
    """Unpickle a file path, bytes or binary file with :class:`SafeUnpickler`.

    Parameters
    ----------
    source : str, Path, bytes or binary file
    what : str, optional
        How to name the source in errors (default: the path, or ``"the pickle"``).
    error : type
        Error class for refusals and unreadable files (default :class:`DataError`).
    encoding : str
        How Python-2 ``str`` objects are decoded; ``"bytes"`` keeps them as bytes, as the
        CIFAR-10 batches expect (keys ``b"data"``, ``b"labels"``).

    Examples
    --------
    >>> import pickle, numpy as np
    >>> safe_load(pickle.dumps(np.arange(3, dtype=np.uint8), protocol=2))
    array([0, 1, 2], dtype=uint8)
    >>> class Evil:
    ...     def __reduce__(self):
    ...         return (print, ("pwned",))
    >>> safe_load(pickle.dumps(Evil()))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    workbench.errors.DataError: the pickle: workbench refuses to load it, because unpickling ...
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        what = what or "the pickle"
        file, close = io.BytesIO(source), True
    elif isinstance(source, (str, Path)):
        what = what or str(source)
        try:
            file, close = open(source, "rb"), True
        except OSError as err:
            raise error(f"{what}: cannot open it ({err.strerror or err})") from None
    else:
        what = what or getattr(source, "name", "the pickle")
        file, close = source, False
    try:
        return SafeUnpickler(file, what=what, error=error, encoding=encoding).load()
    except WorkbenchError:
        raise
    except EOFError:
        raise error(f"{what}: the pickle ends early (the file is truncated)") from None
    except Exception as err:  # noqa: BLE001  any other failure means a damaged or foreign file
        raise error(
            f"{what}: not a readable pickle ({type(err).__name__}: {err}); the file may be "
            "damaged or of another format"
        ) from None
    finally:
        if close:
            file.close()


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}


def pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals a pickle would import, read from its opcodes (nothing runs).

    Reading stops quietly at the first malformed opcode, so a truncated pickle still reports
    the globals before the damage.

    Examples
    --------
    >>> import collections, pickle
    >>> pickle_globals(pickle.dumps(collections.OrderedDict(a=1)))
    ['collections.OrderedDict']
    """
    found: list[str] = []
    pushed: list = []  # recently pushed values, strings only (enough for STACK_GLOBAL)
    memo: dict = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in _STRING_OPS:
                pushed.append(arg.decode("latin1") if isinstance(arg, bytes) else arg)
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif name == "GLOBAL":
                found.append(arg.replace(" ", "."))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                module, attr = ([None, None] + pushed)[-2:]
                found.append(f"{module}.{attr}")
                pushed.append(None)
            else:
                pushed.append(None)
            del pushed[:-2]
    except Exception:  # noqa: BLE001  malformed or truncated data: report what was read
        pass
    return list(dict.fromkeys(found))
