"""Contract tests over every registered corruption, plus reference checks of the building blocks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from workbench.corruptions import CORRUPTIONS, corrupt, corruption_names, filters, jpeg, rng
from workbench.errors import DataError, ParameterError, UnknownNameError

NAMES = CORRUPTIONS.names()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Corruptions run many small ops; a second intra-op thread only adds sync overhead (and
    much more on a busy shared machine). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
#: Allowed relative drop of the mean pixel change from one severity to the next.
MONOTONE_TOLERANCE = 0.03


def _kinds(name):
    ch = CORRUPTIONS[name].channels
    return ["gray", "rgb"] if ch == "both" else [ch]


@pytest.fixture(scope="module")
def gray_digits():
    from workbench.data import load_dataset

    return load_dataset("digits").x_test[:48]


@pytest.fixture(scope="module")
def gray_mnist():
    from workbench.data.idx import read_idx

    from tests.conftest import MNIST_DIR

    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:24]
    return torch.from_numpy(images.astype(np.float32) / 255)[:, None]


@pytest.fixture(scope="module")
def rgb_images():
    """Smooth random colour fields with a bright rectangle at a random place (natural images vary
    in where their edges fall, which matters for pixelate and JPEG)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(24, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False)
    corners = torch.randint(2, 18, (24, 2), generator=g).tolist()
    sizes = torch.randint(5, 13, (24, 2), generator=g).tolist()
    for img, (r, c), (h, w) in zip(x, corners, sizes):
        img[:, r:r + h, c:c + w] = 0.9
    return x.clamp(0, 1)


@pytest.fixture(scope="module")
def batches(gray_digits, gray_mnist, rgb_images):
    return {"gray": gray_digits, "gray28": gray_mnist, "rgb": rgb_images}


def _change(name, x, severity, seed=0):
    return float((CORRUPTIONS[name](x, severity, seed=seed) - x).abs().mean())


# --- the contract, for every registered corruption ---------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    info = CORRUPTIONS[name]
    assert info.family in ("noise", "blur", "weather", "digital", "geometric")
    assert info.channels in ("gray", "rgb", "both")
    assert set(info.params) == set(_kinds(name))
    assert all(len(v) == 5 for v in info.params.values())
    assert info.reference and info.fn.__doc__ and "Examples" in info.fn.__doc__
    for kind in info.not_monotone:
        assert kind in _kinds(name) and "not monotone" in info.fn.__doc__.lower()


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_range_and_determinism(name, batches):
    for kind in _kinds(name):
        x = batches[kind][:6]
        for dtype in (torch.float32, torch.float64):
            y = CORRUPTIONS[name](x.to(dtype), 3, seed=7)
            assert y.shape == x.shape and y.dtype == dtype
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
            assert torch.isfinite(y).all()
        a = CORRUPTIONS[name](x, 4, seed=3)
        assert torch.equal(a, CORRUPTIONS[name](x, 4, seed=3))  # same seed, same output
        assert torch.equal(x, batches[kind][:6])  # input untouched


