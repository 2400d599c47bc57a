"""Datasets: shapes, seeded batches, loading paths, caching and errors (generated files in
tmp_path), plus the offline copies under ../shared/data (skipped when absent, failing under CI=true)."""
import random
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need_shared_data
from lrtransfer.data import DATASETS, Dataset, load
from lrtransfer.data import base as data_base
from lrtransfer.data import images as data_images
from lrtransfer.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A fresh cache per test, and no offline copies found unless a test puts them there."""
    monkeypatch.setenv("LRTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LRTRANSFER_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def no_offline_copies(tmp_path, monkeypatch):
    """Hide ../shared/data (cwd- and repo-relative) and point LRTRANSFER_DATA at an empty dir."""
    empty = tmp_path / "empty-data"
    empty.mkdir()
    monkeypatch.setenv("LRTRANSFER_DATA", str(empty))
    (tmp_path / "nowhere" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "nowhere" / "repo")
    monkeypatch.setattr(data_base, "PACKAGE_ROOT", tmp_path / "nowhere" / "repo")
    return empty


# ----------------------------------------------------------------------------- mnist1d

def test_mnist1d_shapes_standardization_and_cache(tmp_path):
    ds = load("mnist1d", samples=500)
    assert isinstance(ds, Dataset) and ds.name == "mnist1d" and ds.kind == "classification"
    assert ds.input_shape == (40,) and ds.num_classes == 10
    assert ds.vocab_size is None and ds.context is None
    assert ds.n_train == 400 and ds.n_test == 100
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.tolist()) == set(range(10))
    # one scalar mean/std over the training set
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4
    assert list((tmp_path / "cache").glob("mnist1d-*.npz"))
    again = load("mnist1d", samples=500)  # from the cache: identical
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)


def test_mnist1d_seeds():
    a, b = load("mnist1d", samples=200, seed=1), load("mnist1d", samples=200, seed=2)
    assert not torch.equal(a.x_train, b.x_train)
    # generation reseeds numpy/random globally inside mnist1d; load leaves them untouched
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    load("mnist1d", samples=300, seed=5)  # not cached yet: generates
    assert np.random.rand() == expect_np and random.random() == expect_py


def test_sample_is_seeded_and_uniform():
    ds = load("mnist1d", samples=500)
    a = ds.sample("train", 16, torch.Generator().manual_seed(3))
    b = ds.sample("train", 16, torch.Generator().manual_seed(3))
    c = ds.sample("train", 16, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (16, 40) and a[0].dtype == torch.float32
    assert a[1].shape == (16,) and a[1].dtype == torch.int64
    # exactly the documented draw: randint on the CPU generator, then index
    idx = torch.randint(0, ds.n_train, (16,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], ds.x_train[idx]) and torch.equal(a[1], ds.y_train[idx])
    # the global torch RNG is not used
    torch.manual_seed(0)
    ds.sample("train", 8, torch.Generator().manual_seed(1))
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))
    xt, yt = ds.sample("test", 5, torch.Generator().manual_seed(0))
    assert xt.shape == (5, 40) and int(yt.max()) < 10
    assert ds.to("cpu") is ds and ds.x_train.device.type == "cpu"


def test_classification_eval_batches_cover_split():
    ds = load("mnist1d", samples=500)
    batches = list(ds.eval_batches("test", 32))
    assert [len(x) for x, _ in batches] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([x for x, _ in batches]), ds.x_test)
    assert torch.equal(torch.cat([y for _, y in batches]), ds.y_test)
    first = list(ds.eval_batches("train", 30, max_examples=50))
    assert [len(x) for x, _ in first] == [30, 20]
    assert torch.equal(torch.cat([x for x, _ in first]), ds.x_train[:50])


def test_bad_batch_sizes_and_split():
    ds = load("mnist1d", samples=200)
    g = torch.Generator().manual_seed(0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="batch_size"):
            ds.sample("train", bad, g)
        with pytest.raises(ConfigError, match="batch_size"):
            next(ds.eval_batches("test", bad))
    with pytest.raises(ConfigError, match="max_examples"):
        next(ds.eval_batches("test", 4, max_examples=0))
    with pytest.raises(ConfigError, match="split"):
        ds.sample("validation", 4, g)


# ----------------------------------------------------------------------------- text

def test_text_vocab_splits_and_windows(tmp_path):
    text = "Hällo wörld, ☃ snow!\n" * 40 + "the end ünï\n"
    f = tmp_path / "book.txt"
    f.write_bytes(text.encode("utf-8"))
    ds = load("text", path=str(f), context=8, test_fraction=0.2)
    assert ds.kind == "language" and ds.name == "text"
    vocab = sorted(set(text))
    assert ds.vocab_size == ds.num_classes == len(vocab) and ds.classes == tuple(vocab)
    assert ds.context == 8 and ds.input_shape == (8,)
    n_test = int(len(text) * 0.2)
    decode = lambda t: "".join(ds.classes[i] for i in t.tolist())  # noqa: E731
    assert decode(ds.x_train) == text[:len(text) - n_test] and decode(ds.x_test) == text[len(text) - n_test:]
    assert ds.n_train == len(ds.x_train) - 8 and ds.n_test == len(ds.x_test) - 8
    x, y = ds.sample("train", 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):  # each window is a real substring of the train text
        assert (decode(row_x) + decode(row_y)[-1]) in text[:len(text) - n_test]
    x2, _ = ds.sample("train", 4, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_language_eval_batches(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("".join(chr(97 + (i * 7) % 26) for i in range(3000)), encoding="utf-8")
    ds = load("text", path=str(f), context=16)
    default = list(ds.eval_batches("test", 10))
    assert sum(len(x) for x, _ in default) == 64  # default: 64 fixed windows
    again = list(ds.eval_batches("test", 10))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(default, again))
    for x, y in default:
        assert x.shape[1] == 16 and torch.equal(x[:, 1:], y[:, :-1])
    some = list(ds.eval_batches("test", 5, max_examples=7))
    assert [len(x) for x, _ in some] == [5, 2]
    # more windows than there are start positions: every start once
    many = list(ds.eval_batches("test", 1000, max_examples=10**6))
    assert sum(len(x) for x, _ in many) == ds.n_test


def test_text_errors(tmp_path):
    with pytest.raises(DataError, match="none.txt does not exist"):
        load("text", path=str(tmp_path / "none.txt"))
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DataError, match="cannot read .*bin.txt as UTF-8"):
        load("text", path=str(bad))
    with pytest.raises(DataError, match="directory"):
        load("text", path=str(tmp_path))
    (tmp_path / "short.txt").write_text("abc" * 10)
    with pytest.raises(ConfigError, match="data.context: 128 is too long"):
        load("text", path=str(tmp_path / "short.txt"))
    for bad_context in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="data.context"):
            load("text", path=str(tmp_path / "short.txt"), context=bad_context)
    with pytest.raises(ConfigError, match="data.test_fraction"):
        load("text", path=str(tmp_path / "short.txt"), context=2, test_fraction=1.5)
    with pytest.raises(ConfigError, match="data.path"):
        load("text")


def test_shakespeare_lookup_order(tmp_path, monkeypatch, no_offline_copies):
    with pytest.raises(DataError) as e:
        load("shakespeare")
    msg = str(e.value)
    assert "tinyshakespeare.txt" in msg and "LRTRANSFER_DATA" in msg and "data.path" in msg
    assert "data.download = true" in msg and str(no_offline_copies) in msg
    # ../shared/data relative to the working directory
    shared = tmp_path / "nowhere" / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "tinyshakespeare.txt").write_text("to be or not to be " * 30)
    assert load("shakespeare", context=8).vocab_size == len(set("to be or not to be "))
    # $LRTRANSFER_DATA comes first
    (no_offline_copies / "tinyshakespeare.txt").write_text("xyz " * 100)
    ds = load("shakespeare", context=8)
    assert ds.name == "shakespeare" and ds.classes == (" ", "x", "y", "z")
    # an explicit path wins
    own = tmp_path / "own.txt"
    own.write_text("ab" * 100)
    assert load("shakespeare", path=str(own), context=4).classes == ("a", "b")
    with pytest.raises(ConfigError, match="data.download"):
        load("shakespeare", download="yes")


# ----------------------------------------------------------------------------- images

CLASSES = ("emu", "cat", "dog")  # created out of order: classes must come back sorted


def _image_folder(root, classes=CLASSES, per_class=(4, 2), size=8, splits=("train", "test")):
    """PNGs whose pixels encode (split, class, index) so labels and order can be checked."""
    rng = np.random.default_rng(0)
    images = {}
    for split, n in zip(splits, per_class):
        for c in classes:
            d = root / split / c if split else root / c
            d.mkdir(parents=True)
            for j in range(n):
                arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                arr[..., 0] += 60 * sorted(classes).index(c)  # brightness follows the class
                Image.fromarray(arr).save(d / f"{j:03d}.png")
                images[(split, c, j)] = arr
    return images


def _expected(images, split, classes=sorted(CLASSES)):
    """uint8 (N, 3, H, W) and labels in the documented order: sorted class, then file name."""
    keys = sorted((k for k in images if k[0] == split), key=lambda k: (k[1], k[2]))
    x = np.stack([images[k] for k in keys]).transpose(0, 3, 1, 2).astype(np.float64)
    return x, np.array([classes.index(k[1]) for k in keys])


def _tar(src, dest, arcname):
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return dest


@pytest.mark.parametrize("as_tar", [False, True])
def test_imagefolder_directory_and_tar(tmp_path, as_tar):
    images = _image_folder(tmp_path / "imgs")
    path = _tar(tmp_path / "imgs", tmp_path / "imgs.tar.gz", "imgs") if as_tar else tmp_path / "imgs"
    ds = load("imagefolder", path=str(path))
    assert ds.name == "imagefolder" and ds.kind == "classification"
    assert ds.classes == ("cat", "dog", "emu") and ds.num_classes == 3
    assert ds.input_shape == (3, 8, 8) and ds.x_train.shape == (12, 3, 8, 8) and ds.x_train.dtype == torch.float32
    assert ds.n_train == 12 and ds.n_test == 6
    # per-channel standardization with the training statistics, applied to both splits
    x, y = _expected(images, "train")
    xt, yt = _expected(images, "test")
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3), ddof=1)
    sh = (1, 3, 1, 1)
    assert np.allclose(ds.x_train.numpy(), (x - mean.reshape(sh)) / std.reshape(sh), atol=1e-5)
    assert np.allclose(ds.x_test.numpy(), (xt - mean.reshape(sh)) / std.reshape(sh), atol=1e-5)
    assert ds.y_train.tolist() == y.tolist() and ds.y_test.tolist() == yt.tolist()
    assert torch.allclose(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(ds.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    xb, yb = ds.sample("train", 7, torch.Generator().manual_seed(0))
    assert xb.shape == (7, 3, 8, 8) and yb.dtype == torch.int64


def test_imagefolder_tar_equals_directory_and_top_folder(tmp_path):
    _image_folder(tmp_path / "imgs")
    folder = load("imagefolder", path=str(tmp_path / "imgs"))
    flat = load("imagefolder", path=str(_tar(tmp_path / "imgs", tmp_path / "flat.tgz", ".")))
    assert torch.equal(folder.x_train, flat.x_train) and torch.equal(folder.y_test, flat.y_test)
    # a directory unpacked from an archive with one top-level folder
    (tmp_path / "unpacked").mkdir()
    (tmp_path / "imgs").rename(tmp_path / "unpacked" / "imgs")
    nested = load("imagefolder", path=str(tmp_path / "unpacked"))
    assert nested.classes == folder.classes and torch.equal(nested.x_train, folder.x_train)


def test_imagefolder_cache(tmp_path, monkeypatch):
    _image_folder(tmp_path / "imgs")
    tar = _tar(tmp_path / "imgs", tmp_path / "imgs.tar.gz", "imgs")
    first = load("imagefolder", path=str(tar))
    assert len(list((tmp_path / "cache").glob("images-*.npz"))) == 1
    assert not list((tmp_path / "cache").glob(".*"))  # no temp file left behind

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(data_images, "_decode", no_decoding)
    second = load("imagefolder", path=str(tar))
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_train, second.y_train)
    # the directory is cached too, and a changed file under it invalidates the entry
    monkeypatch.undo()
    monkeypatch.setenv("LRTRANSFER_CACHE", str(tmp_path / "cache"))
    load("imagefolder", path=str(tmp_path / "imgs"))
    monkeypatch.setattr(data_images, "_decode", no_decoding)
    load("imagefolder", path=str(tmp_path / "imgs"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "train" / "cat" / "999.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load("imagefolder", path=str(tmp_path / "imgs"))


def test_imagefolder_without_test_folder(tmp_path):
    _image_folder(tmp_path / "imgs", per_class=(10,), splits=(None,))
    ds = load("imagefolder", path=str(tmp_path / "imgs"), test_fraction=0.2)
    assert ds.classes == ("cat", "dog", "emu") and ds.n_train == 24 and ds.n_test == 6
    again = load("imagefolder", path=str(tmp_path / "imgs"), test_fraction=0.2)
    assert torch.equal(ds.x_test, again.x_test)  # a fixed split
    # no train/test split and no overlap: every image once
    all_x = torch.cat([ds.x_train, ds.x_test]).reshape(30, -1)
    assert len(torch.unique(all_x, dim=0)) == 30
    default = load("imagefolder", path=str(tmp_path / "imgs"))
    assert default.n_test == 3  # test_fraction defaults to 0.1


def test_imagefolder_subsets_resize_and_errors(tmp_path):
    _image_folder(tmp_path / "imgs", size=10)
    ds = load("imagefolder", path=str(tmp_path / "imgs"), image_size=4, train_subset=5, test_subset=2)
    assert ds.x_train.shape == (5, 3, 4, 4) and ds.n_test == 2 and ds.input_shape == (3, 4, 4)
    again = load("imagefolder", path=str(tmp_path / "imgs"), image_size=4, train_subset=5, test_subset=2)
    assert torch.equal(ds.y_train, again.y_train) and torch.equal(ds.x_train, again.x_train)
    big = load("imagefolder", path=str(tmp_path / "imgs"), train_subset=1000)  # more than there are: all
    assert big.n_train == 12
    for key in ("train_subset", "test_subset", "image_size"):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            load("imagefolder", path=str(tmp_path / "imgs"), **{key: 0})
    with pytest.raises(ConfigError, match="data.path"):
        load("imagefolder")
    with pytest.raises(DataError, match="does not exist"):
        load("imagefolder", path=str(tmp_path / "none"))
    # mixed sizes need image_size
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "imgs" / "train" / "cat" / "odd.png")
    with pytest.raises(DataError, match="different sizes.*data.image_size"):
        load("imagefolder", path=str(tmp_path / "imgs"))
    assert load("imagefolder", path=str(tmp_path / "imgs"), image_size=6).n_train == 13
    # an unreadable image names the file
    (tmp_path / "imgs" / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load("imagefolder", path=str(tmp_path / "imgs"), image_size=6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load("imagefolder", path=str(tmp_path / "empty"))
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read the archive"):
        load("imagefolder", path=str(tmp_path / "junk.tar.gz"))


def test_cifar10_lookup_order(tmp_path, no_offline_copies):
    with pytest.raises(DataError) as e:
        load("cifar10")
    msg = str(e.value)
    assert "LRTRANSFER_DATA" in msg and "data.path" in msg and "data.download = true" in msg
    assert str(no_offline_copies / "cifar10-jpeg.tar.gz") in msg
    # cifar10-jpeg/ in $LRTRANSFER_DATA ...
    _image_folder(no_offline_copies / "cifar10-jpeg", classes=("b", "a"))
    assert load("cifar10").classes == ("a", "b")
    # ... but the .tar.gz comes first
    _image_folder(tmp_path / "tiny", classes=("z", "y", "x"))
    _tar(tmp_path / "tiny", no_offline_copies / "cifar10-jpeg.tar.gz", "cifar10-jpeg")
    ds = load("cifar10", train_subset=3)
    assert ds.name == "cifar10" and ds.classes == ("x", "y", "z") and ds.n_train == 3
    # an explicit path wins over both
    assert load("cifar10", path=str(no_offline_copies / "cifar10-jpeg")).classes == ("a", "b")
    with pytest.raises(ConfigError, match="data.download"):
        load("cifar10", download=1)


# ----------------------------------------------------------------------------- load()

def test_unknown_names_and_options():
    assert set(DATASETS) == {"mnist1d", "cifar10", "imagefolder", "shakespeare", "text"}
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*mnist1d.*cifar10"):
        load("imagenet")
    with pytest.raises(ConfigError, match="unknown option.*colour.*allowed: samples, test_fraction, seed"):
        load("mnist1d", colour=3)
    with pytest.raises(ConfigError, match="unknown option.*name"):
        load("text", name="x")  # internal parameter, not an option
    with pytest.raises(ConfigError, match="data.samples: must be a positive integer"):
        load("mnist1d", samples=0)
    with pytest.raises(ConfigError, match="data.seed"):
        load("mnist1d", seed="1")


# ----------------------------------------------------------------------------- offline copies

def test_shakespeare_offline_copy():
    path = need_shared_data("tinyshakespeare.txt")
    ds = load("shakespeare", path=str(path), context=32)
    assert ds.vocab_size == 65 and ds.context == 32 and ds.input_shape == (32,)
    total = len(ds.x_train) + len(ds.x_test)
    assert total == 1115394 and len(ds.x_test) == int(total * 0.1)
    assert ds.n_train == len(ds.x_train) - 32
    assert "".join(ds.classes[i] for i in ds.x_train[:9].tolist()) == "First Cit"
    # found without a path too: ../shared/data beside the repository
    assert load("shakespeare", context=32).vocab_size == 65


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory):
    """One CIFAR-10 decode per test session (~20 s on 2 cores); later loads hit the cache."""
    return tmp_path_factory.mktemp("cifar-cache")


def test_cifar10_offline_copy(monkeypatch, cifar_cache):
    need_shared_data("cifar10-jpeg.tar.gz")
    monkeypatch.setenv("LRTRANSFER_CACHE", str(cifar_cache))
    ds = load("cifar10", train_subset=500, test_subset=100)  # found beside the repository
    assert ds.x_train.shape == (500, 3, 32, 32) and ds.input_shape == (3, 32, 32) and ds.n_test == 100
    assert ds.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert ds.num_classes == 10 and set(ds.y_train.tolist()) == set(range(10))
    assert torch.allclose(ds.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(ds.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")
    monkeypatch.setattr(data_images, "_decode", no_decoding)
    start = time.perf_counter()
    full = load("cifar10")
    assert time.perf_counter() - start < 20  # cached: about a second
    assert full.n_train == 50000 and full.n_test == 10000
    assert torch.bincount(full.y_train).tolist() == [5000] * 10
    assert torch.bincount(full.y_test).tolist() == [1000] * 10
