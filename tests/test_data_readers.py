"""Data readers: digits, moons, spirals, IDX/MNIST, CIFAR-10 batches, download, shape checks."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import pickle
import shutil
import struct
import tarfile

import numpy as np
import pytest
import torch

from conftest import zoo_model
from workbench.data import DATASETS, download, load_dataset
from workbench.data.cifar import cifar10
from workbench.data.download import Remote, extract_tar
from workbench.data.idx import mnist, read_idx
from workbench.errors import DataError, ParameterError
from workbench.safe_pickle import safe_load

# workbench.data.download is the function; the module holds SOURCES and _fetch
download_module = importlib.import_module("workbench.data.download")

# The first ten labels of the MNIST t10k split, and the md5s of the decompressed files
# (from /work/shared/datasets/mnist/README.md).
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
LABELS_MD5 = "27ae3e4e09519cfbb04c329615203637"
IMAGES_MD5 = "2646ac647ad5339dbf082846283269ea"


def write_idx(path, array: np.ndarray, *, magic: bytes | None = None, extra: bytes = b"",
              cut: int = 0) -> None:
    """Write ``array`` as an IDX file (gzipped if the name ends in .gz), optionally damaged."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    head = magic or bytes([0, 0, codes[array.dtype], array.ndim])
    blob = head + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.astype(array.dtype.newbyteorder(">")).tobytes() + extra
    blob = blob[:len(blob) - cut]
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)


