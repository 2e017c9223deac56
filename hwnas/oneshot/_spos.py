"""SPOS supernet training under a latency budget (Guo et al., "Single Path One-Shot NAS", ECCV 2020).

Every training step runs one path of the supernet: an architecture drawn uniformly among those within the
latency budget (:class:`hwnas.nas.BudgetedSampler` on the space's :class:`~hwnas.tables.LatencyTable`, the
paper's uniform sampling under a FLOPs constraint with latency in its place). Only that path's weights get
gradients. After training, candidates are scored with inherited weights and BatchNorm statistics recalibrated
per candidate (:class:`SubnetEvaluator`, used as the fitness of :func:`hwnas.oneshot._evolution.evolve`).

The path switch is hwnas's own (:class:`SinglePathSupernet`), not NNI's ``RandomOneShot``: it is a few lines
over the space's modules (stem, the chosen candidate of every ``LayerChoice``, head), keeps the space's
parameter names (so :func:`search_spaces.build_subnet` copies a candidate's weights out unchanged, and
checkpoints are the space's state dict), takes the architecture as an argument instead of mutating modules in
place, and leaves sampling to hwnas (budget-aware, seeded per step so a resumed run draws the same paths).
NNI's one-shot strategy would bring its own training loop and evaluator, a python-``random`` sampler outside
the checkpoint, and a subnet freeze that fails on this stack (see the NNI notes).

Sampling is reproducible and resume-exact by construction: the paths of steps ``256 c .. 256 c + 255`` are
drawn at once (one vectorised call of the sampler) with ``numpy.random.default_rng([seed, 1, c])``, so the
path of step ``t`` is a function of ``(seed, t)`` only; under DDP every rank draws the same path (different
data), which needs ``strategy="ddp_find_unused_parameters_true"``.

The step costs what its path costs (issue 17; ``experiments/benchmarks/oneshot_throughput.py`` times it
against the same paths built as plain modules): paths are drawn 256 at a time (one draw per step cost about 2 ms
of rejection sampling), and the optimizer is :class:`~hwnas.oneshot._path_sgd.PathSGD` with one parameter
group per unit (stem, head, every candidate), which steps and clears only the groups of the path instead of
visiting every parameter of the supernet in Python, with torch's multi-tensor (``foreach``) update on every
device (torch picks it on CUDA only). Training details as in the paper, scaled down: SGD with
momentum and Nesterov off, weight decay on conv/linear weights only, label smoothing, a linear (or cosine)
LR decay per step. During training, validation reports the accuracy of a few fixed architectures within the
budget with the supernet's shared BatchNorm statistics (a cheap progress signal; the search recalibrates).

Observed on digits (32 px, width 0.25, batch 32, SGD 0.02, CPU): every block of the space is a choice block,
so at first each path computes unrelated random features and the loss stays near chance for about 2000 steps
before the paths agree; a fixed architecture learns in under 100. Budget thousands of steps (the paper trains
about 150k), and prefer a schedule that keeps the LR up that long.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from hwnas.errors import ArchitectureError, HwnasError
from hwnas.oneshot._bn import recalibrate_bn
from hwnas.oneshot._path_sgd import PathSGD, unit_param_groups

__all__ = ["SinglePathSupernet", "SposSupernetModule", "SubnetEvaluator", "SupernetConfig"]

Arch = Mapping[str, str]
PATH_CHUNK = 256
"""Training paths drawn per call of the sampler (steps ``PATH_CHUNK * c ..`` from ``default_rng([seed, 1, c])``)."""
SAMPLING_SCHEME = f"chunks of {PATH_CHUNK}, default_rng([seed, 1, chunk])"


class SinglePathSupernet(nn.Module):
    """One path of a chain search space per call: ``forward(x, arch)``.

    Parameters
    ----------
    space : search_spaces.ChainSpace
        An NNI model space of hwnas (``create_space("spos", ...)``), with its ``LayerChoice`` blocks. Held as
        ``self.space``: parameter names are the space's, prefixed by ``space.``.
    """

    def __init__(self, space: nn.Module):
        super().__init__()
        from nni.nas.nn.pytorch import LayerChoice

        self.space = space
        specs = type(space).block_specs(space.config)
        # (label or None, fixed module or {choice: module}); plain python containers, not submodules.
        path: list[tuple[str | None, Any]] = []
        for spec in specs:
            block = getattr(space.blocks, spec.name)
            if spec.label is None:
                path.append((None, block))
            elif isinstance(block, LayerChoice):
                path.append((spec.label, {choice: block[choice] for choice in spec.choices}))
            else:
                raise HwnasError(f"block {spec.name!r} of the space has no candidates (a frozen space?): a "
                                 "supernet needs the space's LayerChoice blocks")
        self._path = path
        self.labels = [label for label, _ in path if label is not None]
        self.choices = {label: list(mods) for label, mods in path if label is not None}

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Logits of ``arch``'s path on ``x`` (``arch`` needs a valid choice for every label)."""
        x = self.space.stem(x)
        for label, block in self._path:
            if label is None:
                x = block(x)
            else:
                module = block.get(arch.get(label))
                if module is None:
                    raise ArchitectureError(f"architecture has no valid choice for {label!r}: "
                                            f"{arch.get(label)!r} not in {list(block)}")
                x = module(x)
        return self.space.head(x)

    def subnet(self, arch: Arch) -> nn.Module:
        """The plain subnet of ``arch`` with a copy of its weights (:func:`search_spaces.build_subnet`)."""
        import search_spaces as ss

        return ss.build_subnet(self.space, dict(arch))

    def compile_targets(self) -> list[nn.Module]:
        """Stem, every candidate and fixed block, head: each compiles once, whatever path is sampled."""
        targets: list[nn.Module] = [self.space.stem]
        for label, block in self._path:
            targets.extend(block.values() if label is not None else [block])
        targets.append(self.space.head)
        return targets


