"""The shared Lightning harness: checkpoints, exact resume, resident loaders, RNG state, configuration."""

from __future__ import annotations

import random

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hwnas.errors import HwnasError
from hwnas.oneshot import _trainer as tr
from hwnas.oneshot._trainer import (EpochSampler, ResidentLoader, TrainerConfig, fit, latest_checkpoint, make_loader,
                                    resolve_precision)


class Tiny(pl.LightningModule):
    """MLP with dropout (draws from the global RNG) and a per-step LR schedule."""

    def __init__(self, total_steps: int = 30):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        self.total_steps = total_steps

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        total = self.total_steps

        def factor(step):
            return 1 - step / (total + 1)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Interrupt(pl.Callback):
    """Raises at the start of the given global step (an interrupted run)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("interrupted for the test")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(100, 8, generator=g), torch.randint(0, 3, (100,), generator=g)


def _run(data, folder, resume=False, callbacks=(), epochs=3, every=None):
    pl.seed_everything(0, verbose=False)
    module = Tiny(total_steps=10 * epochs)
    x, y = data
    train = ResidentLoader([x, y], 10, shuffle=True, seed=1)
    val = ResidentLoader([x, y], 50, shuffle=False)
    cfg = TrainerConfig(max_epochs=epochs, checkpoint_dir=str(folder), resume=resume, progress=False,
                        checkpoint_every_n_steps=every)
    trainer = fit(module, train, val, cfg, callbacks=callbacks)
    return module, trainer


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    module, trainer = _run(data, folder)
    return module, trainer, folder


def test_checkpoint_every_epoch_loads_weights_only(data, tmp_path):
    seen = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch > 0:
                ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
                seen.append(ckpt["global_step"])

    _run(data, tmp_path, callbacks=[Record()])
    assert seen == [10, 20]  # written at the end of epochs 1 and 2 (10 batches each)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)  # torch's safe loader, no pickled objects
    assert ckpt["global_step"] == 30
    rng = next(v["rng"] for v in ckpt["callbacks"].values() if "rng" in v)
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"]["keys"], torch.Tensor)
    assert not (tmp_path / "on_exception.ckpt").exists()


@pytest.mark.parametrize("at, drop_exception_ckpt, every, restart", [(15, False, None, 15), (15, True, None, 10),
                                                                     (20, False, None, 20), (15, True, 4, 12)])
def test_resume_matches_uninterrupted_run(data, tmp_path, reference, at, drop_exception_ckpt, every, restart):
    ref_module, ref_trainer, _ = reference
    with pytest.raises(RuntimeError, match="interrupted for the test"):
        _run(data, tmp_path, callbacks=[Interrupt(at)], every=every)
    assert (tmp_path / "on_exception.ckpt").is_file()
    if drop_exception_ckpt:  # a run killed without a chance to save: back to the newest last.ckpt (the end of
        (tmp_path / "on_exception.ckpt").unlink()   # epoch 1, or the mid-epoch step checkpoint of step 12)
    assert torch.load(latest_checkpoint(tmp_path), weights_only=True)["global_step"] == restart
    module, trainer = _run(data, tmp_path, resume=True, every=every)
    assert trainer.global_step == ref_trainer.global_step == 30
    assert _same_weights(module, ref_module)
    assert float(trainer.callback_metrics["val_acc"]) == float(ref_trainer.callback_metrics["val_acc"])


def test_resume_without_rng_restore_differs(data, tmp_path, reference, monkeypatch):
    """The RNG restore is what makes dropout replay: without it the resumed run diverges (the test can fail)."""
    ref_module, _, _ = reference
    with pytest.raises(RuntimeError):
        _run(data, tmp_path, callbacks=[Interrupt(15)])
    monkeypatch.setattr(tr, "_set_rng_state", lambda state: None)
    module, _ = _run(data, tmp_path, resume=True)
    assert not _same_weights(module, ref_module)


def test_fresh_run_never_resumes_silently(data, tmp_path, reference):
    ref_module, _, _ = reference
    with pytest.raises(RuntimeError):
        _run(data, tmp_path, callbacks=[Interrupt(15)])
    with pytest.warns(UserWarning, match="starting a fresh run"):
        module, trainer = _run(data, tmp_path)  # resume=False: trains from step 0 again
    assert trainer.global_step == 30 and _same_weights(module, ref_module)
    assert not (tmp_path / "on_exception.ckpt").exists()  # a finished run leaves no exception checkpoint


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(HwnasError, match="no last.ckpt or on_exception.ckpt"):
        fit(Tiny(), [], None, TrainerConfig(checkpoint_dir=str(tmp_path), resume=True, progress=False))
    assert latest_checkpoint(tmp_path) is None


def test_resident_loader_order_is_a_function_of_seed_and_epoch():
    x = torch.arange(23)
    loader = ResidentLoader([x, x * 2], 5, shuffle=True, seed=3)
    assert len(loader) == 4  # drop_last for training
    epoch0 = torch.cat([b[0] for b in loader])
    assert len(epoch0) == 20 and len(set(epoch0.tolist())) == 20
    assert torch.equal(torch.cat([b[1] for b in loader]), epoch0 * 2)
    again = torch.cat([b[0] for b in ResidentLoader([x, x], 5, seed=3)])
    assert torch.equal(epoch0, again)
    loader.set_epoch(1)
    epoch1 = torch.cat([b[0] for b in loader])
    assert not torch.equal(epoch0, epoch1)
    loader.skip(2)
    assert torch.equal(torch.cat([b[0] for b in loader]), epoch1[10:])
    assert torch.equal(torch.cat([b[0] for b in loader]), epoch1)  # the skip applies once


def test_resident_loader_validation_keeps_order_and_last_batch():
    x = torch.arange(11)
    loader = ResidentLoader([x], 4, shuffle=False)
    assert len(loader) == 3
    assert torch.equal(torch.cat([b[0] for b in loader]), x)


def test_resident_loader_shards_across_ranks(monkeypatch):
    x = torch.arange(40)
    shards = []
    for rank in range(2):
        monkeypatch.setattr(tr, "_dist", lambda rank=rank: (rank, 2))
        loader = ResidentLoader([x], 5, shuffle=True, seed=0)
        assert len(loader) == 4
        shards.append(set(torch.cat([b[0] for b in loader]).tolist()))
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 40


def test_resident_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        ResidentLoader([torch.zeros(3), torch.zeros(4)], 2)
    with pytest.raises(ValueError, match="batch_size"):
        ResidentLoader([torch.zeros(3)], 0)


def test_epoch_sampler_is_deterministic_per_epoch():
    s = EpochSampler(10, seed=1)
    first = list(s)
    assert sorted(first) == list(range(10)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first


class _Plain(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.full((3, 2, 2), float(i)), i


def test_make_loader_picks_resident_for_tensor_data():
    ds = TensorDataset(torch.zeros(8, 3, 2, 2), torch.zeros(8, dtype=torch.long))
    assert isinstance(make_loader(ds, 4, train=True), ResidentLoader)
    plain = make_loader(_Plain(), 4, train=True, seed=2)
    assert isinstance(plain, DataLoader) and isinstance(plain.sampler, EpochSampler)
    assert isinstance(make_loader(_Plain(), 4, train=False, resident=True), ResidentLoader)


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = tr._rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "rng.pt")
    tr._set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_config_validation_and_precision():
    assert resolve_precision(TrainerConfig(accelerator="cpu")) == "32-true"
    assert resolve_precision(TrainerConfig(accelerator="cuda")) == "bf16-mixed"
    assert resolve_precision(TrainerConfig(accelerator="cpu", precision="64-true")) == "64-true"
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        TrainerConfig(resume=True)
    with pytest.raises(ValueError, match="max_epochs"):
        TrainerConfig(max_epochs=0)
    with pytest.raises(ValueError, match="accelerator"):
        TrainerConfig(accelerator="tpu")