def fake_mnist(root, n_train=60, n_test=20, seed=0, gz=True):
    """Tiny MNIST-format files: class c images are filled with the value c."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        if not n:
            continue
        y = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(y)
        x = np.repeat(y[:, None, None], 28, 1).repeat(28, 2).astype(np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte{ext}", x)
        write_idx(root / f"{split}-labels-idx1-ubyte{ext}", y)
    return root


# --- digits and synthetic sets -----------------------------------------------------------

def test_digits_shapes_and_range(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.x_train) + len(digits.x_val) + len(digits.x_test) == 1797
    assert float(digits.x_train.min()) == 0.0 and float(digits.x_train.max()) == 1.0


def test_moons_lie_on_their_half_circles_without_noise():
    ds = load_dataset("moons", n_samples=400, noise=0.0, seed=3)
    assert ds.input_shape == (2,) and ds.classes == ("0", "1")
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    assert len(y) == 400 and int((y == 0).sum()) == 200
    # make_moons: class 0 is the unit upper half circle, class 1 is centred at (1, 0.5)
    assert torch.allclose(x[y == 0].norm(dim=1), torch.ones(200), atol=1e-5)
    centred = x[y == 1] - torch.tensor([1.0, 0.5])
    assert torch.allclose(centred.norm(dim=1), torch.ones(200), atol=1e-5)


def test_moons_are_seeded():
    a, b = load_dataset("moons", seed=1), load_dataset("moons", seed=1)
    c = load_dataset("moons", seed=2)
    assert torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_train, c.x_train)


def test_spirals_arms_follow_their_angle():
    ds = load_dataset("spirals", n_samples=400, n_classes=4, noise=0.0, turns=0.75, seed=0)
    assert ds.input_shape == (2,) and ds.num_classes == 4
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test]).double()
    y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    assert torch.bincount(y).tolist() == [100] * 4
    r = x.norm(dim=1)
    expected = 2 * np.pi * (0.75 * r + y / 4)
    diff = torch.atan2(x[:, 1], x[:, 0]) - expected
    assert torch.allclose(torch.cos(diff), torch.ones_like(diff), atol=1e-6)


def test_synthetic_parameters_are_checked():
    with pytest.raises(ParameterError, match="n_classes"):
        load_dataset("spirals", n_classes=1)
    with pytest.raises(ParameterError, match="noise"):
        load_dataset("moons", noise=-1)


def test_all_readers_are_registered():
    assert {"digits", "moons", "spirals", "mnist", "fashion_mnist", "cifar10"} <= set(DATASETS)


# --- IDX / MNIST ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_test_split(mnist_dir):
    return mnist(mnist_dir, seed=0)


def independent_read(path, offset):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    return raw, np.frombuffer(raw, np.uint8, offset=offset)


def test_read_idx_matches_an_independent_gzip_read(mnist_dir):
    raw, labels = independent_read(mnist_dir / "t10k-labels-idx1-ubyte.gz", 8)
    assert hashlib.md5(raw).hexdigest() == LABELS_MD5
    ours = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert ours.dtype == np.uint8 and ours.shape == (10_000,)
    assert ours[:10].tolist() == FIRST_TEST_LABELS
    assert np.array_equal(ours, labels)
    raw, pixels = independent_read(mnist_dir / "t10k-images-idx3-ubyte.gz", 16)
    assert hashlib.md5(raw).hexdigest() == IMAGES_MD5
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10_000, 28, 28)
    assert np.array_equal(images.reshape(-1), pixels)


def test_mnist_test_split_is_divided_and_documented(mnist_dir, mnist_test_split):
    ds = mnist_test_split
    assert ds.input_shape == (1, 28, 28) and ds.classes == tuple("0123456789")
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (6999, 1000, 2001)
    assert "only the test part" in ds.meta["split"] and "0.7/0.1/0.2" in ds.meta["split"]
    _, labels = independent_read(mnist_dir / "t10k-labels-idx1-ubyte.gz", 8)
    y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    assert torch.bincount(y).tolist() == np.bincount(labels).tolist()
    _, pixels = independent_read(mnist_dir / "t10k-images-idx3-ubyte.gz", 16)
    x = torch.cat([ds.x_train, ds.x_val, ds.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert int((x * 255).round().long().sum()) == int(pixels.sum(dtype=np.int64))


def test_mnist_split_is_deterministic_in_seed(mnist_dir, mnist_test_split):
    again = load_dataset("mnist", root=mnist_dir, seed=0)
    other = load_dataset("mnist", root=mnist_dir, seed=1)
    assert again.fingerprint() == mnist_test_split.fingerprint()
    assert torch.equal(again.y_test, mnist_test_split.y_test)
    assert not torch.equal(other.y_train, mnist_test_split.y_train)


def test_mnist_limit_takes_a_stratified_subset(mnist_dir):
    ds = mnist(mnist_dir, limit=500, seed=0)
    y = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    counts = torch.bincount(y, minlength=10)
    assert len(y) == 500 and int(counts.min()) >= 40 and int(counts.max()) <= 60


def test_fashion_mnist_reads_the_same_format_with_its_class_names(tmp_path):
    ds = load_dataset("fashion_mnist", root=fake_mnist(tmp_path / "f"))
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.name == "fashion_mnist"


def test_mnist_with_train_and_test_files_keeps_the_official_test_split(tmp_path):
    ds = mnist(fake_mnist(tmp_path / "m", n_train=100, n_test=30), val_fraction=0.1)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (90, 10, 30)
    assert "official" in ds.meta["split"]
    # class c images are filled with c / 255: the pixels must match the labels
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())


@pytest.mark.parametrize("layout", ["plain", "torchvision", "kaggle"])
def test_mnist_finds_files_in_common_layouts(tmp_path, layout):
    if layout == "plain":
        fake_mnist(tmp_path, gz=False)
    elif layout == "torchvision":
        fake_mnist(tmp_path / "MNIST" / "raw")
    else:
        fake_mnist(tmp_path, gz=False)
        for p in list(tmp_path.iterdir()):
            p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    ds = mnist(tmp_path)
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 80


@pytest.mark.parametrize("damage, message", [
    ({"magic": b"\x12\x34\x08\x03"}, "not an IDX file"),
    ({"magic": b"\x00\x00\x07\x03"}, "unknown IDX type byte 0x07"),
    ({"cut": 100}, "truncated"),
    ({"extra": b"junk"}, "4 unexpected bytes"),
])
def test_damaged_idx_files_name_file_and_problem(tmp_path, damage, message):
    fake_mnist(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(images, np.zeros((20, 28, 28), np.uint8), **damage)
    with pytest.raises(DataError, match=message) as err:
        mnist(tmp_path)
    assert str(images) in str(err.value)


def test_idx_dtypes_other_than_ubyte_are_read(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 4.0]], np.float32)
    write_idx(tmp_path / "floats-idx2", values)
    out = read_idx(tmp_path / "floats-idx2")
    assert out.dtype == np.float32 and np.array_equal(out, values)
    write_idx(tmp_path / "ints-idx1", np.array([70000, -3], np.int32))
    assert read_idx(tmp_path / "ints-idx1").tolist() == [70000, -3]


def test_truncated_gzip_is_a_data_error(tmp_path, mnist_dir):
    blob = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DataError, match="gzip stream ends early") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_image_and_label_count_mismatch_names_both_files(tmp_path):
    fake_mnist(tmp_path, n_train=0)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(19, dtype=np.uint8) % 10)
    with pytest.raises(DataError, match="20 images but") as err:
        mnist(tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)


def test_labels_out_of_range_and_swapped_files(tmp_path):
    fake_mnist(tmp_path, n_train=0)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9, found 12\.\.12"):
        mnist(tmp_path)
    shutil.copy(tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="expected integer labels"):
        mnist(tmp_path)


def test_missing_files_list_expected_names_and_download(tmp_path):
    with pytest.raises(DataError, match="no such directory") as err:
        load_dataset("mnist", root=tmp_path / "nowhere")
    text = str(err.value)
    assert "t10k-images-idx3-ubyte" in text and "train-labels-idx1-ubyte" in text
    assert "workbench.data.download('mnist'" in text
    with pytest.raises(DataError, match="no mnist IDX files"):
        mnist(tmp_path)
    with pytest.raises(DataError, match="needs root="):
        load_dataset("mnist")
    fake_mnist(tmp_path, n_train=0)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="companion t10k-labels-idx1-ubyte"):
        mnist(tmp_path)


# --- CIFAR-10 python batches ------------------------------------------------------------

class CreatesFile:
    """A pickle payload: unpickling it would create ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