@pytest.mark.parametrize("name", NAMES)
def test_batch_position_not_batch_size(name, batches):
    """Sample i's corruption depends on its position, not on the batch size."""
    for kind in _kinds(name):
        x = batches[kind][:5]
        full = CORRUPTIONS[name](x, 5, seed=1)
        assert torch.allclose(CORRUPTIONS[name](x[:1], 5, seed=1), full[:1], atol=1e-6)
        assert torch.allclose(CORRUPTIONS[name](x[:3], 5, seed=1), full[:3], atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_severity_one_changes_and_severity_is_monotone(name, batches):
    info = CORRUPTIONS[name]
    for kind in _kinds(name):
        for key in ([kind, "gray28"] if kind == "gray" else [kind]):
            x = batches[key]
            change = [_change(name, x, s) for s in range(1, 6)]
            assert change[0] > 1e-4, f"{name} severity 1 leaves {key} images unchanged"
            if kind in info.not_monotone:
                assert change[-1] > 1e-3
                continue
            for s, (a, b) in enumerate(zip(change, change[1:]), start=1):
                assert b >= a * (1 - MONOTONE_TOLERANCE) - 1e-6, (
                    f"{name} on {key}: change falls from severity {s} ({a:.4f}) "
                    f"to {s + 1} ({b:.4f})")


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_clear_errors(name, batches):
    info = CORRUPTIONS[name]
    kind = _kinds(name)[0]
    x = batches[kind][:2]
    for severity in (0, 6, 2.5, True, "3", None):
        with pytest.raises(ParameterError, match="severity"):
            info(x, severity)
    with pytest.raises(DataError, match=r"\(n, C, H, W\)"):
        info(x[0], 1)
    with pytest.raises(DataError, match="float"):
        info((x * 255).to(torch.uint8), 1)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        info(x * 255, 1)
    with pytest.raises(DataError, match="NaN"):
        info(torch.full_like(x, float("nan")), 1)
    with pytest.raises(DataError, match="Tensor"):
        info(x.tolist(), 1)
    with pytest.raises(DataError, match="channel"):
        info(torch.rand(2, 2, 8, 8), 1)
    unsupported = {"gray": 3, "rgb": 1}.get(info.channels)
    if unsupported:
        with pytest.raises(DataError, match="corruption_names"):
            info(torch.rand(2, unsupported, 8, 8), 1)
    with pytest.raises(ParameterError, match="seed"):
        info(x, 1, seed=-1)


# --- registry helpers ----------------------------------------------------------------------------
def test_names_by_kind():
    gray, rgb = corruption_names("gray"), corruption_names("rgb")
    assert gray == sorted(["shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear",
                           "scale", "rotate", "brightness", "translate", "stripe", "fog",
                           "spatter", "dotted_line", "zigzag", "canny_edges"])
    assert rgb == sorted(["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
                          "glass_blur", "motion_blur", "zoom_blur", "snow", "frost", "fog",
                          "brightness", "contrast", "elastic_transform", "pixelate",
                          "jpeg_compression"])
    assert corruption_names("all") == sorted(set(gray) | set(rgb))
    with pytest.raises(ParameterError):
        corruption_names("grey")
    with pytest.raises(UnknownNameError, match="shot_noise"):
        corrupt(torch.rand(1, 1, 8, 8), "shot_nois", 1)


# --- hand math ------------------------------------------------------------------------------------
def test_brightness_contrast_stripe_hand_math():
    x = torch.tensor([0.0, 0.3, 0.7, 1.0]).repeat(1, 1, 4, 1)
    assert torch.allclose(corrupt(x, "brightness", 2), (x + 0.2).clamp(max=1))
    rgb = torch.tensor([0.2, 0.4, 0.1]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    v = 0.4 + 0.15  # HSV value raised by 0.15, hue and saturation kept: colour scales by V'/V
    assert torch.allclose(corrupt(rgb, "brightness", 3), rgb * v / 0.4)
    black = torch.zeros(1, 3, 2, 2)
    assert torch.allclose(corrupt(black, "brightness", 5), torch.full_like(black, 0.3))
    y = corrupt(rgb * torch.tensor([[1.0, 0.0], [0.5, 0.25]]), "contrast", 5)
    m = (rgb * torch.tensor([[1.0, 0.0], [0.5, 0.25]])).mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(y, (rgb * torch.tensor([[1.0, 0.0], [0.5, 0.25]]) - m) * 0.15 + m)
    s = corrupt(torch.zeros(1, 1, 28, 28), "stripe", 3)
    assert float(s[..., :7].min()) == 1 and float(s[..., 21:].min()) == 1
    assert float(s[..., 7:21].max()) == 0


def test_noise_statistics():
    x = torch.full((64, 3, 16, 16), 0.5)
    g = corrupt(x, "gaussian_noise", 5) - x
    assert abs(float(g.std()) - 0.10) < 0.005 and abs(float(g.mean())) < 0.005
    imp = corrupt(x, "impulse_noise", 5)
    assert abs(float((imp != 0.5).float().mean()) - 0.07) < 0.01
    assert set(torch.unique(imp).tolist()) == {0.0, 0.5, 1.0}
    from scipy import stats

    shot = corrupt(torch.full((64, 1, 16, 16), 0.5), "shot_noise", 5)  # min(Poisson(1.5)/3, 1)
    k = np.arange(60)
    expected = float((np.minimum(k, 3) * stats.poisson.pmf(k, 1.5)).sum() / 3)
    assert abs(float(shot.mean()) - expected) < 0.01
    assert set(torch.unique(shot * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_poisson_matches_the_pmf():
    from scipy import stats

    for lam in (0.05, 2.5, 40.0, 400.0):
        k = rng.poisson(torch.full((4000, 10), lam), 0, "t").flatten()
        assert abs(float(k.mean()) - lam) < 4 * (lam / len(k)) ** 0.5 + 1e-3
        assert torch.equal(k, k.round()) and float(k.min()) >= 0
    k = rng.poisson(torch.full((20000, 5), 2.5), 1, "t").flatten().long()
    freq = torch.bincount(k, minlength=8)[:8].double() / len(k)
    assert np.allclose(freq.numpy(), stats.poisson.pmf(range(8), 2.5), atol=0.006)
    assert float(rng.poisson(torch.zeros(3, 4), 0, "t").abs().max()) == 0


def test_rng_is_prefix_stable_and_uniform():
    a = rng.uniform(5, "s", 100, (50,))
    assert torch.equal(rng.uniform(5, "s", 10, (50,)), a[:10])
    assert torch.equal(rng.uniform(5, "s", 10, (50,), start=90), a[90:])
    assert not torch.equal(rng.uniform(6, "s", 10, (50,)), a[:10])
    assert abs(float(a.mean()) - 0.5) < 0.01 and abs(float(a.var()) - 1 / 12) < 0.005
    z = rng.normal(0, "n", 200, (100,))
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def test_filters_match_scipy_and_pil():
    from PIL import Image
    from scipy import ndimage

    img = np.random.RandomState(0).rand(20, 20).astype(np.float32)
    t = torch.from_numpy(img)[None, None]
    for sigma in (0.5, 1.3, 3.0):
        ref = ndimage.gaussian_filter(img.astype(np.float64), sigma, mode="nearest")
        assert np.abs(filters.gaussian(t, sigma)[0, 0].numpy() - ref).max() < 1e-6
        ref = ndimage.gaussian_filter(img.astype(np.float64), sigma, mode="reflect", truncate=3)
        out = filters.gaussian(t, sigma, mode="symmetric", truncate=3)[0, 0].numpy()
        assert np.abs(out - ref).max() < 1e-6
    for z in (1.07, 1.25, 2.25):  # Hendrycks' clipped_zoom with scipy.ndimage.zoom
        ch = int(np.ceil(20 / z))
        top = (20 - ch) // 2
        ref = ndimage.zoom(img[top:top + ch, top:top + ch].astype(np.float64), z, order=1)
        tt = (ref.shape[0] - 20) // 2
        ref = ref[tt:tt + 20, tt:tt + 20]
        assert np.abs(filters.clipped_zoom(t, z)[0, 0].numpy() - ref).max() < 1e-5
    for size in ((30, 30), (19, 19), (7, 7), (13, 29)):
        ref = np.asarray(Image.fromarray(img, mode="F").resize(size[::-1], Image.BOX))
        assert np.abs(filters.box_resize(t, size)[0, 0].numpy() - ref).max() < 1e-6


def test_jpeg_close_to_pil(rgb_images):
    from PIL import Image

    x = (rgb_images[:6] * 255).round() / 255
    for quality in (80, 40):
        ours = jpeg.jpeg_roundtrip(x, quality)
        for i in range(len(x)):
            arr = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=quality)
            pil = torch.from_numpy(np.asarray(Image.open(buf)).astype(np.float32) / 255)
            ours_err = float((ours[i].permute(1, 2, 0) - pil).abs().mean())
            clean_err = float((x[i].permute(1, 2, 0) - pil).abs().mean())
            assert ours_err < 0.5 * clean_err and ours_err < 2.5 / 255
    assert int(jpeg.quant_table(jpeg.LUMA, 50)[7, 7]) == 99
    assert int(jpeg.quant_table(jpeg.LUMA, 80)[0, 0]) == 6  # (16 * 40 + 50) // 100


def test_motion_blur_kernel_by_hand():
    k = filters.motion_kernel(2.0, 1.0)  # ImageMagick: width 2*ceil(r)+1, exp(-i²/2σ²)
    w = torch.exp(-torch.arange(5.0) ** 2 / 2)
    assert torch.allclose(k, w / w.sum())
    x = torch.zeros(1, 1, 1, 8)
    x[..., 5] = 1.0
    x = x.expand(1, 1, 2, 8).contiguous()
    y = filters.motion_blur(x, 2.0, 1.0, torch.zeros(1))  # angle 0: out[c] = Σ k_i x[c + i]
    assert torch.allclose(y[0, 0, 0, 1:6], k.flip(0), atol=1e-6)
    assert float(y[0, 0, 0, 6:].abs().max()) == 0


def test_geometry_of_geometric_corruptions():
    x = torch.zeros(1, 1, 28, 28)
    x[..., 10, 10] = 1
    y = corrupt(x, "translate", 2, seed=4)
    pos = (y[0, 0] == 1).nonzero()[0]
    assert sorted(abs(int(v) - 10) for v in pos) == [2, 2]
    ring = torch.zeros(1, 1, 29, 29)
    ring[..., 14, 14] = 1
    for name in ("rotate", "shear", "scale"):  # the centre is a fixed point
        assert float(corrupt(ring, name, 5)[..., 14, 14]) == pytest.approx(1.0)
    line = torch.zeros(1, 1, 29, 29)
    line[..., 14, :] = 1
    rotated = corrupt(line, "rotate", 5, seed=0)  # 1 rad: the row becomes a tilted line
    rows = rotated[0, 0].argmax(0)[10:19].float()
    slope = float(torch.linalg.lstsq(torch.stack([torch.arange(9.0), torch.ones(9)], 1),
                                     rows[:, None]).solution[0])
    assert abs(abs(slope) - np.tan(1.0)) < 0.2
    small = corrupt(torch.ones(1, 1, 28, 28), "scale", 5)  # half size: a 14-pixel square
    assert abs(float(small.sum()) - 14 ** 2) < 20


def test_canny_edges_outline_a_square():
    x = torch.zeros(1, 1, 28, 28)
    x[..., 8:20, 8:20] = 1
    e = corrupt(x, "canny_edges", 5)
    assert set(torch.unique(e).tolist()) <= {0.0, 1.0}
    assert float(e[..., 11:17, 11:17].sum()) == 0  # interior empty
    assert float(e[..., 0:4, :].sum()) == 0  # far background empty
    assert float(e[0, 0, 14].sum()) == 2 and float(e[0, 0, :, 14].sum()) == 2  # one pixel per side
    half = corrupt(x, "canny_edges", 3)  # severity 3: 60 % edges, 40 % image
    assert torch.allclose(half, 0.4 * x + 0.6 * e)


def test_plasma_corner_matches_the_full_map():
    full = filters.plasma_fractal(8, 256, 2.0, 0, "t")[:, :28, :28]
    corner = filters.plasma_fractal(8, 256, 2.0, 0, "t", crop=28)
    assert float((full - corner).abs().max()) < 0.01  # same recursion, normalisation ~exact
    small = filters.plasma_fractal(3, 32, 2.0, 0, "t")
    assert small.shape == (3, 32, 32)
    assert torch.allclose(small.flatten(1).min(1).values, torch.zeros(3))
    assert torch.allclose(small.flatten(1).max(1).values, torch.ones(3))


def test_lines_are_nested_by_severity():
    x = torch.zeros(4, 1, 28, 28)
    for name in ("dotted_line", "zigzag"):
        prev = x
        for s in range(1, 6):
            y = corrupt(x, name, s)
            assert bool((y >= prev - 1e-6).all())  # each severity adds a line to the previous
            prev = y
    dots = corrupt(x, "dotted_line", 1)
    assert float(dots[..., 0:2].sum()) == 0 and float(dots[..., 2:4].sum()) > 0
