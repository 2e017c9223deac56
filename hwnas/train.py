"""A plain trainer for one network: what each trial of a multi-trial search runs.

One-shot supernets have their own Lightning harness (:mod:`hwnas.oneshot`); this module trains a single,
fixed network for a few epochs and evaluates it, with nothing but torch: SGD with Nesterov momentum, a cosine
learning-rate schedule over all steps, cross-entropy (optionally label-smoothed), seeded shuffling.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["TrainConfig", "TrainResult", "evaluate", "recalibrate_bn", "train_model"]


@dataclass
class TrainConfig:
    """How one network is trained: the optimisation hyper-parameters of :func:`train_model`.

    Two names on purpose: :class:`hwnas.oneshot.TrainerConfig` says how Lightning runs a supernet (devices,
    precision, checkpoints, resume), not how a network is optimised; the one-shot modules take their
    optimiser settings from their own configs (:class:`hwnas.oneshot.SupernetConfig`,
    :class:`hwnas.oneshot.ProxylessSearchConfig`). A trial of a multi-trial search needs only this one.

    Attributes
    ----------
    epochs : int
        Passes over the training data.
    batch_size : int
        Training batch size.
    lr : float
        Peak learning rate of SGD (cosine decay to 0 over all steps).
    momentum, weight_decay : float
        SGD momentum (Nesterov) and L2 weight decay (not applied to BatchNorm and biases).
    label_smoothing : float
        Cross-entropy label smoothing.
    seed : int
        Seeds the shuffling and dropout.
    device : str
        ``"cpu"``, ``"cuda"``, ...
    max_steps : int, optional
        Stop after this many optimiser steps (for quick runs and tests).
    bn_recalibration_batches : int
        Before evaluating, recompute BatchNorm running statistics as exact averages over this many training
        batches with the final weights (0: keep the running averages). Short trainings need it: running
        averages taken while the weights still move fast lag behind, and eval-mode accuracy collapses.
    """

    epochs: int = 2
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "cpu"
    max_steps: int | None = None
    bn_recalibration_batches: int = 10

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`: validation ``accuracy`` (top-1, in [0, 1]), mean ``train_loss`` of the
    last epoch, optimiser ``steps`` and wall ``seconds``."""

    accuracy: float
    train_loss: float
    steps: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "train_loss": self.train_loss, "steps": self.steps,
                "seconds": self.seconds}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_model(model: nn.Module, train_data: Dataset, val_data: Dataset | None, cfg: TrainConfig | None = None,
                progress: bool = False) -> TrainResult:
    """Train ``model`` in place on ``train_data`` and evaluate it on ``val_data``.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits.
    train_data, val_data : Dataset
        ``(image, label)`` datasets; ``val_data=None`` skips evaluation (accuracy is NaN).
    cfg : TrainConfig
    progress : bool
        Show a tqdm bar over the steps.

    Returns
    -------
    TrainResult
    """
    cfg = cfg or TrainConfig()
    device = torch.device(cfg.device)
    if len(train_data) == 0:
        raise ValueError("train_model: the training dataset is empty")
    gen = torch.Generator().manual_seed(int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                        pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise ValueError("train_model: the training dataset is empty")
    total = cfg.epochs * len(loader)
    if cfg.max_steps is not None:
        total = min(total, int(cfg.max_steps))
    model.to(device).train()
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="train", unit="step", leave=False)
    start, steps, last_loss = time.perf_counter(), 0, float("nan")
    for _ in range(cfg.epochs):
        running, count = torch.zeros((), device=device), 0
        for x, y in loader:
            if steps >= total:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach() * len(y)
            count += len(y)
            steps += 1
            if bar is not None:
                bar.update(1)
        if count:
            last_loss = float(running) / count
        if steps >= total:
            break
    if bar is not None:
        bar.close()
    if not math.isfinite(last_loss):
        raise FloatingPointError(f"train_model: the training loss diverged ({last_loss}); lower the learning rate")
    if cfg.bn_recalibration_batches > 0:
        recalibrate_bn(model, loader, cfg.bn_recalibration_batches, device=cfg.device)
    acc = evaluate(model, val_data, device=cfg.device) if val_data is not None else float("nan")
    return TrainResult(accuracy=acc, train_loss=last_loss, steps=steps, seconds=time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256, device: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``data`` (a dataset or a loader), in [0, 1]; eval mode, no gradients."""
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.to(device).eval()
    correct, seen = torch.zeros((), dtype=torch.long, device=device), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        correct += (model(x).argmax(dim=1) == y).sum()
        seen += len(y)
    model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the dataset is empty")
    return int(correct) / seen


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Any, n_batches: int, device: str = "cpu") -> int:
    """Reset every BatchNorm's running statistics and recompute them as exact averages over ``n_batches`` batches.

    The work is :func:`hwnas.oneshot.recalibrate_bn`'s (one behaviour: only the BatchNorm layers in train mode,
    no gradients, cumulative average ``momentum=None``, momenta restored; no batches is an error), in fp32; this
    wrapper adds the training loop's conventions: ``n_batches <= 0`` turns recalibration off, the model's mode is
    restored, and the number of batches used is returned.

    Parameters
    ----------
    model : nn.Module
        The trained network, on ``device``.
    batches : iterable
        Training batches ``(x, y, ...)``.
    n_batches : int
        Use at most this many; ``<= 0``: do nothing.
    device : str
        Where each input is moved first.

    Returns
    -------
    int
        Batches used (0 when off or the model has no BatchNorm).

    Raises
    ------
    ValueError
        ``batches`` yielded nothing (the statistics were reset and nothing was measured).
    """
    from hwnas.oneshot import batchnorm_layers, recalibrate_bn as recalibrate

    if n_batches <= 0 or not batchnorm_layers(model):
        return 0
    drawn = 0

    def counted() -> Any:
        nonlocal drawn
        for batch in batches:
            drawn += 1
            yield batch

    was_training = model.training
    try:
        recalibrate(model, counted(), int(n_batches), device=device, autocast=False)
    finally:
        model.train(was_training)
    return min(drawn, int(n_batches))   # the loop draws one batch past the last it uses
