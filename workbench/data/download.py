"""Fetch MNIST, Fashion-MNIST or CIFAR-10 into a directory, verified by md5, written atomically.

Nothing in workbench downloads on its own: the readers (:func:`workbench.data.idx.mnist`,
:func:`workbench.data.cifar.cifar10`) only read files, and their errors point here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workbench.errors import DataError, ParameterError


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its name, the split it holds, and its known checksums.

    ``md5`` is the md5 of the file as published; ``content_md5`` (when known) is the md5 of its
    gunzipped content, which stays the same when a mirror re-compresses the file.
    """

    name: str
    split: str
    md5: str | None
    content_md5: str | None = None


# Published md5s of the gzipped files (the values torchvision checks). The decompressed md5s
# of the MNIST t10k files are those listed in /work/shared/datasets/mnist/README.md.
SOURCES: dict[str, dict] = {
    "mnist": {
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "http://yann.lecun.com/exdb/mnist/"),
        "files": (
            Remote("train-images-idx3-ubyte.gz", "train", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            Remote("train-labels-idx1-ubyte.gz", "train", "d53e105ee54ea40749a09fcbcd1e9432"),
            Remote("t10k-images-idx3-ubyte.gz", "test", "9fb629c4189551a2d022fa330f9573f3",
                   "2646ac647ad5339dbf082846283269ea"),
            Remote("t10k-labels-idx1-ubyte.gz", "test", "ec29112dd5afa0611ce80d1b7f02629c",
                   "27ae3e4e09519cfbb04c329615203637"),
        ),
    },
    "fashion_mnist": {
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
                    "data/fashion/"),
        "files": (
            Remote("train-images-idx3-ubyte.gz", "train", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            Remote("train-labels-idx1-ubyte.gz", "train", "25c81989df183df01b3e8a0aad5dffbe"),
            Remote("t10k-images-idx3-ubyte.gz", "test", "bef4ecab320f06d8554ea6380940ec79"),
            Remote("t10k-labels-idx1-ubyte.gz", "test", "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    },
    "cifar10": {
        "mirrors": ("https://www.cs.toronto.edu/~kriz/",),
        "files": (Remote("cifar-10-python.tar.gz", "all", "c58f30108f718f92721af3b95e74349a"),),
        "extract": "cifar-10-batches-py",
    },
}


def _md5(path: Path, gunzip: bool = False) -> str:
    h = hashlib.md5(usedforsecurity=False)
    if gunzip:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(d.decompress(chunk))
        h.update(d.flush())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def verify(path: Path, remote: Remote) -> str | None:
    """``None`` if ``path`` matches a known md5 of ``remote``, else why it does not.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "x.gz"
    >>> _ = f.write_bytes(b"not it")
    >>> verify(f, Remote("x.gz", "test", "0" * 32))
    'md5 is 004b90d1c33f90c1b05780e691f79ac5, expected 00000000000000000000000000000000'
    """
    if remote.md5 is None and remote.content_md5 is None:
        return None  # no published checksum to compare with
    got = _md5(path)
    if got == remote.md5:
        return None
    if remote.content_md5 is not None:
        try:
            if _md5(path, gunzip=True) == remote.content_md5:
                return None
        except zlib.error:
            pass
    expected = remote.md5 or f"{remote.content_md5} (decompressed)"
    return f"md5 is {got}, expected {expected}"


def _fetch(url: str, dest: Path, progress: bool) -> None:
    """Stream ``url`` into ``dest`` through a temporary file and an atomic rename."""
    from tqdm.auto import tqdm

    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                      disable=not progress, leave=False) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download_one(remote: Remote, root: Path, bases: tuple[str, ...], progress: bool) -> Path:
    dest = root / remote.name
    if dest.is_file() and verify(dest, remote) is None:
        return dest
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + remote.name
        try:
            _fetch(url, dest, progress)
        except (urllib.error.URLError, OSError, ValueError) as err:
            failures.append(f"{url}: {getattr(err, 'reason', None) or err}")
            continue
        problem = verify(dest, remote)
        if problem is None:
            return dest
        dest.unlink(missing_ok=True)
        failures.append(f"{url}: downloaded, but the {problem} (corrupted or a different file)")
    raise DataError(
        f"could not get {remote.name} into {root}:\n  " + "\n  ".join(failures)
        + f"\nDownload it by hand into {root}, or pass base_url= pointing at a mirror."
    )


def _safe_members(tar: tarfile.TarFile, archive: Path):
    for member in tar.getmembers():
        parts = PurePosixPath(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(f"{archive}: refuses to extract {member.name!r}, a path outside the "
                            "target directory")
        if not (member.isfile() or member.isdir()):
            raise DataError(f"{archive}: refuses to extract {member.name!r}: only plain files "
                            "and directories are allowed (no links or devices)")
        yield member


def extract_tar(archive, dest) -> list[Path]:
    """Extract a (gzipped) tar archive into ``dest``, refusing absolute paths, ``..`` and links.

    All members are checked before anything is written; files are written atomically.

    Examples
    --------
    >>> import io, tarfile, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with tarfile.open(d / "a.tar.gz", "w:gz") as t:
    ...     info = tarfile.TarInfo("folder/hello.txt"); info.size = 2
    ...     t.addfile(info, io.BytesIO(b"hi"))
    >>> [p.relative_to(d).as_posix() for p in extract_tar(d / "a.tar.gz", d)]
    ['folder/hello.txt']
    """
    archive, dest = Path(archive), Path(dest)
    written = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = list(_safe_members(tar, archive))
            for member in members:
                target = dest / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
                try:
                    with os.fdopen(fd, "wb") as out, tar.extractfile(member) as src:
                        shutil.copyfileobj(src, out)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                written.append(target)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{archive}: damaged archive ({err}); delete it and download again") \
            from None
    return written


def download(name: str, root, base_url: str | None = None, progress: bool = True,
             splits=("train", "test")) -> Path:
    """Download a data set's files into ``root`` and return ``root`` (pass it to the reader).

    Files already present with the right checksum are skipped; a file whose md5 matches none
    of the published values raises :class:`DataError` and is not kept.

    Parameters
    ----------
    name : {"mnist", "fashion_mnist", "cifar10"}
    root : str or Path
        Target directory (created). Use one directory per data set: MNIST and Fashion-MNIST
        files have the same names.
    base_url : str, optional
        A mirror holding the files (``https://…/`` or ``file:///…/``); default: the public
        mirrors, tried in order.
    splits : tuple of str
        For MNIST-like sets, which of ``"train"`` and ``"test"`` to fetch.

    Examples
    --------
    >>> import tempfile
    >>> root = download("mnist", tempfile.mkdtemp(), splits=("test",), progress=False,
    ...                 base_url="file:///work/shared/datasets/mnist/")  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']
    """
    if name not in SOURCES:
        raise ParameterError(f"cannot download {name!r}; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    unknown = set(splits) - {"train", "test"}
    if unknown or not splits:
        raise ParameterError(f"splits must be a non-empty subset of ('train', 'test'), got "
                             f"{splits}")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    bases = (base_url,) if base_url else source["mirrors"]
    for remote in source["files"]:
        if remote.split in splits or remote.split == "all":
            path = _download_one(remote, root, bases, progress)
            folder = source.get("extract")
            if folder and not (root / folder).is_dir():
                extract_tar(path, root)
    return root
