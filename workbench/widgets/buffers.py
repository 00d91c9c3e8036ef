"""Arrays as the little-endian bytes that widget traits carry to the browser (and back)."""

from __future__ import annotations

import numpy as np

FLOAT32 = "<f4"


def to_bytes(array, dtype: str = FLOAT32) -> bytes:
    """``array`` (anything NumPy or torch can give) flattened to raw bytes of ``dtype``.

    ``None`` gives ``b""`` (the front end treats an empty buffer as "no data"). Bytes pass
    through unchanged.

    Examples
    --------
    >>> to_bytes([1.0, 2.5])
    b'\\x00\\x00\\x80?\\x00\\x00 @'
    >>> to_bytes(None)
    b''
    """
    if array is None:
        return b""
    if isinstance(array, (bytes, bytearray, memoryview)):
        return bytes(array)
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(array), dtype=dtype).tobytes()


def from_bytes(buffer: bytes, dtype: str = FLOAT32, shape=None) -> np.ndarray:
    """The array held in ``buffer`` (a copy, so it is writable), optionally reshaped.

    Examples
    --------
    >>> from_bytes(to_bytes([[1, 2], [3, 4]]), shape=(2, 2)).tolist()
    [[1.0, 2.0], [3.0, 4.0]]
    """
    out = np.frombuffer(bytes(buffer), dtype=dtype).copy()
    return out if shape is None else out.reshape(shape)