CLASSES = [f"class{i}" for i in range(10)]


def fake_cifar(folder, n=20, seed=0, batches=5):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(c) for c in np.arange(n) % 10]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        made[name] = (data, labels)
    meta = {b"num_cases_per_batch": n, b"label_names": [c.encode() for c in CLASSES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return made


def test_cifar10_reads_fake_batches(tmp_path):
    made = fake_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.input_shape == (3, 32, 32) and ds.classes == tuple(CLASSES)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (90, 10, 20)
    data, labels = made["test_batch"]
    assert torch.equal(ds.x_test * 255, torch.from_numpy(data.reshape(-1, 3, 32, 32)).float())
    assert ds.y_test.tolist() == labels
    assert "official" in ds.meta["split"] and len(ds.meta["files"]) == 6


def test_cifar10_test_batch_alone_is_split(tmp_path):
    fake_cifar(tmp_path, n=100, batches=0)
    ds = cifar10(tmp_path)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (70, 10, 20)
    assert "only the test part" in ds.meta["split"]


@pytest.mark.parametrize("victim", ["test_batch", "batches.meta"])
def test_cifar10_refuses_a_malicious_pickle_without_running_it(tmp_path, victim):
    fake_cifar(tmp_path, batches=1)
    marker = tmp_path / "pwned.txt"
    (tmp_path / victim).write_bytes(pickle.dumps({b"data": CreatesFile(marker)}, protocol=2))
    with pytest.raises(DataError, match="refuses to load it.*would execute code") as err:
        cifar10(tmp_path)
    assert str(tmp_path / victim) in str(err.value) and "io.open" in str(err.value)
    assert not marker.exists()


def test_safe_pickle_allows_python2_style_batches():
    # The official batches were written by Python 2: str as BINSTRING, numpy.core globals.
    class Py2Pickler(pickle._Pickler):
        dispatch = dict(pickle._Pickler.dispatch)

        def save_str(self, obj):
            b = obj.encode("latin1") if isinstance(obj, str) else obj
            op = pickle.SHORT_BINSTRING + bytes([len(b)]) if len(b) < 256 else \
                pickle.BINSTRING + struct.pack("<i", len(b))
            self.write(op + b)
            self.memoize(obj)

        dispatch[str] = save_str
        dispatch[bytes] = save_str

    data = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump({"data": data, "labels": [3, 5]})
    blob = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in blob
    out = safe_load(blob)
    assert out[b"labels"] == [3, 5] and np.array_equal(out[b"data"], data)


def test_safe_pickle_only_encodes_latin1():
    blob = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_load(blob, what="crafted")


def test_cifar10_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="download\\('cifar10'"):
        cifar10(tmp_path / "missing")
    fake_cifar(tmp_path, batches=0)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    with pytest.raises(DataError, match="no 'data' entry") as err:
        cifar10(tmp_path)
    assert str(tmp_path / "test_batch") in str(err.value)
    blob = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]}, protocol=2)
    (tmp_path / "test_batch").write_bytes(blob[:-20])
    with pytest.raises(DataError, match="test_batch"):
        cifar10(tmp_path)


