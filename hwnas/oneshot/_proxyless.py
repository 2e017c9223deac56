"""ProxylessNAS one-shot training with an exact differentiable latency loss, as a Lightning module.

Design: an hwnas Lightning module, not NNI's ``Proxyless`` strategy with a penalty. NNI 3.0's strategy calls its
penalty with ``export_probs()`` (Python floats), so a graph-keeping penalty would have to reach around the strategy
to the mixed layers' parameters; and the stock pipeline cannot be made fast: its ``_ProxylessFunction.backward``
checks ``needs_input_grad`` of the wrong argument and so runs every other candidate of every layer in *every*
backward pass, weight steps included; every step also runs an architecture step on a second (validation) batch;
and its resume loads checkpoints in a way torch >= 2.6 rejects (fixed by :func:`hwnas.nas.allowlisted_checkpoints`).
Here instead:

- the space stays an unchanged NNI ``ModelSpace`` inside :class:`ProxylessSupernet` (so
  :func:`search_spaces.build_subnet` copies the derived subnet's trained weights out of it);
- weight steps run one sampled path with a plain backward (no architecture work at all);
- every ``arch_every`` steps (reference default 5) an architecture step on a held-out batch: the binary-gate
  estimator for the cross-entropy (:meth:`ProxylessSupernet.binary_gate_grad`) plus the *exact* gradient of the
  latency term of :class:`~hwnas.nas.LatencyLoss` (autograd through ``softmax(alpha)``), Adam on ``alpha``;
- a checkpoint is plain tensors and numbers (sampling generator state included): it loads with
  ``weights_only=True``, and a resumed run repeats an uninterrupted one (:class:`ProxylessBatches` derives the
  architecture-batch stream from the position in training, not from history).

Training uses the shared harness (:mod:`hwnas.oneshot._trainer`): bf16 autocast and channels_last on CUDA,
resident data for small datasets, metrics accumulated on the device (the only host synchronisation is one small
copy of the probabilities after each architecture step), ``compile_targets`` for per-block ``torch.compile``,
DDP through Lightning (``strategy="ddp_find_unused_parameters_true"``: the architecture gradient is all-reduced
by hand because it bypasses autograd's backward).

Defaults follow the reference search script (mit-han-lab/proxylessnas ``search/imagenet_arch_search.py``):
Adam on ``alpha`` with lr 1e-3, betas (0, 0.999), eps 1e-8, no weight decay; ``alpha ~ N(0, 1e-3)``; an
architecture step every 5 weight steps, ``full_v2`` binary gradients (``binary_mode="full"``); SGD with Nesterov
momentum 0.9, weight decay 4e-5, label smoothing 0.1, cosine learning rate (one cosine over the whole run here,
warm-up included, where the reference restarts it after its warm-up). Its 40 warm-up epochs (weights only) are
``warmup_epochs``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from hwnas.nas import LatencyLoss, LatencyLossConfig

from ._proxyless_supernet import BINARY_MODES, ProxylessSupernet

__all__ = ["ProxylessBatches", "ProxylessModule", "ProxylessSearchConfig"]


@dataclass
class ProxylessSearchConfig:
    """Hyper-parameters of :class:`ProxylessModule` (defaults: the reference search script; module docstring).

    Attributes
    ----------
    loss : LatencyLossConfig
        Target latency (ms) and form of the latency loss.
    lr, momentum, nesterov, weight_decay, label_smoothing : float / bool
        SGD of the supernet weights (cosine schedule to 0 over the run, per step).
    arch_lr, arch_betas, arch_eps, arch_weight_decay : float
        Adam of the architecture parameters.
    arch_init_std : float
        ``alpha ~ N(0, arch_init_std)``.
    arch_every : int
        An architecture step every this many weight steps (on an architecture batch of :class:`ProxylessBatches`).
    binary_mode : {"full", "two"}
        Candidates priced per architecture step: all (reference ``full_v2``) or two sampled ones (paper, memory).
    warmup_epochs : int
        Epochs of weight training only (no architecture steps).
    seed : int
        Seed of ``alpha`` and of path sampling.
    """

    loss: LatencyLossConfig
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    arch_lr: float = 1e-3
    arch_betas: tuple[float, float] = (0.0, 0.999)
    arch_eps: float = 1e-8
    arch_weight_decay: float = 0.0
    arch_init_std: float = 1e-3
    arch_every: int = 5
    binary_mode: str = "full"
    warmup_epochs: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.loss, Mapping):
            self.loss = LatencyLossConfig(**self.loss)
        if not isinstance(self.loss, LatencyLossConfig):
            raise TypeError(f"loss must be a LatencyLossConfig, got {type(self.loss).__name__}")
        if self.binary_mode not in BINARY_MODES:
            raise ValueError(f"binary_mode must be one of {list(BINARY_MODES)}, got {self.binary_mode!r}")
        if not (isinstance(self.arch_every, int) and self.arch_every >= 1):
            raise ValueError(f"arch_every must be a positive int, got {self.arch_every!r}")
        if not (isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs must be a non-negative int, got {self.warmup_epochs!r}")
        for name in ("lr", "arch_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        self.arch_betas = (float(self.arch_betas[0]), float(self.arch_betas[1]))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for ``save_hyperparameters`` and JSON)."""
        out = dataclasses.asdict(self)
        out["arch_betas"] = list(self.arch_betas)
        return out


