"""The one-shot harness's GPU-minded settings, run on the CPU: ``precision="bf16-mixed"`` (CPU autocast),
``channels_last=True`` and ``compile=True`` (inductor's C++ backend), for ProxylessNAS and SPOS.

For each setting: a few steps finish with finite losses; ProxylessNAS's architecture parameters receive gradients
(every label's row moves, the gradient of an architecture batch is finite and nonzero in fp32); a run interrupted
mid-epoch (``on_exception.ckpt``) and resumed ends where an uninterrupted run ends: bit-exactly in fp32, within
``BF16_RTOL``/``BF16_ATOL`` under bf16 autocast (it is exact on this CPU too; the tolerance is what is promised).

``compile=True`` is slow on a small CPU (inductor compiles a C++ kernel file per graph with g++; measured on a
2-vCPU AMD EPYC: 3 SPOS steps with every candidate block compiled took 20 min). The compile tests therefore
compile a subset of the real targets (the stem and the head, through the module's own ``compile_targets``
contract), which runs the same harness path: ``nn.Module.compile`` in place, state-dict keys unchanged, forward and
backward through inductor code, checkpoints written and resumed from compiled modules.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

import hwnas
import search_spaces as ss
from hwnas.nas import BudgetedSampler, LatencyBudget
from hwnas.nas._latency_loss import LatencyLossConfig
from hwnas.oneshot._proxyless import ProxylessBatches, ProxylessModule, ProxylessSearchConfig
from hwnas.oneshot._spos import SposSupernetModule, SupernetConfig
from hwnas.oneshot._trainer import ResidentLoader, TrainerConfig, fit
from tests.unit.test_spos import SIDE as SPOS_SIDE, _space as _spos_space, _table as _spos_table

pytestmark = pytest.mark.slow

PROXYLESS_SIDE = 16
BF16_RTOL, BF16_ATOL = 1e-2, 1e-3   # a resumed bf16-mixed run against an uninterrupted one (weights, alpha)

SETTINGS = {
    "bf16": dict(precision="bf16-mixed"),
    "channels_last": dict(channels_last=True),
    "bf16+channels_last": dict(precision="bf16-mixed", channels_last=True),
    "compile": dict(compile=True),
}
FAST = ["bf16", "channels_last", "bf16+channels_last"]


class Interrupt(pl.Callback):
    """Raises at the start of the ``at``-th training batch of the run (counted from 0): an interrupted run."""

    def __init__(self, at: int):
        self.at, self.seen = at, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen == self.at:
            raise RuntimeError("interrupted for the test")
        self.seen += 1


class Losses(pl.Callback):
    """Every training step's loss (``train_loss`` as logged, or the module's ``last_loss``)."""

    def __init__(self):
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            loss = trainer.callback_metrics.get("train_loss")
        self.values.append(float(loss))


def _compile_subset(module):
    """Compile targets limited to the stem and the head (module docstring)."""
    targets = module.supernet.compile_targets()
    return [targets[0], targets[-1]]


# --- SPOS ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spos_setup():
    table = _spos_table(_spos_space())
    lo, hi = table.min_latency(), table.max_latency()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(48, 3, SPOS_SIDE, SPOS_SIDE, generator=g), torch.randint(0, 3, (48,), generator=g))
    return table, LatencyBudget(lo + 0.3 * (hi - lo)), data


def _spos_run(setup, setting, folder, resume=False, callbacks=(), monkeypatch=None):
    table, budget, (x, y) = setup
    pl.seed_everything(0, verbose=False)
    module = SposSupernetModule(_spos_space(0), BudgetedSampler(table, budget), SupernetConfig(lr=0.05, seed=0))
    if monkeypatch is not None:
        monkeypatch.setattr(module, "compile_targets", lambda: _compile_subset(module))
    cfg = TrainerConfig(max_epochs=2, accelerator="cpu", progress=False, log_every_n_steps=1,
                        checkpoint_dir=str(folder), resume=resume, **SETTINGS[setting])
    losses = Losses()
    trainer = fit(module, ResidentLoader([x, y], 16, shuffle=True, seed=0), None, cfg,
                  callbacks=[losses, *callbacks])
    return module, trainer, losses.values


def _spos_check(setup, setting, tmp_path, monkeypatch=None):
    ref, trainer, losses = _spos_run(setup, setting, tmp_path / "ref", monkeypatch=monkeypatch)
    assert trainer.global_step == 6 and len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses))), losses
    before = _spos_space(0).state_dict()
    moved = [k for k, v in ref.supernet.space.state_dict().items() if v.is_floating_point()
             and not torch.equal(v, before[k])]
    assert moved, "training changed no weight"
    assert all(torch.isfinite(v).all() for v in ref.state_dict().values() if v.is_floating_point())
    if SETTINGS[setting].get("channels_last"):
        convs = [p for p in ref.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="interrupted for the test"):
        _spos_run(setup, setting, cut, callbacks=[Interrupt(4)], monkeypatch=monkeypatch)
    assert (cut / "on_exception.ckpt").is_file()
    resumed, trainer, _ = _spos_run(setup, setting, cut, resume=True, monkeypatch=monkeypatch)
    assert trainer.global_step == 6
    assert resumed.choice_counts == ref.choice_counts
    _same_state(ref, resumed, exact="bf16" not in setting)


def _same_state(ref, resumed, exact):
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if exact or not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(b[k], a[k], rtol=BF16_RTOL, atol=BF16_ATOL, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("setting", FAST)
def test_spos_trains_and_resumes(spos_setup, setting, tmp_path):
    _spos_check(spos_setup, setting, tmp_path)


def test_spos_compiled_trains_and_resumes(spos_setup, tmp_path, monkeypatch):
    _spos_check(spos_setup, "compile", tmp_path, monkeypatch)


# --- ProxylessNAS ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def proxyless_setup(tmp_path_factory):
    space = ss.create_space("proxyless", input_size=PROXYLESS_SIDE, num_classes=10, width_mult=0.25)
    table = hwnas.LatencyTable.build(space, hwnas.load_latency_predictor("torchscript-cpu-xeon"),
                                     cache_dir=tmp_path_factory.mktemp("tables"))
    g = torch.Generator().manual_seed(0)
    side = PROXYLESS_SIDE
    weight = (torch.randn(64, 3, side, side, generator=g), torch.randint(0, 10, (64,), generator=g))
    arch = (torch.randn(32, 3, side, side, generator=g), torch.randint(0, 10, (32,), generator=g))
    return table, weight, arch


def _proxyless_module(table):
    pl.seed_everything(0, verbose=False)
    space = ss.create_space("proxyless", input_size=PROXYLESS_SIDE, num_classes=10, width_mult=0.25)
    cfg = ProxylessSearchConfig(loss=LatencyLossConfig(target_ms=table.min_latency(), mode="mul#log"),
                                arch_every=2, arch_lr=0.05, binary_mode="full", label_smoothing=0.0)
    return ProxylessModule(space, table, cfg)


def _proxyless_run(setup, setting, folder, resume=False, callbacks=(), monkeypatch=None):
    table, weight, arch = setup
    module = _proxyless_module(table)
    if monkeypatch is not None:
        monkeypatch.setattr(module, "compile_targets", lambda: _compile_subset(module))
    batches = ProxylessBatches(ResidentLoader(list(weight), 16, seed=0), ResidentLoader(list(arch), 16, seed=1),
                               arch_every=2)
    cfg = TrainerConfig(max_epochs=2, accelerator="cpu", progress=False, log_every_n_steps=1,
                        checkpoint_dir=str(folder), resume=resume, **SETTINGS[setting])
    trainer = fit(module, batches, None, cfg, callbacks=list(callbacks))
    return module, trainer


def _proxyless_check(setup, setting, tmp_path, monkeypatch=None):
    table, _, arch = setup
    alpha0 = _proxyless_module(table).supernet.alpha.detach().clone()
    ref, trainer = _proxyless_run(setup, setting, tmp_path / "ref", monkeypatch=monkeypatch)
    metrics = trainer.callback_metrics
    for key in ("train_loss", "arch_loss", "arch_ce", "expected_ms"):
        assert torch.isfinite(metrics[key]), (key, metrics[key])
    alpha = ref.supernet.alpha.detach()
    assert alpha.dtype == torch.float32 and torch.isfinite(alpha).all()
    # 8 weight steps, 4 architecture steps ("full": every label's row gets a gradient, so every row moves)
    rows_moved = (alpha - alpha0).masked_fill(~ref.supernet.mask, 0).abs().amax(dim=1) > 0
    assert bool(rows_moved.all()), rows_moved
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="interrupted for the test"):
        _proxyless_run(setup, setting, cut, callbacks=[Interrupt(5)], monkeypatch=monkeypatch)
    assert (cut / "on_exception.ckpt").is_file()
    resumed, _ = _proxyless_run(setup, setting, cut, resume=True, monkeypatch=monkeypatch)
    _same_state(ref, resumed, exact="bf16" not in setting)
    assert resumed.derived_arch() == ref.derived_arch()
    # one more architecture gradient under the same autocast (after the comparison: its forward in train mode
    # updates BatchNorm statistics): fp32, finite, nonzero on every label
    x, y = arch[0][:8], arch[1][:8]
    if SETTINGS[setting].get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in setting)
    with amp:
        grad, info = ref.supernet.train().arch_gradient(x, y, ref.latency_loss, "full")
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert bool((grad.abs().amax(dim=1) > 0).all())
    assert info["expected_ms"].dtype == torch.float32 and torch.isfinite(info["loss"])


@pytest.mark.parametrize("setting", FAST)
def test_proxyless_trains_and_resumes(proxyless_setup, setting, tmp_path):
    _proxyless_check(proxyless_setup, setting, tmp_path)


def test_proxyless_compiled_trains_and_resumes(proxyless_setup, tmp_path, monkeypatch):
    _proxyless_check(proxyless_setup, "compile", tmp_path, monkeypatch)