@dataclass
class SupernetConfig:
    """Optimisation of the supernet (the SPOS paper's recipe, scaled down).

    Attributes
    ----------
    lr : float
        Peak learning rate (the paper: 0.5 at batch 1024).
    momentum : float
        SGD momentum.
    weight_decay : float
        On conv and linear weights only (the paper: 4e-5).
    label_smoothing : float
        Cross-entropy label smoothing (the paper: 0.1).
    schedule : str
        ``"linear"`` decay to 0 per step (the paper) or ``"cosine"``.
    warmup_steps : int
        Linear warm-up steps.
    seed : int
        Seed of the path sampling (step ``t``'s path is the ``t % 256``-th of ``default_rng([seed, 1, t // 256])``'s
        draw of 256).
    n_val_archs : int
        Fixed architectures (within the budget) whose accuracy validation reports.
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    schedule: str = "linear"
    warmup_steps: int = 0
    seed: int = 0
    n_val_archs: int = 3

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        if not (self.lr > 0 and self.momentum >= 0 and self.weight_decay >= 0):
            raise ValueError("lr must be positive, momentum and weight_decay non-negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not (isinstance(self.n_val_archs, int) and self.n_val_archs >= 1):
            raise ValueError(f"n_val_archs must be a positive int, got {self.n_val_archs!r}")


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - t if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))


class SposSupernetModule(pl.LightningModule):
    """SPOS supernet training with paths sampled uniformly within a latency budget.

    Parameters
    ----------
    space : search_spaces.ChainSpace
        The search space (its weights are the supernet's).
    sampler : hwnas.nas.BudgetedSampler
        The space's latency table and the budget. The budget is checked (``InfeasibleBudgetError``) here.
    cfg : SupernetConfig, optional
        Optimisation and sampling settings.

    Attributes
    ----------
    supernet : SinglePathSupernet
    val_archs : list of dict
        The fixed architectures validation reports (``val_acc/<i>``; ``val_acc`` is their mean).
    """

    def __init__(self, space: nn.Module, sampler: Any, cfg: SupernetConfig | None = None):
        super().__init__()
        self.cfg = cfg or SupernetConfig()
        self.supernet = SinglePathSupernet(space)
        if self.supernet.labels != list(sampler.table.labels):
            raise ArchitectureError("the latency table was built for another space: its labels differ from the "
                                    "supernet's")
        sampler.check_feasible()
        self.sampler = sampler
        self.val_archs = sampler.sample_many(self.cfg.n_val_archs, np.random.default_rng([self.cfg.seed, 2**31]))
        self._counts = np.zeros((len(self.supernet.labels), max(len(c) for c in self.supernet.choices.values())),
                                dtype=np.int64)
        self._lat_sum, self._lat_n = 0.0, 0
        self._chunk: tuple[int, list[dict[str, str]]] = (-1, [])

    # -- sampling ---------------------------------------------------------------------------------------------------
    def sample_arch(self, step: int) -> dict[str, str]:
        """The path of training step ``step``: uniform within the budget, a function of ``(seed, step)`` only.

        The paths of ``PATH_CHUNK`` consecutive steps are drawn together and kept until a step of another chunk
        is asked for.
        """
        chunk, index = divmod(int(step), PATH_CHUNK)
        if self._chunk[0] != chunk:
            rng = np.random.default_rng([self.cfg.seed, 1, chunk])
            self._chunk = (chunk, self.sampler.sample_many(PATH_CHUNK, rng))
        return dict(self._chunk[1][index])

    @property
    def choice_counts(self) -> dict[str, dict[str, int]]:
        """How often each choice of each label was sampled in training (checkpointed)."""
        return {label: {c: int(self._counts[i, j]) for j, c in enumerate(self.supernet.choices[label])}
                for i, label in enumerate(self.supernet.labels)}

    def compile_targets(self) -> list[nn.Module]:
        return self.supernet.compile_targets()

    # -- training ---------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        return self.supernet(x, arch)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        arch = self.sample_arch(self.global_step)
        logits = self.supernet(x, arch)
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        self.log("train_loss", loss, on_step=True, on_epoch=True)  # converted to a number only when logged
        for i, label in enumerate(self.supernet.labels):
            self._counts[i, self.supernet.choices[label].index(arch[label])] += 1
        self._lat_sum += self.sampler.table.latency(arch)
        self._lat_n += 1
        return loss

    def on_train_epoch_end(self) -> None:
        if self._lat_n:
            self.log("sampled_latency_ms", self._lat_sum / self._lat_n)  # once per epoch: host value
        self._lat_sum, self._lat_n = 0.0, 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        accs = []
        for i, arch in enumerate(self.val_archs):
            acc = (self.supernet(x, arch).argmax(1) == y).float().mean()
            self.log(f"val_acc/{i}", acc, on_epoch=True, batch_size=len(y), sync_dist=True)
            accs.append(acc)
        self.log("val_acc", torch.stack(accs).mean(), on_epoch=True, prog_bar=True, batch_size=len(y),
                 sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        # One group per unit of the supernet: the step visits the path's parameters only (PathSGD).
        groups = unit_param_groups(self.supernet.compile_targets(), self.cfg.weight_decay)
        grouped = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in grouped]
        if rest:   # outside every unit (none in the hwnas spaces): one group each, always active when used
            groups += unit_param_groups([_Holder(p) for p in rest], self.cfg.weight_decay)
        # foreach: torch's default on CUDA only; on a CPU it updates a path's parameters in about 60% of the time
        # of the per-tensor loop, with the same arithmetic (tests/unit/test_path_sgd.py: bit-identical)
        opt = PathSGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum, foreach=True)
        total = int(self.trainer.estimated_stepping_batches)
        warmup, schedule = self.cfg.warmup_steps, self.cfg.schedule

        def factor(step: int) -> float:
            return _lr_factor(step, total, warmup, schedule)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoint ---------------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        budget = self.sampler.budget
        return {"sampling": SAMPLING_SCHEME, "labels": list(self.supernet.labels), "max_ms": float(budget.max_ms),
                "min_ms": None if budget.min_ms is None else float(budget.min_ms), "seed": int(self.cfg.seed),
                "space_config": {k: v for k, v in dataclasses.asdict(self.supernet.space.config).items()}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hwnas_spos"] = {**self._identity(), "counts": torch.from_numpy(self._counts.copy()),
                                    "lat_sum": float(self._lat_sum), "lat_n": int(self._lat_n)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("hwnas_spos")
        if state is None:
            raise HwnasError("the checkpoint was not written by SposSupernetModule (no 'hwnas_spos' entry)")
        mine = self._identity()
        diff = [k for k in mine if state.get(k) != mine[k]]
        if diff:
            raise HwnasError(f"the checkpoint's supernet differs from this run in {diff}: "
                             + ", ".join(f"{k}: checkpoint {state.get(k)!r} vs run {mine[k]!r}" for k in diff))
        self._counts = state["counts"].numpy().astype(np.int64).copy()
        self._lat_sum, self._lat_n = float(state["lat_sum"]), int(state["lat_n"])


class _Holder(nn.Module):
    """One loose parameter as a unit of its own."""

    def __init__(self, p: nn.Parameter):
        super().__init__()
        self.p = p


class SubnetEvaluator:
    """Fitness of a candidate: inherited weights, BatchNorm recalibrated on training batches, validation accuracy.

    Each call builds the candidate's own subnet (:func:`search_spaces.build_subnet` copies its weights), so the
    supernet and the other candidates keep their statistics.

    Parameters
    ----------
    supernet : SinglePathSupernet or search_spaces.ChainSpace
        The trained supernet (or its space).
    bn_batches : iterable
        Training batches (tensors or ``(x, y)``); the first ``n_bn_batches`` are kept on ``device`` once and
        reused for every candidate (every candidate sees the same data).
    val_batches : iterable
        Validation batches ``(x, y)`` (e.g. a loader, iterated once per candidate).
    n_bn_batches : int
        Batches of BatchNorm recalibration per candidate.
    device : torch.device or str, optional
        Where candidates run; the supernet's device when not given.
    recalibrate : bool
        Recalibrate BatchNorm (``False``: use the supernet's shared statistics, for comparison).
    """

    def __init__(self, supernet: nn.Module, bn_batches: Iterable[Any], val_batches: Iterable[Any],
                 n_bn_batches: int = 20, device: torch.device | str | None = None, recalibrate: bool = True):
        import search_spaces as ss

        self.space = supernet.space if isinstance(supernet, SinglePathSupernet) else supernet
        if not isinstance(self.space, ss.ChainSpace):
            raise TypeError(f"supernet must be a SinglePathSupernet or a search space, got {type(supernet).__name__}")
        if not (isinstance(n_bn_batches, int) and n_bn_batches >= 1):
            raise ValueError(f"n_bn_batches must be a positive int, got {n_bn_batches!r}")
        reference = next(iter(self.space.parameters()))
        self.device = torch.device(device) if device is not None else reference.device
        self.recalibrate = recalibrate
        self._val = val_batches
        self._bn: list[torch.Tensor] = []
        for batch in bn_batches:
            if len(self._bn) >= n_bn_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._bn.append(x.to(self.device))
        if recalibrate and not self._bn:
            raise ValueError("SubnetEvaluator got no training batches for BatchNorm recalibration")
        self.evaluations = 0

    def subnet(self, arch: Arch) -> nn.Module:
        """The candidate with inherited weights and (when ``recalibrate``) its own BatchNorm statistics."""
        import search_spaces as ss

        net = ss.build_subnet(self.space, dict(arch)).to(self.device)
        if self.recalibrate:
            recalibrate_bn(net, self._bn)
        return net.eval()

    @torch.no_grad()
    def accuracy(self, net: nn.Module) -> float:
        """Top-1 accuracy of ``net`` on the validation batches (one host synchronisation at the end)."""
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        total = 0
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
               else contextlib.nullcontext())
        with amp:
            for batch in self._val:
                x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
                correct += (net(x).argmax(1) == y).sum()
                total += len(y)
        if total == 0:
            raise ValueError("SubnetEvaluator: the validation batches are empty")
        return int(correct.item()) / total

    def __call__(self, arch: Arch) -> float:
        self.evaluations += 1
        return self.accuracy(self.subnet(arch))
