"""Image classification: CIFAR-10 and bring-your-own image folders, in one code path.

Sources: an image-folder directory (``train/<class>/*`` and ``test/<class>/*``, or just
``<class>/*``, possibly under one top folder), a ``.tar.gz`` (or any tar) of one, read in a
single streaming pass without extracting, or torchvision's ``cifar-10-batches-py`` files
(downloaded by torchvision when ``download = true``). Images are decoded with PIL to uint8
(N, 3, H, W) and cached as ``.npz`` (see ``cache.py``), so only the first load decodes.
Classes are the sorted class-folder names. Inputs are float32, standardized per channel with
the mean and std of the (subsetted) training split.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError
from .base import Dataset, data_dirs, download_dir, fraction, positive_int
from .cache import cache_key, load_cached, save_cached, source_fingerprint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
SPLIT_SEED = 0  # the fixed seed of the subset shuffles and of the train/test split without test/
CACHE_FORMAT = 2  # bump when the cached arrays change meaning


def _decode(data, image_size: int | None, where: str) -> np.ndarray:
    """One image as uint8 (H, W, 3)."""
    try:
        with Image.open(data) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot decode image ({e})") from None


def _split_and_class(rel: PurePosixPath):
    """('train'|'test'|None, class) for an image path relative to the folder root."""
    parts = rel.parts
    if len(parts) >= 3 and parts[-3] in ("train", "test"):
        return parts[-3], parts[-2]
    if len(parts) >= 2:
        return None, parts[-2]
    return None, None


def read_tar(path: Path, image_size: int | None) -> dict:
    """Decode every image of an image-folder tar archive in one pass (no extraction)."""
    found: dict = {}   # split -> list of (class, member name, array)
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                rel = PurePosixPath(member.name)
                if (not member.isfile() or rel.suffix.lower() not in IMAGE_SUFFIXES
                        or any(p.startswith(".") for p in rel.parts)):  # e.g. macOS ._x.jpg
                    continue
                split, cls = _split_and_class(rel)
                if cls is None:
                    continue
                data = io.BytesIO(tar.extractfile(member).read())
                found.setdefault(split, []).append((cls, str(rel), _decode(data, image_size, f"{path}:{member.name}")))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the archive ({e}); expected a .tar.gz of an image folder") from None
    return _arrange(found, str(path))


def read_folder(path: Path, image_size: int | None) -> dict:
    """Decode an image-folder directory, with the same layout rules as the archive (so a folder
    and a tar of it give identical arrays)."""
    found: dict = {}
    for file in sorted(path.rglob("*")):
        rel = PurePosixPath(file.relative_to(path).as_posix())
        if rel.suffix.lower() not in IMAGE_SUFFIXES or any(p.startswith(".") for p in rel.parts) or not file.is_file():
            continue
        split, cls = _split_and_class(rel)
        if cls is None:
            continue
        found.setdefault(split, []).append((cls, str(rel), _decode(file, image_size, str(file))))
    return _arrange(found, str(path))


def _arrange(found: dict, where: str) -> dict:
    """Sorted classes and per-split uint8 (N, 3, H, W) arrays in a fixed (class, name) order."""
    found = {k: v for k, v in found.items() if v}
    if not found:
        raise DataError(f"{where}: no images found (expected train/<class>/*.jpg and test/<class>/*.jpg, "
                        f"or <class>/*.jpg)")
    classes = sorted({c for items in found.values() for c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    out = {"classes": np.array(classes)}
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))  # whatever order the archive or file system had
        shapes = {a.shape for _, _, a in items}
        if len(shapes) > 1:
            raise DataError(f"{where}: images have different sizes ({', '.join(map(str, sorted(shapes)[:3]))}, ...); "
                            f"set data.image_size to resize them")
        key = split or "all"
        out[f"x_{key}"] = np.stack([a for _, _, a in items]).transpose(0, 3, 1, 2).copy()
        out[f"y_{key}"] = np.array([index[c] for c, _, _ in items], dtype=np.int64)
    return out


def read_torchvision_cifar(root: Path, download: bool) -> dict:
    """torchvision's CIFAR-10 files under ``root`` (``root/cifar-10-batches-py``)."""
    from torchvision.datasets import CIFAR10
    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except (RuntimeError, OSError) as e:
        how = "" if download else "; set data.download = true to fetch it"
        raise DataError(f"{root / 'cifar-10-batches-py'}: CIFAR-10 not found or corrupt ({e}){how}") from None
    return {"classes": np.array(train.classes),
            "x_train": np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)), "y_train": np.array(train.targets),
            "x_test": np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)), "y_test": np.array(test.targets)}


def decoded(source: Path, image_size: int | None = None) -> dict:
    """The decoded arrays of an image folder or archive, from the cache when possible."""
    key = cache_key("images", CACHE_FORMAT, source_fingerprint(source), image_size)
    arrays = load_cached("images", key)
    if arrays is None:
        arrays = read_folder(source, image_size) if source.is_dir() else read_tar(source, image_size)
        save_cached("images", key, arrays)
    return arrays


