"""SPOS supernet module under the Lightning harness: an interrupted and resumed run ends like an uninterrupted one."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from hwnas.errors import HwnasError
from hwnas.nas import BudgetedSampler, LatencyBudget
from hwnas.oneshot._spos import SposSupernetModule, SupernetConfig
from hwnas.oneshot._trainer import ResidentLoader, TrainerConfig, fit
from tests.unit.test_spos import SIDE, _space, _table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table():
    return _table(_space())


@pytest.fixture(scope="module")
def budget(table):
    lo, hi = table.min_latency(), table.max_latency()
    return LatencyBudget(lo + 0.3 * (hi - lo))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, 3, SIDE, SIDE, generator=g), torch.randint(0, 3, (48,), generator=g)


def _train(space_seed, table, budget, data, folder, resume=False, callbacks=(), epochs=2):
    x, y = data
    pl.seed_everything(0, verbose=False)
    module = SposSupernetModule(_space(space_seed), BudgetedSampler(table, budget), SupernetConfig(lr=0.05, seed=0))
    train = ResidentLoader([x, y], 16, shuffle=True, seed=0)
    val = ResidentLoader([x, y], 48, shuffle=False)
    cfg = TrainerConfig(max_epochs=epochs, checkpoint_dir=str(folder), resume=resume, progress=False,
                        log_every_n_steps=1)
    trainer = fit(module, train, val, cfg, callbacks=callbacks)
    return module, trainer


class _Interrupt(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 4:
            raise RuntimeError("interrupted for the test")


def test_resume_ends_in_the_same_state(table, budget, data, tmp_path):
    ref, ref_trainer = _train(0, table, budget, data, tmp_path / "ref")
    assert ref_trainer.global_step == 6
    with pytest.raises(RuntimeError, match="interrupted"):
        _train(0, table, budget, data, tmp_path / "cut", callbacks=[_Interrupt()])
    resumed, trainer = _train(0, table, budget, data, tmp_path / "cut", resume=True)
    assert trainer.global_step == 6
    a, b = ref.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.choice_counts == ref.choice_counts
    assert sum(ref.choice_counts["s1_b0"].values()) == 6
    assert float(trainer.callback_metrics["val_acc"]) == float(ref_trainer.callback_metrics["val_acc"])
    ckpt = torch.load(tmp_path / "ref" / "last.ckpt", weights_only=True)
    assert ckpt["hwnas_spos"]["max_ms"] == budget.max_ms


def test_resume_with_another_budget_is_refused(table, budget, data, tmp_path):
    _train(0, table, budget, data, tmp_path, epochs=1)
    with pytest.raises(HwnasError, match="max_ms"):
        _train(0, table, LatencyBudget(budget.max_ms * 1.1), data, tmp_path, resume=True)