# --- download (file:// URLs only, never the network) --------------------------------------

def test_download_mnist_test_split_from_a_file_url(tmp_path, mnist_dir):
    root = download("mnist", tmp_path / "mnist", base_url=mnist_dir.as_uri() + "/",
                    splits=("test",), progress=False)
    names = sorted(p.name for p in root.iterdir())
    assert names == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name in names:
        assert (root / name).read_bytes() == (mnist_dir / name).read_bytes()
    assert len(mnist(root, limit=100).y_test) == 20


def test_download_skips_verified_files(tmp_path, mnist_dir, monkeypatch):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, tmp_path / name)

    def no_fetch(*args):
        raise AssertionError("a verified file was fetched again")

    monkeypatch.setattr(download_module, "_fetch", no_fetch)
    download("mnist", tmp_path, base_url="file:///nonexistent/", splits=("test",),
             progress=False)


def test_download_rejects_a_corrupted_file(tmp_path, mnist_dir):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", mirror)
    labels = bytearray(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[8] = (labels[8] + 1) % 10  # one wrong label
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    root = tmp_path / "root"
    with pytest.raises(DataError, match="md5 is .*expected ec29112dd5afa0611ce80d1b7f02629c") \
            as err:
        download("mnist", root, base_url=mirror.as_uri(), splits=("test",), progress=False)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)
    assert sorted(p.name for p in root.iterdir()) == ["t10k-images-idx3-ubyte.gz"]


def test_download_reports_a_missing_file_and_bad_names(tmp_path):
    with pytest.raises(DataError, match="file:///nonexistent/t10k-images-idx3-ubyte.gz"):
        download("mnist", tmp_path, base_url="file:///nonexistent", splits=("test",),
                 progress=False)
    assert list(tmp_path.iterdir()) == []  # no half-written file left behind
    with pytest.raises(ParameterError, match="known: mnist"):
        download("imagenet", tmp_path)
    with pytest.raises(ParameterError, match="splits"):
        download("mnist", tmp_path, splits=("val",))


def test_download_cifar10_verifies_and_extracts(tmp_path, monkeypatch):
    fake_cifar(tmp_path / "src" / "cifar-10-batches-py", batches=1)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(download_module.SOURCES["cifar10"], "files",
                        (Remote("cifar-10-python.tar.gz", "all", md5),))
    root = download("cifar10", tmp_path / "root", base_url=mirror.as_uri(), progress=False)
    ds = cifar10(root)
    assert ds.classes == tuple(CLASSES) and len(ds.y_test) == 20


@pytest.mark.parametrize("name, kind", [("../escape.txt", "file"), ("/tmp/abs.txt", "file"),
                                        ("link", "symlink")])
def test_extract_tar_refuses_paths_outside_and_links(tmp_path, name, kind):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="refuses to extract") as err:
        extract_tar(archive, dest)
    assert str(archive) in str(err.value)
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()


# --- data that does not fit the model ----------------------------------------------------

def test_session_refuses_data_of_the_wrong_shape(digits):
    import workbench

    with pytest.raises(DataError, match=r"does not accept inputs of shape \(1, 8, 8\)"):
        workbench.Session(zoo_model("mlp", (2,), 2), digits)
    with pytest.raises(DataError, match="outputs shape \\(3,\\) but dataset 'digits' has 10"):
        workbench.Session(zoo_model("lenet5", (1, 8, 8), 3), digits)
