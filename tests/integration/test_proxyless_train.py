"""ProxylessNAS end to end on CPU, small: a SIGKILLed run resumed from ``last.ckpt`` ends bit-identical to an
uninterrupted one, weights_only checkpoints, lambda through Lightning, and the training script on digits."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import TensorDataset

import hwnas
import search_spaces as ss
from hwnas.data import digits
from hwnas.export import read_metadata
from hwnas.nas._latency_loss import LatencyLossConfig
from hwnas.oneshot._proxyless import ProxylessBatches, ProxylessModule, ProxylessSearchConfig
from hwnas.oneshot._trainer import TrainerConfig, fit, make_loader
from tests._kill import run_killed

pytestmark = pytest.mark.slow
SIDE = 16


def _table(cache_dir=None):
    space = ss.create_space("proxyless", input_size=SIDE, num_classes=10, width_mult=0.25)
    return hwnas.LatencyTable.build(space, hwnas.load_latency_predictor("torchscript-cpu-xeon"), cache_dir=cache_dir)


def _data():
    train = digits("train", image_size=SIDE)
    x, y = train.tensors
    return (TensorDataset(x[:256], y[:256]), TensorDataset(x[256:384], y[256:384]),
            digits("val", image_size=SIDE))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return _table(tmp_path_factory.mktemp("tables"))


@pytest.fixture(scope="module")
def data():
    return _data()


class Count(pl.Callback):
    """Counts the training batches a run really trains on."""

    def __init__(self):
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1


def run(table, data, folder=None, resume=False, callbacks=(), lam=1.0, epochs=3, mode="two", max_steps=None,
        every=None):
    weight, arch, val = data
    pl.seed_everything(0, verbose=False)
    space = ss.create_space("proxyless", input_size=SIDE, num_classes=10, width_mult=0.25)
    cfg = ProxylessSearchConfig(loss=LatencyLossConfig(target_ms=table.min_latency(), mode="add#linear", lam=lam),
                                arch_every=2, arch_lr=0.05, warmup_epochs=1, binary_mode=mode, label_smoothing=0.0)
    module = ProxylessModule(space, table, cfg)
    batches = ProxylessBatches(make_loader(weight, 32, train=True, seed=0), make_loader(arch, 32, train=True, seed=1),
                               arch_every=2, warmup_epochs=1)
    trainer_cfg = TrainerConfig(max_epochs=epochs, max_steps=max_steps, accelerator="cpu", progress=False,
                                checkpoint_dir=None if folder is None else str(folder), resume=resume,
                                checkpoint_every_n_steps=every)
    trainer = fit(module, batches, make_loader(val, 128, train=False), trainer_cfg, callbacks=callbacks)
    return module, trainer


#: 8 batches per epoch, 3 epochs, warm-up epoch 0. ``last.ckpt`` at the end of each epoch and every 4 steps; the run
#: is SIGKILLed at the start of step 14 (mid epoch 1, after architecture steps), so the newest checkpoint is the
#: mid-epoch one of step 12 and steps 12-13 are trained again.
EVERY, KILL_AT = 4, 14


def _killed_run(folder, callbacks):
    """The child process of the kill test: the reference run's configuration, with the killer callback."""
    run(_table(), _data(), folder, callbacks=callbacks, every=EVERY)


def test_sigkilled_run_resumed_from_last_ckpt_ends_like_an_uninterrupted_one(table, data, tmp_path):
    full, full_trainer = run(table, data, tmp_path / "full", every=EVERY)
    killed = tmp_path / "killed"
    run_killed("tests.integration.test_proxyless_train:_killed_run", killed, KILL_AT)
    assert not (killed / "on_exception.ckpt").exists()       # a SIGKILL writes nothing on its way out
    ckpt = torch.load(killed / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12 and "generator" in ckpt["proxyless"]
    count = Count()
    resumed, resumed_trainer = run(table, data, killed, resume=True, callbacks=[count], every=EVERY)
    assert count.batches == 24 - 12   # it continued from the checkpoint, it did not start over
    assert resumed_trainer.global_step == full_trainer.global_step == 24
    assert torch.equal(resumed.supernet.alpha, full.supernet.alpha)
    assert resumed.derived_arch() == full.derived_arch()
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("val_acc", "val_loss", "argmax_ms"):
        assert float(resumed_trainer.callback_metrics[key]) == float(full_trainer.callback_metrics[key])
    assert not torch.equal(full.supernet.alpha, run(table, data, epochs=1)[0].supernet.alpha)  # alpha did move
    last = torch.load(tmp_path / "full" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["hyper_parameters"]["search"]["loss"]["mode"] == "add#linear"


def test_large_lambda_lowers_expected_latency_through_lightning(table, data):
    expected = {lam: run(table, data, lam=lam, epochs=2, mode="full")[0].expected_latency() for lam in (0.0, 20.0)}
    assert expected[20.0] < expected[0.0]


def test_training_script_end_to_end_on_digits(tmp_path, capsys):
    from experiments import proxyless_train

    out = tmp_path / "run"
    code = proxyless_train.main(["--out", str(out), "--width-mult", "0.25", "--image-size", str(SIDE),
                                 "--epochs", "2", "--warmup-epochs", "1", "--max-steps", "12", "--batch-size", "32",
                                 "--arch-every", "2", "--loss", "add#linear", "--no-progress", "--bn-batches", "2",
                                 "--json"])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    doc = json.loads((out / "arch.json").read_text())
    arch = doc["arch"]
    assert arch == result["arch"]
    assert doc["space"] == "proxyless" and doc["input_shape"] == [1, 3, SIDE, SIDE]
    assert doc["space_config"]["width_mult"] == 0.25 and doc["space_config"]["num_classes"] == 10
    ss.validate_arch(ss.create_space("proxyless", input_size=SIDE, num_classes=10, width_mult=0.25), arch)
    assert result["table_ms"] == pytest.approx(result["predicted_ms"], rel=1e-6)
    assert 0.0 <= result["val_acc"] <= 1.0 and result["steps"] == 12
    assert "validation accuracy" in printed and "expected latency" in printed
    state = torch.load(out / "subnet.pt", map_location="cpu", weights_only=True)
    subnet = ss.build_subnet("proxyless", arch, config={"input_size": SIDE, "num_classes": 10, "width_mult": 0.25})
    subnet.load_state_dict(state)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    # hwnas.export is part of this package: the derived subnet is always exported, with its trained weights
    assert {k: result["export"][k] for k in ("path", "method")} == {"path": str(out / "model.pt"), "method": "script"}
    assert f"exported {out / 'model.pt'} (script)" in printed
    # the winner is measured on this machine and compared with its prediction, in one line
    assert result["export"]["measured_ms"] > 0 and result["export"]["predicted_ms"] > 0
    assert (f"winner predicted {result['export']['predicted_ms']:.3f} ms, measured "
            f"{result['export']['measured_ms']:.3f} ms (torchscript-cpu, this machine)") in printed
    meta = read_metadata(out / "model.pt")
    assert meta["arch"] == arch and meta["predicted_ms"] == pytest.approx(result["predicted_ms"], rel=1e-9)
    scripted = torch.jit.load(str(out / "model.pt"))
    x = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), subnet.eval()(x), rtol=0, atol=1e-5)
