"""SPOS supernet module under the Lightning harness: a run SIGKILLed mid-epoch and resumed from ``last.ckpt`` ends
bit-identical to an uninterrupted one."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from hwnas.errors import HwnasError
from hwnas.nas import BudgetedSampler, LatencyBudget
from hwnas.oneshot._spos import SposSupernetModule, SupernetConfig
from hwnas.oneshot._trainer import ResidentLoader, TrainerConfig, fit
from tests._kill import run_killed
from tests.unit.test_spos import SIDE, _space, _table

pytestmark = pytest.mark.slow


def _fixtures():
    """(table, budget, data): plain values, so that a child process (``_killed_run``) builds the same ones."""
    table = _table(_space())
    lo, hi = table.min_latency(), table.max_latency()
    g = torch.Generator().manual_seed(0)
    return table, LatencyBudget(lo + 0.3 * (hi - lo)), (torch.randn(48, 3, SIDE, SIDE, generator=g),
                                                        torch.randint(0, 3, (48,), generator=g))


@pytest.fixture(scope="module")
def fixtures():
    return _fixtures()


@pytest.fixture(scope="module")
def table(fixtures):
    return fixtures[0]


@pytest.fixture(scope="module")
def budget(fixtures):
    return fixtures[1]


@pytest.fixture(scope="module")
def data(fixtures):
    return fixtures[2]


#: 48 samples in batches of 16: 3 steps per epoch, 2 epochs. ``last.ckpt`` at the end of each epoch and every 2
#: steps; the run is killed at the start of step 5, so the newest checkpoint is the mid-epoch one of step 4.
EVERY, KILL_AT = 2, 5


def _train(space_seed, table, budget, data, folder, resume=False, callbacks=(), epochs=2, checkpoint_every=None):
    x, y = data
    pl.seed_everything(0, verbose=False)
    module = SposSupernetModule(_space(space_seed), BudgetedSampler(table, budget), SupernetConfig(lr=0.05, seed=0))
    train = ResidentLoader([x, y], 16, shuffle=True, seed=0)
    val = ResidentLoader([x, y], 48, shuffle=False)
    cfg = TrainerConfig(max_epochs=epochs, checkpoint_dir=str(folder), resume=resume, progress=False,
                        log_every_n_steps=1, checkpoint_every_n_steps=checkpoint_every)
    trainer = fit(module, train, val, cfg, callbacks=callbacks)
    return module, trainer


def _killed_run(folder, callbacks):
    """The child process of the kill test: the reference run's configuration, with the killer callback."""
    table, budget, data = _fixtures()
    _train(0, table, budget, data, folder, callbacks=callbacks, checkpoint_every=EVERY)


def test_sigkilled_run_resumed_from_last_ckpt_ends_in_the_same_state(table, budget, data, tmp_path):
    ref, ref_trainer = _train(0, table, budget, data, tmp_path / "ref", checkpoint_every=EVERY)
    assert ref_trainer.global_step == 6
    cut = tmp_path / "cut"
    run_killed("tests.integration.test_spos_resume:_killed_run", cut, KILL_AT)
    assert not (cut / "on_exception.ckpt").exists()          # a SIGKILL writes nothing on its way out
    ckpt = torch.load(cut / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    resumed, trainer = _train(0, table, budget, data, cut, resume=True, checkpoint_every=EVERY)
    assert trainer.global_step == 6
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.choice_counts == ref.choice_counts
    assert sum(ref.choice_counts["s1_b0"].values()) == 6
    assert float(trainer.callback_metrics["val_acc"]) == float(ref_trainer.callback_metrics["val_acc"])
    ckpt = torch.load(tmp_path / "ref" / "last.ckpt", weights_only=True)
    assert ckpt["hwnas_spos"]["max_ms"] == budget.max_ms


def test_resume_with_another_budget_is_refused(table, budget, data, tmp_path):
    _train(0, table, budget, data, tmp_path, epochs=1)
    with pytest.raises(HwnasError, match="max_ms"):
        _train(0, table, LatencyBudget(budget.max_ms * 1.1), data, tmp_path, resume=True)
