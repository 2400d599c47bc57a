"""Image classification: CIFAR-10 and bring-your-own image folders.

Sources, in one code path: an image-folder directory (``train/<class>/*``, ``test/<class>/*``),
a ``.tar.gz`` of one (read in one streaming pass, optionally under a single top folder), or
torchvision's CIFAR-10 files (downloaded by torchvision when ``download = true``). Decoded
uint8 arrays are cached; images are standardized per channel with training statistics.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .base import Dataset, data_dirs, download_dir, fraction, positive_int
from .cache import cache_key, load_cached, save_cached, source_fingerprint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm"}


def _decode(data, image_size: int | None) -> np.ndarray:
    img = Image.open(data).convert("RGB")
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _stack(images: list, where: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"{where}: images have different sizes {sorted(shapes)[:3]}...; set data.image_size")
    return np.stack(images)


def _split_and_class(rel: PurePosixPath):
    """('train'|'test'|None, class, name) for a path relative to the folder root."""
    parts = rel.parts
    if len(parts) >= 3 and parts[-3] in ("train", "test"):
        return parts[-3], parts[-2], parts[-1]
    if len(parts) >= 2:
        return None, parts[-2], parts[-1]
    return None, None, parts[-1]


def read_tar(path: Path, image_size: int | None) -> dict:
    """Decode every image of an image-folder ``.tar.gz`` in one pass."""
    found: dict = {}   # split -> list of (class, name, array)
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                rel = PurePosixPath(member.name)
                if not member.isfile() or rel.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                split, cls, name = _split_and_class(rel)
                if cls is None:
                    continue
                arr = _decode(io.BytesIO(tar.extractfile(member).read()), image_size)
                found.setdefault(split, []).append((cls, name, arr))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the archive ({e})") from None
    return _arrange(found, str(path))


def read_folder(path: Path, image_size: int | None) -> dict:
    """Decode an image-folder directory (torchvision's ImageFolder walks each split)."""
    from torchvision.datasets import ImageFolder
    found: dict = {}
    splits = [s for s in ("train", "test") if (path / s).is_dir()]
    for split in splits or [None]:
        root = path / split if split else path
        try:
            folder = ImageFolder(str(root), loader=lambda p: p)
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"{root}: not an image folder (<class>/<image> files): {e}") from None
        for file, label in folder.samples:
            found.setdefault(split, []).append((folder.classes[label], Path(file).name, _decode(file, image_size)))
    return _arrange(found, str(path))


def _arrange(found: dict, where: str) -> dict:
    if not found:
        raise DataError(f"{where}: no images found (expected train/<class>/*.jpg and test/<class>/*.jpg)")
    classes = sorted({c for items in found.values() for c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    out = {"classes": np.array(classes)}
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))  # a fixed order, whatever the archive order was
        key = split or "all"
        out[f"x_{key}"] = _stack([a for _, _, a in items], where)
        out[f"y_{key}"] = np.array([index[c] for c, _, _ in items], dtype=np.int64)
    return out


def read_torchvision_cifar(root: Path, download: bool) -> dict:
    from torchvision.datasets import CIFAR10
    try:
        train, test = CIFAR10(str(root), train=True, download=download), CIFAR10(str(root), train=False, download=download)
    except RuntimeError as e:
        raise DataError(f"{root}: CIFAR-10 not found or corrupt ({e})") from None
    return {"classes": np.array(train.classes), "x_train": train.data, "y_train": np.array(train.targets),
            "x_test": test.data, "y_test": np.array(test.targets)}


def _decoded(source: Path, image_size: int | None) -> dict:
    key = cache_key("images", source_fingerprint(source), image_size)
    arrays = load_cached("images", key)
    if arrays is None:
        arrays = read_folder(source, image_size) if source.is_dir() else read_tar(source, image_size)
        save_cached("images", key, arrays)
    return arrays


def _subset(x, y, n, key, seed=0):
    if n is None:
        return x, y
    positive_int(n, key)
    order = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[order], y[order]


def _to_dataset(name: str, arrays: dict, train_subset, test_subset, test_fraction: float) -> Dataset:
    if "x_train" not in arrays:  # no train/test folders: a fixed seeded split
        x, y = arrays["x_all"], arrays["y_all"]
        order = np.random.default_rng(0).permutation(len(x))
        n_test = max(1, int(round(len(x) * test_fraction)))
        arrays = {**arrays, "x_test": x[order[:n_test]], "y_test": y[order[:n_test]],
                  "x_train": x[order[n_test:]], "y_train": y[order[n_test:]]}
    if "x_test" not in arrays:
        raise DataError(f"{name}: found train/ but no test/ images")
    x, y = _subset(arrays["x_train"], arrays["y_train"], train_subset, "train_subset")
    xt, yt = _subset(arrays["x_test"], arrays["y_test"], test_subset, "test_subset")
    x = torch.as_tensor(x).permute(0, 3, 1, 2).float() / 255
    xt = torch.as_tensor(xt).permute(0, 3, 1, 2).float() / 255
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x, xt = (x - mean) / std, (xt - mean) / std
    classes = tuple(str(c) for c in arrays["classes"])
    return Dataset(name, "classification", x, torch.as_tensor(y, dtype=torch.int64), xt,
                   torch.as_tensor(yt, dtype=torch.int64), num_classes=len(classes),
                   input_shape=tuple(x.shape[1:]), classes=classes)


def load_imagefolder(path: str | None = None, image_size: int | None = None, train_subset: int | None = None,
                     test_subset: int | None = None, test_fraction: float = 0.1) -> Dataset:
    """Any image-folder directory or .tar.gz of one; classes from the folder names."""
    if path is None:
        raise DataError("data.path: the imagefolder dataset needs a path to a class-folder directory or .tar.gz")
    if image_size is not None:
        positive_int(image_size, "image_size")
    fraction(test_fraction, "test_fraction")
    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"data.path: {source} does not exist")
    return _to_dataset("imagefolder", _decoded(source, image_size), train_subset, test_subset, test_fraction)


CIFAR_NAMES = ("cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar-10-batches-py")


def load_cifar10(path: str | None = None, download: bool = False, train_subset: int | None = None,
                 test_subset: int | None = None) -> Dataset:
    """CIFAR-10: an explicit path, an offline copy in the data directories, or torchvision's download."""
    if not isinstance(download, bool):
        from ..errors import ConfigError
        raise ConfigError(f"data.download: must be true or false, got {download!r}")
    candidates = [Path(path).expanduser()] if path else [d / n for d in data_dirs() for n in CIFAR_NAMES]
    for source in candidates:
        if source.name == "cifar-10-batches-py" and source.is_dir():
            return _to_dataset("cifar10", read_torchvision_cifar(source.parent, False), train_subset, test_subset, 0.1)
        if source.exists():
            return _to_dataset("cifar10", _decoded(source, None), train_subset, test_subset, 0.1)
    if download:
        root = download_dir()
        root.mkdir(parents=True, exist_ok=True)
        return _to_dataset("cifar10", read_torchvision_cifar(root, True), train_subset, test_subset, 0.1)
    where = ", ".join(str(c) for c in candidates)
    raise DataError(f"cifar10: no copy found (looked for {where}); set LRTRANSFER_DATA to a directory holding "
                    f"cifar10-jpeg.tar.gz or cifar-10-batches-py, set data.path, or set data.download = true")