def _subset(x, y, n, key):
    """The first ``n`` examples after a fixed seeded shuffle (all of them, in order, for None)."""
    if n is None:
        return x, y
    positive_int(n, key)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))[:n]
    return x[order], y[order]


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 (N, C, H, W) images, from a histogram."""
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    tx = torch.from_numpy(np.ascontiguousarray(x))
    for c in range(x.shape[1]):
        counts = torch.bincount(tx[:, c].reshape(-1), minlength=256).numpy().astype(np.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / max(n - 1, 1)
        means.append(mean)
        stds.append(max(np.sqrt(var), 1e-3))
    return np.array(means), np.array(stds)


def _standardized(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    out = torch.from_numpy(np.ascontiguousarray(x)).float()  # one pass uint8 -> float32
    shape = (1, -1) + (1,) * (out.dim() - 2)
    out.sub_(torch.as_tensor(mean, dtype=torch.float32).view(shape))
    out.div_(torch.as_tensor(std, dtype=torch.float32).view(shape))
    return out


def _split_off_test(x, y, test_fraction: float):
    """A fixed seeded train/test split, for folders without test/."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    if n_test >= len(x):
        raise DataError(f"only {len(x)} images: too few to split off a test set")
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return x[train], y[train], x[test], y[test]


def to_dataset(name: str, arrays: dict, train_subset, test_subset, test_fraction: float) -> Dataset:
    if "x_all" in arrays and "x_train" not in arrays:
        arrays = {**arrays, "x_train": arrays["x_all"], "y_train": arrays["y_all"]}
    if "x_train" not in arrays:
        raise DataError(f"{name}: found test/ images but no train/ images")
    if "x_test" not in arrays:  # no test/ folder: a fixed seeded split of train
        x, y, xt, yt = _split_off_test(arrays["x_train"], arrays["y_train"], test_fraction)
    else:
        x, y, xt, yt = arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    x, y = _subset(x, y, train_subset, "train_subset")
    xt, yt = _subset(xt, yt, test_subset, "test_subset")
    mean, std = _channel_stats(x)
    classes = tuple(str(c) for c in arrays["classes"])
    xs, xts = _standardized(x, mean, std), _standardized(xt, mean, std)
    return Dataset(name, "classification", xs, torch.as_tensor(y, dtype=torch.int64), xts,
                   torch.as_tensor(yt, dtype=torch.int64), num_classes=len(classes),
                   input_shape=tuple(xs.shape[1:]), classes=classes)


def _check_bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"data.{key}: must be true or false, got {value!r}")
    return value


def load_imagefolder(path: str | None = None, image_size: int | None = None, train_subset: int | None = None,
                     test_subset: int | None = None, test_fraction: float = 0.1) -> Dataset:
    """Any image-folder directory or .tar.gz of one; classes from the sorted folder names.
    Without a test/ folder, a fixed seeded ``test_fraction`` of the images is the test split."""
    if path is None:
        raise ConfigError("data.path: the imagefolder dataset needs a path to an image-folder directory "
                          "(train/<class>/*, test/<class>/* or <class>/*) or a .tar.gz of one")
    if image_size is not None:
        positive_int(image_size, "image_size")
    for value, key in ((train_subset, "train_subset"), (test_subset, "test_subset")):
        if value is not None:
            positive_int(value, key)
    fraction(test_fraction, "test_fraction")
    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"data.path: {source} does not exist (imagefolder needs an image-folder directory "
                        f"or a .tar.gz of one)")
    return to_dataset("imagefolder", decoded(source, image_size), train_subset, test_subset, test_fraction)


CIFAR_NAMES = ("cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar-10-batches-py")


def _cifar_candidates(path: str | None) -> list[Path]:
    if path:
        source = Path(path).expanduser()
        # a directory that holds one of the known copies (e.g. torchvision's root) rather than being one
        if source.is_dir() and not (source / "train").is_dir() and source.name not in CIFAR_NAMES \
                and any((source / n).exists() for n in CIFAR_NAMES):
            return [source / n for n in CIFAR_NAMES]
        return [source]
    dirs = data_dirs()
    if download_dir() not in dirs:  # where an earlier ``download = true`` put it
        dirs.append(download_dir())
    return [d / n for d in dirs for n in CIFAR_NAMES]


def locate_cifar10(path: str | None = None) -> Path | None:
    """The copy ``load_cifar10`` reads (same search order), or None when there is none yet."""
    for source in _cifar_candidates(path):
        if source.exists():
            return source
    return None


def load_cifar10(path: str | None = None, download: bool = False, train_subset: int | None = None,
                 test_subset: int | None = None) -> Dataset:
    """CIFAR-10: an explicit path, an offline copy in the data directories, or torchvision's download."""
    _check_bool(download, "download")
    for value, key in ((train_subset, "train_subset"), (test_subset, "test_subset")):
        if value is not None:
            positive_int(value, key)
    candidates = _cifar_candidates(path)
    for source in candidates:
        if source.name == "cifar-10-batches-py" and source.is_dir():
            return to_dataset("cifar10", read_torchvision_cifar(source.parent, False), train_subset, test_subset, 0.1)
        if source.exists():
            return to_dataset("cifar10", decoded(source), train_subset, test_subset, 0.1)
    if download:
        root = download_dir()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cifar10: cannot create the download directory {root} ({e}); set LRTRANSFER_DATA") from None
        return to_dataset("cifar10", read_torchvision_cifar(root, True), train_subset, test_subset, 0.1)
    where = ", ".join(str(c) for c in candidates)
    raise DataError(f"cifar10: no copy found (looked for {where}). Set LRTRANSFER_DATA to a directory holding "
                    f"cifar10-jpeg.tar.gz, cifar10-jpeg/ or cifar-10-batches-py/, pass data.path, "
                    f"or set data.download = true to fetch it with torchvision")
