"""kuosan.data: toy sets, digits, image folders and arrays: shapes, ranges, determinism and named errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.data import TOY2D_NAMES, DataError, ImageFolder, load_array, load_digits, toy2d, toy_gmm


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- toy 2-D -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOY2D_NAMES)
def test_toy2d_shape_scale_and_determinism(name):
    x = toy2d(name, 20000, gen(0))
    assert x.shape == (20000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, toy2d(name, 20000, gen(0)))
    assert not torch.equal(x, toy2d(name, 20000, gen(1)))
    assert (x.std(0) > 0.6).all() and (x.std(0) < 1.3).all() and (x.mean(0).abs() < 0.35).all()


def test_toy2d_sets_have_their_shapes():
    r = toy2d("8gaussians", 4000, gen()).norm(dim=1)
    assert ((r - 1.4).abs() < 0.5).all() and abs(r.mean().item() - 1.4) < 0.02
    rings = toy2d("rings", 4000, gen()).norm(dim=1)
    assert ((rings * 2 - (rings * 2).round()).abs() < 0.4).all()  # radii 0.5, 1, 1.5, 2 with 0.04 noise
    u = toy2d("checkerboard", 4000, gen()) / (math.sqrt(3) / 2)  # back to [-2, 2]^2
    assert (u.abs() <= 2 + 1e-5).all() and ((u.floor().sum(1) % 2) == 0).all()  # dark squares only
    m = toy2d("moons", 4000, gen()) / 1.4 + torch.tensor([0.5, 0.25])
    d_upper, d_lower = m.norm(dim=1), (m - torch.tensor([1.0, 0.5])).norm(dim=1)
    assert (torch.minimum((d_upper - 1).abs(), (d_lower - 1).abs()) < 0.3).all()  # on one of two unit circles
    s = toy2d("swiss_roll", 4000, gen()) * 7.5
    assert (s.norm(dim=1) > 1.5 * math.pi - 2.5).all() and (s.norm(dim=1) < 4.5 * math.pi + 2.5).all()


def test_toy2d_gmm_matches_the_exact_mixture_moments():
    mix, x = toy_gmm(), toy2d("gmm", 200000, gen()).double()
    torch.testing.assert_close(x.mean(0), mix.mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), mix.covariance, atol=0.01, rtol=0)


def test_toy2d_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="swiss_roll.*checkerboard"):
        toy2d("spiral", 10)


# --- digits --------------------------------------------------------------------------------------------
def test_digits_values_splits_and_resize():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1 and set(y.tolist()) == set(range(10))
    levels = (x + 1) * 8  # the 17 grey levels 0..16
    assert torch.equal(levels, levels.round())
    torch.testing.assert_close(x[0, 0, 0], torch.tensor([0.0, 0, 5, 13, 9, 1, 0, 0]) / 8 - 1)  # sklearn's first row
    (xtr, ytr), (xte, yte) = load_digits("train"), load_digits("test")
    assert len(xtr) == 1438 and len(xte) == 359
    assert torch.equal(torch.bincount(ytr) + torch.bincount(yte), torch.bincount(y))
    assert torch.equal(torch.cat([xtr, xte]).sum(0), x.sum(0))  # a partition of the same images
    assert torch.equal(load_digits("test")[0], xte)  # deterministic
    x16, _ = load_digits("test", size=16)
    assert x16.shape == (359, 1, 16, 16) and x16.min() >= -1 and x16.max() <= 1
    torch.testing.assert_close(x16.mean((2, 3)), xte.mean((2, 3)), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="split"):
        load_digits("val")


# --- image folders ---------------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path):
    """Three stripes (red | green | blue, 10 px each) as PNG, a white JPEG and an RGBA PNG in subfolders,
    a corrupt PNG and a truncated JPEG."""
    stripes = np.zeros((10, 30, 3), np.uint8)
    for i in range(3):
        stripes[:, 10 * i : 10 * (i + 1), i] = 255
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(stripes).save(tmp_path / "a" / "stripes.png")
    Image.new("RGB", (40, 20), (255, 255, 255)).save(tmp_path / "b" / "white.JPG", quality=95)
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "b" / "clear.png")
    (tmp_path / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    full = tmp_path / "full.jpg"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(full)
    (tmp_path / "a" / "truncated.jpg").write_bytes(full.read_bytes()[:200])
    full.unlink()
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_image_folder_names_the_corrupt_file(folder):
    with pytest.raises(DataError, match="truncated.jpg"):  # sorted paths: a/ before b/
        ImageFolder(folder, size=10, channels=3)


def test_image_folder_skip_bad_counts_and_decodes(folder):
    ds = ImageFolder(folder, size=10, channels=3, skip_bad=True)
    assert ds.n_skipped == 2 and {p.split("/")[-1] for p in ds.skipped} == {"corrupt.png", "truncated.jpg"}
    x, y = ds.tensors()
    assert x.shape == (3, 3, 10, 10) and x.dtype == torch.float32 and ds.classes == ["a", "b"]
    assert y.tolist() == [0, 1, 1] and len(ds) == 3 and torch.equal(ds[0][0], x[0])
    torch.testing.assert_close(x[0], torch.tensor([-1.0, 1, -1])[:, None, None].expand(3, 10, 10))  # green centre
    assert torch.equal(x[1], torch.ones(3, 10, 10))  # transparent composited on white
    assert (x[2] > 0.98).all()  # the white JPEG, resized 40x20 -> 20x10 and centre-cropped
    grey = ImageFolder(folder, size=10, channels=1, skip_bad=True).tensors()[0]
    assert grey.shape == (3, 1, 10, 10)
    torch.testing.assert_close(grey[0], torch.full((1, 10, 10), 2 * 150 / 255 - 1))  # ITU-R 601 luma of green


def test_image_folder_empty_and_missing(tmp_path):
    with pytest.raises(DataError, match="no PNG/JPG/JPEG images"):
        ImageFolder(tmp_path, size=8)
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "nope", size=8)
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 images"):
        ImageFolder(tmp_path, size=8, skip_bad=True)


# --- arrays ----------------------------------------------------------------------------------------------
def test_load_array_reads_vectors_and_images(tmp_path):
    v = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "v.npy", v)
    torch.testing.assert_close(load_array(tmp_path / "v.npy"), torch.tensor(v, dtype=torch.float32))
    img = np.zeros((4, 8, 8, 3), np.uint8)
    img[..., 0] = 255
    np.savez(tmp_path / "i.npz", x=img, labels=np.arange(4))
    with pytest.warns(UserWarning, match="NHWC"):
        x = load_array(tmp_path / "i.npz")  # "x" picked among two arrays
    assert x.shape == (4, 3, 8, 8) and torch.equal(x[:, 0], torch.ones(4, 8, 8)) and torch.equal(x[:, 1], -x[:, 0])
    np.savez(tmp_path / "one.npz", img.transpose(0, 3, 1, 2))
    assert load_array(tmp_path / "one.npz").shape == (4, 3, 8, 8)
    with pytest.raises(DataError, match="must be 2-D"):
        load_array(tmp_path / "i.npz", key="labels")


@pytest.mark.parametrize(
    "array, key, message",
    [
        (np.zeros((4, 3, 2)), None, r"shape \(4, 3, 2\) must be 2-D"),
        (np.full((2, 1, 4, 4), 3.0), None, "min 3, max 3"),
        (np.array([[0.0, np.nan], [np.inf, 1.0]]), None, "2 NaN/inf"),
        (np.full((3, 2), 500.0), None, "standardise"),
        (np.zeros((3, 2), np.int32), None, "int32"),
        (np.zeros((2, 5, 4, 4), np.float32), None, "1 or 3 channels"),
        ({"a": np.zeros((2, 2)), "b": np.zeros((2, 2))}, None, r"holds arrays \['a', 'b'\]"),
        ({"a": np.zeros((2, 2))}, "x", "has no array 'x'"),
    ],
)
def test_load_array_errors_name_the_file(tmp_path, array, key, message):
    path = tmp_path / ("data.npz" if isinstance(array, dict) else "data.npy")
    np.savez(path, **array) if isinstance(array, dict) else np.save(path, array)
    with pytest.raises(DataError, match=message) as err:
        load_array(path, key=key)
    assert "data.np" in str(err.value)


def test_load_array_unreadable_files(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="junk.npy"):
        load_array(tmp_path / "junk.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="obj.npy"):
        load_array(tmp_path / "obj.npy")
    with pytest.raises(DataError, match="does not exist"):
        load_array(tmp_path / "missing.npz")