# --- data -----------------------------------------------------------------------------------------------------------
def _set_epoch(loader: Any, epoch: int) -> None:
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and callable(getattr(obj, "set_epoch", None)):
            obj.set_epoch(epoch)


def _sharded(loader: Any) -> Any:
    """Under DDP, a ``DataLoader`` whose sampler is not distributed gets a per-rank shard of it."""
    from torch.utils.data import DataLoader, DistributedSampler

    if not (isinstance(loader, DataLoader) and torch.distributed.is_available()
            and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return loader
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

    sampler = DistributedSamplerWrapper(loader.sampler, shuffle=False, drop_last=loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      persistent_workers=loader.persistent_workers)


def _iterate(loader: Any, start: int) -> Iterator[Any]:
    if start and callable(getattr(loader, "skip", None)):
        loader.skip(start)
        return iter(loader)
    return itertools.islice(iter(loader), start, None)


class ProxylessBatches:
    """Training data of ProxylessNAS: every weight batch, plus an architecture batch every ``arch_every``-th step.

    Yields ``{"train": batch}`` or, at steps ``i`` of an epoch with ``(i + 1) % arch_every == 0`` from epoch
    ``warmup_epochs`` on, ``{"train": batch, "arch": arch_batch}``. Architecture batches come from ``arch`` (a
    held-out split, as in ProxylessNAS), cycled; its k-th pass uses ``set_epoch(k)``. Which architecture batch
    comes at which step is a function of (epoch, step) only, so a run resumed mid-epoch (Lightning calls
    :meth:`skip` through :class:`ProxylessModule`) sees the same batches as an uninterrupted one when the
    loaders' orders depend only on their epoch (:class:`~hwnas.oneshot._trainer.ResidentLoader`,
    ``EpochSampler``). Architecture batches are only loaded when used.

    Parameters
    ----------
    train, arch : iterable with ``__len__``
        Loaders of weight batches and architecture batches (e.g. :func:`~hwnas.oneshot._trainer.make_loader`).
    arch_every : int
        Architecture batch interval in steps.
    warmup_epochs : int
        Epochs without architecture batches.
    """

    def __init__(self, train: Any, arch: Any, arch_every: int = 5, warmup_epochs: int = 0):
        if len(arch) < 1 or len(train) < 1:
            raise ValueError(f"ProxylessBatches needs non-empty loaders (train: {len(train)} batches, arch: "
                             f"{len(arch)} batches)")
        self.train, self.arch = train, arch
        self.arch_every, self.warmup_epochs = int(arch_every), int(warmup_epochs)
        self.epoch = 0
        self._skip = 0

    @property
    def sampler(self) -> "ProxylessBatches":
        """What Lightning calls ``set_epoch`` on (the object itself)."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (forwarded to the training loader)."""
        self.epoch = int(epoch)

    def skip(self, n_batches: int) -> None:
        """Start the next iteration at batch ``n_batches`` of the epoch (mid-epoch resume)."""
        self._skip = max(0, int(n_batches))

    def __len__(self) -> int:
        return len(self.train)

    def to(self, device: Any) -> "ProxylessBatches":
        """Place resident loaders without a device yet (:class:`ResidentLoader`) on ``device``."""
        for inner in (self.train, self.arch):
            if callable(getattr(inner, "to", None)) and getattr(inner, "device", False) is None:
                inner.to(device)
        return self

    def _arch_before(self, epoch: int, step: int) -> int:
        """Architecture batches used before step ``step`` of epoch ``epoch``."""
        if epoch < self.warmup_epochs:
            return 0
        per_epoch = len(self.train) // self.arch_every
        return (epoch - self.warmup_epochs) * per_epoch + step // self.arch_every

    def _arch_stream(self, position: int) -> Iterator[Any]:
        arch = _sharded(self.arch)
        cycle, offset = divmod(position, len(arch))
        while True:
            _set_epoch(arch, cycle)
            yield from _iterate(arch, offset)
            cycle, offset = cycle + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start, self._skip = self._skip, 0
        train = _sharded(self.train)
        _set_epoch(train, self.epoch)
        stream = self._arch_stream(self._arch_before(self.epoch, start)) if self.epoch >= self.warmup_epochs else None
        for i, batch in enumerate(_iterate(train, start), start=start):
            if stream is not None and (i + 1) % self.arch_every == 0:
                yield {"train": batch, "arch": next(stream)}
            else:
                yield {"train": batch}


# --- module ---------------------------------------------------------------------------------------------------------
class ProxylessModule(pl.LightningModule):
    """ProxylessNAS search on a chain space toward a target latency (module docstring).

    Parameters
    ----------
    space : ChainSpace
        The search space (e.g. ``search_spaces.create_space("proxyless", input_size=32, num_classes=10)``).
    table : LatencyTable
        Its latency table on the target predictor (labels, choices and per-choice ms).
    config : ProxylessSearchConfig
        Hyper-parameters (the target latency is ``config.loss.target_ms``).

    Notes
    -----
    Manual optimisation: ``training_step`` takes ``{"train": (x, y)[, "arch": (x, y)]}`` (from
    :class:`ProxylessBatches`) or a plain ``(x, y)`` (weights only). Epoch metrics (accumulated on the device):
    ``train_loss``, ``arch_loss``, ``arch_ce``, ``expected_ms``, and from validation (the current most probable
    architecture, BatchNorm on batch statistics as the reference validates, running statistics untouched):
    ``val_acc``, ``val_loss``; plus ``argmax_ms`` (table latency of that architecture).
    """

    def __init__(self, space: nn.Module, table: Any, config: ProxylessSearchConfig):
        super().__init__()
        self.automatic_optimization = False
        self.config = config
        self.table = table
        self.supernet = ProxylessSupernet(space, table.labels, table.choices, init_std=config.arch_init_std,
                                          seed=config.seed)
        self.latency_loss = LatencyLoss(table, config.loss)
        self.save_hyperparameters({"search": config.to_dict(), "table": table.metadata})
        self._bn_momenta: list[tuple[nn.Module, Any]] = []

    # -- interface --------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: Mapping[str, str] | None = None) -> torch.Tensor:
        """Logits of ``arch`` (default: the current most probable architecture)."""
        return self.supernet(x, self.supernet.argmax() if arch is None else self.supernet.indices(dict(arch)))

    def derived_arch(self) -> dict[str, str]:
        """The most probable architecture (argmax of ``alpha`` per label)."""
        return self.supernet.arch()

    def expected_latency(self) -> float:
        """Expected latency under ``softmax(alpha)``, ms (host float: synchronises)."""
        with torch.no_grad():
            return float(self.latency_loss.expected_latency(self.supernet.alpha.detach().double()))

    def arch_probs(self) -> dict[str, dict[str, float]]:
        """Label → {choice: probability} (host floats)."""
        p = self.supernet.probs().detach().cpu().tolist()
        return {k: dict(zip(self.supernet.choices[k], p[i])) for i, k in enumerate(self.supernet.labels)}

    def compile_targets(self) -> list[nn.Module]:
        """Per-block compile targets for the harness (the path changes every step)."""
        return self.supernet.compile_targets()

    # -- optimisation -----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        c = self.config
        decay, no_decay = [], []
        for name, p in self.supernet.space.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        weights = torch.optim.SGD([{"params": decay, "weight_decay": c.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0)
        arch = torch.optim.Adam([self.supernet.alpha], lr=c.arch_lr, betas=c.arch_betas, eps=c.arch_eps,
                                weight_decay=c.arch_weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        cosine = torch.optim.lr_scheduler.LambdaLR(weights, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total)
                                                                                              / total)))
        return [weights, arch], [{"scheduler": cosine, "interval": "step"}]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, Mapping):
            train, arch = batch["train"], batch.get("arch")
        else:
            train, arch = batch, None
        w_opt, a_opt = self.optimizers()
        if arch is not None and self.current_epoch >= self.config.warmup_epochs:
            self._arch_step(arch, a_opt.optimizer)
        x, y = train
        logits = self.supernet(x, self.supernet.sample())
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
        w_opt.zero_grad(set_to_none=True)   # unsampled candidates keep grad None: no decay, no momentum step
        self.manual_backward(loss)
        w_opt.step()
        self.lr_schedulers().step()
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)

    def _arch_step(self, batch: Any, optimizer: torch.optim.Optimizer) -> None:
        x, y = batch
        net = self.supernet
        grad, info = net.arch_gradient(x, y, self.latency_loss, self.config.binary_mode)
        if self.trainer.world_size > 1:
            grad = self.trainer.strategy.reduce(grad, reduce_op="mean")
        before = net.alpha.detach().clone() if info["involved"] is not None else None
        net.alpha.grad = grad
        optimizer.step()
        net.alpha.grad = None
        if info["involved"] is not None:
            net.rescale_two(before, info["involved"])
        net.refresh_host_probs()
        for key in ("loss", "ce", "expected_ms"):
            self.log("arch_" + key if key != "expected_ms" else key, info[key], on_step=False, on_epoch=True,
                     batch_size=len(y), sync_dist=True)

    # -- validation: the current most probable architecture ---------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        # Batch statistics (as the reference validates), running statistics left as they are (momentum 0).
        self._bn_momenta = [(m, m.momentum) for m in self.supernet.modules()
                            if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m, _ in self._bn_momenta:
            m.momentum = 0.0
            m.train()
        self._val_indices = self.supernet.argmax()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.supernet(x, self._val_indices)
        n = len(y)
        self.log("val_loss", F.cross_entropy(logits, y), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True, batch_size=n,
                 sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        for m, momentum in self._bn_momenta:
            m.momentum = momentum
        self._bn_momenta = []
        self.log("argmax_ms", float(self.table.latency(self.supernet.arch(self._val_indices))), sync_dist=True)

    # -- checkpoints and resume -------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        if isinstance(loader, ProxylessBatches):
            loader.to(self.trainer.strategy.root_device)
            if self.trainer.fit_loop.restarted_mid_epoch:
                # processed, not completed: see hwnas.oneshot._trainer._Harness.on_train_start
                loader.skip(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        self.supernet.refresh_host_probs()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["proxyless"] = {"generator": self.supernet.generator.get_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("proxyless")
        if state is not None:
            self.supernet.generator.set_state(state["generator"])
        self.supernet._host_probs = None   # re-derived from the restored alpha
