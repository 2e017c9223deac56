"""hwnas.train: config checks, training on a tiny separable problem, step caps, evaluation, BN recalibration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hwnas.train import TrainConfig, TrainResult, evaluate, recalibrate_bn, train_model


def _blobs(n: int = 96, seed: int = 0) -> TensorDataset:
    """Two well separated Gaussian blobs in 4-d, labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 4, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1) * 2.0
    return TensorDataset(x, y)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("kwargs, match", [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
                                           ({"lr": 0.0}, "lr"), ({"lr": -1.0}, "lr")])
def test_config_rejects_nonsense(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_trains_a_separable_problem_and_counts_steps():
    torch.manual_seed(0)
    model = _mlp()
    res = train_model(model, _blobs(), _blobs(seed=1), TrainConfig(epochs=3, batch_size=16, lr=0.1))
    assert isinstance(res, TrainResult)
    assert res.steps == 3 * 6                                         # 96 / 16 per epoch
    assert res.accuracy >= 0.95 and math.isfinite(res.train_loss) and res.train_loss < 0.3
    assert res.seconds >= 0
    assert set(res.to_dict()) == {"accuracy", "train_loss", "steps", "seconds"}
    assert model.training                                             # left as it was found: train mode


def test_training_is_reproducible_from_the_seed():
    def run(seed):
        torch.manual_seed(123)
        model = _mlp()
        train_model(model, _blobs(), None, TrainConfig(epochs=1, batch_size=16, seed=seed))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_max_steps_caps_training_and_no_val_data_gives_nan():
    res = train_model(_mlp(), _blobs(), None, TrainConfig(epochs=5, batch_size=16, max_steps=4))
    assert res.steps == 4 and math.isnan(res.accuracy) and math.isfinite(res.train_loss)


def test_empty_training_data_is_an_error():
    # Bug report for hwnas/train.py (lead's file): the shuffling DataLoader's RandomSampler raises first
    # ("num_samples should be a positive integer value, but got num_samples=0"), so train_model's own check
    # ("the training dataset is empty") is never reached. Fix: check len(train_data) before building the loader.
    empty = TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        train_model(_mlp(), empty, None)


def test_a_diverged_loss_is_reported():
    class Nan(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) * float("nan")

    with pytest.raises(FloatingPointError, match="diverged"):
        train_model(Nan(), _blobs(), None, TrainConfig(epochs=1, batch_size=32))


def test_evaluate_is_exact_and_restores_the_mode():
    # identity "classifier" on 2-d one-hot-ish inputs: argmax(x) is the prediction
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.2, 0.1]])
    y = torch.tensor([0, 1, 1, 0])
    model = nn.Identity()
    model.train()
    assert evaluate(model, TensorDataset(x, y)) == 0.75
    assert model.training
    assert evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3)) == 0.75
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, TensorDataset(x[:0], y[:0]))


def test_recalibrate_bn_computes_exact_averages_and_restores_state():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3, momentum=0.3)
    model = nn.Sequential(bn)
    model.eval()
    batches = [(torch.randn(8, 3) * 2 + 5,) for _ in range(4)]
    used = recalibrate_bn(model, batches, n_batches=3)
    assert used == 3
    expected_mean = torch.stack([b[0].mean(0) for b in batches[:3]]).mean(0)
    expected_var = torch.stack([b[0].var(0, unbiased=True) for b in batches[:3]]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.3 and not model.training
    assert recalibrate_bn(nn.Sequential(nn.Linear(3, 3)), batches, 3) == 0
    assert recalibrate_bn(model, batches, 0) == 0
