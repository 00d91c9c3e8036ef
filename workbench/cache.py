"""Where workbench keeps what it computes once (the trained default model, compiled kernels).

The directory is ``$WORKBENCH_CACHE`` if set, else ``~/.cache/workbench``. Files are written
atomically (temporary file, then rename) so an interrupted write never leaves a half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

CACHE_VERSION = 1


def cache_dir(*parts: str) -> Path:
    """The cache directory (created on demand), or a sub-directory of it."""
    root = Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(**fields) -> str:
    """A stable short hash of JSON-serialisable ``fields`` (plus the cache format version)."""
    blob = json.dumps({"v": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
