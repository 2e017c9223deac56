"""hwnas.data: the digits default, CIFAR-10 and image folders from disk (never downloaded), loaders, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from hwnas.data import DATASETS, DataConfig, as_tensors, cifar10, digits, image_folder, load_dataset, make_loaders, \
    num_classes
from hwnas.errors import DataError, HwnasError


@pytest.fixture(scope="module")
def split():
    return digits("train"), digits("val")


# ----- digits -------------------------------------------------------------------------------------------------------
def test_digits_is_a_stratified_partition_of_sklearn_digits(split):
    from sklearn.datasets import load_digits

    train, val = split
    full = np.bincount(load_digits().target, minlength=10)
    ytr, yva = train.tensors[1].numpy(), val.tensors[1].numpy()
    assert len(train) + len(val) == 1797
    np.testing.assert_array_equal(np.bincount(ytr, minlength=10) + np.bincount(yva, minlength=10), full)
    np.testing.assert_array_equal(np.bincount(yva, minlength=10), np.round(full * 0.2).astype(int))


def test_digits_images_are_normalised_rgb_at_the_asked_size(split):
    train, val = split
    x, y = train.tensors
    assert x.shape == (1438, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])       # grey repeated to 3 channels
    assert abs(float(x.mean())) < 1e-3 and 0.5 < float(x.std()) < 1.2         # the training split's statistics
    assert digits("val", image_size=16).tensors[0].shape == (359, 3, 16, 16)


def test_digits_split_depends_on_the_seed_only(split):
    _, val = split
    again = digits("val", seed=0)
    assert torch.equal(again.tensors[0], val.tensors[0]) and torch.equal(again.tensors[1], val.tensors[1])
    other = digits("val", seed=1)
    assert len(other) == len(val) and not torch.equal(other.tensors[0], val.tensors[0])


@pytest.mark.parametrize("kwargs, match", [({"split": "test"}, "unknown split"),
                                           ({"val_fraction": 0.0}, "val_fraction"),
                                           ({"val_fraction": 1.0}, "val_fraction"),
                                           ({"image_size": 4}, "image_size")])
def test_digits_bad_arguments_are_data_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        digits(**kwargs)


# ----- CIFAR-10 -----------------------------------------------------------------------------------------------------
def test_cifar10_missing_directory_names_it_and_never_downloads(tmp_path):
    with pytest.raises(DataError, match="never downloads") as err:
        cifar10(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    assert not (tmp_path / "nowhere").exists()


def test_cifar10_corrupt_directory_is_a_data_error(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="unreadable or corrupt"):
        cifar10(tmp_path, split="val")
    assert sorted(p.name for p in (tmp_path / "cifar-10-batches-py").iterdir()) == ["data_batch_1"]


def test_cifar10_bad_split(tmp_path):
    with pytest.raises(DataError, match="unknown split"):
        cifar10(tmp_path, split="test")


# ----- image folders ------------------------------------------------------------------------------------------------
def _image_tree(root, classes=("cat", "dog"), per_class=2, splits=("train", "val")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_image_folder_reads_both_splits_at_the_asked_size(tmp_path):
    root = _image_tree(tmp_path)
    train = image_folder(root, "train", image_size=16)
    val = image_folder(root, "val", image_size=16)
    assert len(train) == 4 and len(val) == 4 and train.classes == ["cat", "dog"]
    x, y = val[3]
    assert x.shape == (3, 16, 16) and y == 1
    assert num_classes("imagefolder", root) == 2
    assert DataConfig(name="imagefolder", root=str(root), image_size=16).num_classes == 2


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class sub-directories"):
        image_folder(tmp_path / "empty")
    root = _image_tree(tmp_path / "odd", splits=("train",))
    _image_tree(tmp_path / "odd", classes=("cat", "cow"), splits=("val",))
    with pytest.raises(DataError, match="classes .* differ"):
        image_folder(root, "train")
    (tmp_path / "noimg" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "train" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="noimg"):
        image_folder(tmp_path / "noimg", "train")


# ----- dispatch -----------------------------------------------------------------------------------------------------
def test_load_dataset_dispatches_and_refuses_unknown_or_rootless(tmp_path):
    assert DATASETS == ("digits", "cifar10", "imagefolder")
    assert len(load_dataset("digits", "val", image_size=8)) == 359
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="needs a root directory"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="unknown dataset"):
        num_classes("mnist")
    with pytest.raises(DataError, match="does not exist"):
        num_classes("imagefolder", tmp_path / "missing")
    assert num_classes("digits") == num_classes("cifar10") == 10
    assert issubclass(DataError, HwnasError)


def test_data_config_and_loaders(split):
    cfg = DataConfig(batch_size=100, seed=0)
    assert cfg.num_classes == 10
    train, val = make_loaders(cfg)
    xb, yb = next(iter(train))
    assert xb.shape == (100, 3, 32, 32) and len(train) == 15                     # ceil(1438 / 100)
    assert next(iter(val))[0].shape[0] == 200 and len(val) == 2                   # twice the batch, unshuffled
    assert torch.equal(next(iter(val))[1], split[1].tensors[1][:200])
    again, _ = make_loaders(cfg)
    assert torch.equal(next(iter(again))[1], yb)                                  # shuffling seeded by cfg.seed


def test_as_tensors_of_tensor_and_generic_datasets(tmp_path):
    ds = TensorDataset(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 0]))
    x, y = as_tensors(ds)
    assert x is ds.tensors[0] and y is ds.tensors[1]

    class Pairs(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i % 2

    x, y = as_tensors(Pairs())
    assert x.shape == (5, 2) and y.tolist() == [0, 1, 0, 1, 0] and y.dtype == torch.int64

    class Empty(Pairs):
        def __len__(self):
            return 0

    with pytest.raises(DataError, match="empty"):
        as_tensors(Empty())
