"""Datasets for search and training: a real default that ships with a dependency, and user data from disk.

- ``digits``: scikit-learn's handwritten digits (1797 images of 8×8, 10 classes, shipped inside scikit-learn),
  upscaled bilinearly to ``image_size`` and repeated to 3 channels; a deterministic, stratified train/val split.
- ``cifar10``: :class:`torchvision.datasets.CIFAR10` from a directory you give (``download=False``: hwnas never
  downloads anything).
- ``imagefolder``: any ``root/train/<class>/*.jpg`` + ``root/val/<class>/*.jpg`` tree.

Every factory is a plain module-level function taking keyword arguments, so NNI can ``nni.trace`` it and a trial
rebuilds the data inside its own process (NNI pickles every argument that is not traced, up to 64 KB, so trial
payloads stay small). A missing path or a malformed dataset raises :class:`hwnas.errors.DataError` naming the
path and what is wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hwnas.errors import DataError

__all__ = ["DATASETS", "DataConfig", "as_tensors", "cifar10", "digits", "image_folder", "load_dataset",
           "make_loaders", "num_classes"]

DATASETS = ("digits", "cifar10", "imagefolder")
_SPLITS = ("train", "val")
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {list(_SPLITS)}")


def digits(split: str = "train", image_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """scikit-learn's digits as a 3-channel image classification dataset.

    Parameters
    ----------
    split : {"train", "val"}
        Which part of the stratified split.
    image_size : int
        Side of the square images, pixels (bilinear upscaling from 8×8).
    val_fraction : float
        Share of each class held out for ``"val"``.
    seed : int
        Seed of the split (the same seed always gives the same split).

    Returns
    -------
    TensorDataset
        ``(x, y)``: float32 ``(N, 3, image_size, image_size)`` normalised with the training split's mean and
        standard deviation, int64 labels in ``0..9``. About 1437 training and 360 validation images at 0.2.
    """
    from sklearn.datasets import load_digits

    _check_split(split)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if int(image_size) < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val_idx = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        val_idx.extend(members[: max(1, int(round(len(members) * val_fraction)))].tolist())
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val_idx] = True
    mean, std = float(images[~is_val].mean()), float(images[~is_val].std())
    pick = is_val if split == "val" else ~is_val
    x = torch.from_numpy((images[pick] - mean) / std).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(int(image_size), int(image_size)), mode="bilinear",
                                        align_corners=False)
    return TensorDataset(x.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(labels[pick]))


def cifar10(root: str | os.PathLike, split: str = "train", image_size: int = 32, augment: bool = True) -> Dataset:
    """CIFAR-10 from ``root`` (the directory holding ``cifar-10-batches-py``), never downloaded.

    Training images get random crops (padding 4) and horizontal flips when ``augment``; both splits are
    normalised with CIFAR-10's channel statistics and resized when ``image_size`` is not 32.
    """
    import torchvision
    from torchvision import transforms as T

    _check_split(split)
    root = Path(root).expanduser()
    if not (root / "cifar-10-batches-py").is_dir():
        raise DataError(f"CIFAR-10 not found: {root} has no 'cifar-10-batches-py' directory "
                        "(extract cifar-10-python.tar.gz there; hwnas never downloads data)")
    steps: list[Any] = []
    if int(image_size) != 32:
        steps.append(T.Resize(int(image_size)))
    if split == "train" and augment:
        steps += [T.RandomCrop(int(image_size), padding=4), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(_CIFAR_MEAN, _CIFAR_STD)]
    try:
        return torchvision.datasets.CIFAR10(str(root), train=split == "train", download=False,
                                            transform=T.Compose(steps))
    except RuntimeError as exc:   # torchvision's "Dataset not found or corrupted"
        raise DataError(f"CIFAR-10 at {root} is unreadable or corrupt: {exc}") from None


def _class_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_folder(root: str | os.PathLike, split: str = "train", image_size: int = 32, augment: bool = True) -> Dataset:
    """An ImageFolder tree ``root/{train,val}/<class>/<image>`` (ImageNet-style preprocessing).

    Training images get a random resized crop and a flip when ``augment``; validation images are resized to
    ``1.14 × image_size`` and centre-cropped. Both splits must have the same class folders.
    """
    import torchvision
    from torchvision import transforms as T

    _check_split(split)
    root = Path(root).expanduser()
    where = root / split
    if not where.is_dir():
        raise DataError(f"image folder: {where} does not exist (expected {root}/train/<class>/... and "
                        f"{root}/val/<class>/...)")
    classes = _class_dirs(where)
    if not classes:
        raise DataError(f"image folder: {where} has no class sub-directories")
    other = root / ("val" if split == "train" else "train")
    if other.is_dir() and _class_dirs(other) != classes:
        raise DataError(f"image folder: the classes of {where} and {other} differ")
    size = int(image_size)
    if split == "train" and augment:
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(size * 1.14))), T.CenterCrop(size)]
    steps += [T.ToTensor(), T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)]
    try:
        return torchvision.datasets.ImageFolder(str(where), transform=T.Compose(steps))
    except (FileNotFoundError, RuntimeError) as exc:   # e.g. "Found no valid file for the classes ..."
        raise DataError(f"image folder {where}: {exc}") from None


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, image_size: int = 32,
                 **kwargs: Any) -> Dataset:
    """Dispatch to :func:`digits`, :func:`cifar10` or :func:`image_folder` by ``name`` (see :data:`DATASETS`)."""
    if name == "digits":
        return digits(split=split, image_size=image_size, **kwargs)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {list(DATASETS)}")
    if root is None:
        raise DataError(f"dataset {name!r} needs a root directory (hwnas never downloads data)")
    fn = cifar10 if name == "cifar10" else image_folder
    return fn(root, split=split, image_size=image_size, **kwargs)


def num_classes(name: str, root: str | os.PathLike | None = None) -> int:
    """Number of classes of a dataset (10 for digits and CIFAR-10; the class folders for an image folder)."""
    if name in ("digits", "cifar10"):
        return 10
    if name != "imagefolder":
        raise DataError(f"unknown dataset {name!r}; available: {list(DATASETS)}")
    if root is None or not (Path(root) / "train").is_dir():
        raise DataError(f"image folder: {root}/train does not exist")
    return len(_class_dirs(Path(root) / "train"))


@dataclass
class DataConfig:
    """Which data to train and validate on.

    Attributes
    ----------
    name : str
        ``"digits"`` (default, ships with scikit-learn), ``"cifar10"`` or ``"imagefolder"``.
    root : str, optional
        Directory of CIFAR-10 or the image folder.
    image_size : int
        Square input side, pixels.
    batch_size : int
        Training batch size (validation uses twice that).
    num_workers : int
        DataLoader worker processes.
    val_fraction, seed : float, int
        Digits split (ignored by the others); ``seed`` also seeds the shuffling.
    """

    name: str = "digits"
    root: str | None = None
    image_size: int = 32
    batch_size: int = 64
    num_workers: int = 0
    val_fraction: float = 0.2
    seed: int = 0

    def dataset(self, split: str) -> Dataset:
        """The ``split`` dataset of this configuration."""
        extra = {"val_fraction": self.val_fraction, "seed": self.seed} if self.name == "digits" else {}
        return load_dataset(self.name, split, root=self.root, image_size=self.image_size, **extra)

    @property
    def num_classes(self) -> int:
        return num_classes(self.name, self.root)


def make_loaders(cfg: DataConfig) -> tuple[DataLoader, DataLoader]:
    """Training (shuffled with a generator seeded by ``cfg.seed``) and validation loaders of ``cfg``.

    Memory is pinned when CUDA is available, so that ``.to(device, non_blocking=True)`` overlaps the copy.
    """
    pin = torch.cuda.is_available()
    gen = torch.Generator().manual_seed(int(cfg.seed))
    train = DataLoader(cfg.dataset("train"), batch_size=cfg.batch_size, shuffle=True, generator=gen,
                       num_workers=cfg.num_workers, pin_memory=pin, drop_last=False,
                       persistent_workers=cfg.num_workers > 0)
    val = DataLoader(cfg.dataset("val"), batch_size=cfg.batch_size * 2, shuffle=False,
                     num_workers=cfg.num_workers, pin_memory=pin, persistent_workers=cfg.num_workers > 0)
    return train, val


def as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a (small) dataset as two tensors ``(x, y)``, e.g. to keep it resident on a GPU."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=512, shuffle=False):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    if not xs:
        raise DataError("as_tensors: the dataset is empty")
    return torch.cat(xs), torch.cat(ys).long()
