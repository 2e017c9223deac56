"""The shared Lightning training harness of the one-shot methods (SPOS, ProxylessNAS).

Interface (what the one-shot modules code against)
--------------------------------------------------
- :class:`TrainerConfig` — dataclass: ``max_epochs=1, max_steps=None, accelerator="auto", devices=1,
  num_nodes=1, strategy="auto", precision=None, channels_last=None, compile=False, checkpoint_dir=None,
  resume=False, seed=0, progress=True, log_every_n_steps=50, checkpoint_every_n_steps=None``.
  ``precision=None``: ``"bf16-mixed"`` on CUDA, else ``"32-true"``; ``channels_last=None``: on CUDA only.
- :func:`make_trainer` ``(cfg, callbacks=()) -> pytorch_lightning.Trainer`` — a checkpoint (``last.ckpt``) at
  the end of every epoch (and every ``checkpoint_every_n_steps``), ``on_exception.ckpt`` when training is
  interrupted (an exception, Ctrl+C, SIGTERM), RNG states in every checkpoint, channels_last and optional
  ``nn.Module.compile`` applied to the module, no sanity-check validation.
- :func:`fit` ``(module, train_loader, val_loader=None, cfg) -> Trainer`` — seeds everything with ``cfg.seed``,
  resumes from the newest checkpoint of ``cfg.checkpoint_dir`` when ``cfg.resume`` (a clear
  :class:`~hwnas.errors.HwnasError` when there is none), loads checkpoints with ``weights_only=True``.
- :func:`make_loader` ``(dataset, batch_size, train=..., seed=...)`` — a :class:`ResidentLoader` for in-memory
  tensor datasets (the whole dataset is copied once to the training device; batches are index gathers there,
  no host-device copy per step), otherwise a ``DataLoader`` with pinned memory (on CUDA machines), a
  per-epoch seeded sampler and channels_last batches, so Lightning's non-blocking copies overlap compute.
- :func:`latest_checkpoint` ``(checkpoint_dir) -> Path | None``.

Module contract: any ``LightningModule`` works. To make ``compile=True`` compile something smaller than the
whole module (a supernet whose path changes every step compiles per candidate block), define
``compile_targets(self) -> list[nn.Module]``. Keep ``save_hyperparameters`` to plain values (numbers,
strings, lists, dicts: e.g. ``dataclasses.asdict(cfg)``) so checkpoints load with ``weights_only=True``.

Exact resume
------------
A run interrupted and resumed from the same seed ends in the same state as an uninterrupted one when:
the data order does not depend on history (:class:`ResidentLoader` and :class:`EpochSampler` permute with a
generator seeded by ``(seed, epoch)``; Lightning calls their ``set_epoch``); the global RNGs (torch CPU and
CUDA, numpy, python; e.g. dropout) are checkpointed as tensors and lists and restored on load; any sampling
the module does itself is either derived from ``(seed, global_step)`` or checkpointed by the module. Mid-epoch
resume (from ``on_exception.ckpt`` or a step checkpoint) skips the batches already trained on for a
:class:`ResidentLoader`; for a ``DataLoader`` it is exact only from an end-of-epoch checkpoint. LR schedulers
are Lightning's business and resume exactly (checked for a per-step ``LambdaLR`` and a per-epoch ``StepLR``).
Without ``resume`` a run starts fresh and removes the checkpoints an earlier run left in ``checkpoint_dir``; it
never resumes silently (Lightning does, with its ``OnExceptionCheckpoint`` callback: hwnas uses its own).

Limitations: the tests run on CPU (tests/integration/test_oneshot_modes.py: bf16-mixed, channels_last and
``compile=True`` on CPU; tests/integration/test_oneshot_ddp.py: DDP with two gloo processes, both methods, the
ranks identical and a SIGKILLed rank's checkpoint resumed to the uninterrupted state); CUDA-only parts (resident
data on the GPU, NCCL, several GPUs) are not tested (``experiments/gpu/run.sh`` runs the single-GPU paths).

GPU use: bf16 autocast (Lightning's ``"bf16-mixed"``), channels_last weights and inputs (by default on CUDA
only; ``channels_last=True`` on the CPU too), no per-step host synchronisation in the harness itself (the
progress bar refreshes every ``log_every_n_steps`` steps; modules should log per-step values without
``prog_bar`` and accumulate metrics on the device). Multi-GPU and multi-node through Lightning's strategies
(``devices``, ``num_nodes``, ``strategy="ddp"``); a single-path supernet needs ``"ddp_find_unused_parameters_true"``.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from hwnas.errors import HwnasError

__all__ = ["EpochSampler", "ResidentLoader", "TrainerConfig", "fit", "latest_checkpoint", "make_loader",
           "make_trainer", "resolve_precision"]

LAST = "last.ckpt"
ON_EXCEPTION = "on_exception.ckpt"
_RESIDENT_MAX_BYTES = 4 << 30


@dataclass
class TrainerConfig:
    """How to train: devices, precision, checkpoints, seed.

    Attributes
    ----------
    max_epochs : int
        Epochs to train.
    max_steps : int, optional
        Stop after this many optimizer steps (``None``: no limit).
    accelerator : str
        ``"auto"`` (CUDA when available), ``"gpu"``, ``"cuda"`` or ``"cpu"``.
    devices : int or str
        Devices per node (``"auto"`` for all).
    num_nodes : int
        Nodes (multi-node DDP).
    strategy : str
        Lightning strategy (``"auto"``, ``"ddp"``, ``"ddp_find_unused_parameters_true"``, ...).
    precision : str, optional
        Lightning precision; ``None``: ``"bf16-mixed"`` on CUDA, ``"32-true"`` otherwise.
    channels_last : bool, optional
        Weights and image batches in channels_last memory format; ``None``: on CUDA only.
    compile : bool or str
        ``torch.compile`` the ``compile_targets()`` (else the whole module); a string names the backend.
    checkpoint_dir : str, optional
        Folder of ``last.ckpt`` / ``on_exception.ckpt`` and the CSV log; ``None``: no checkpoints, no log.
    resume : bool
        Resume from the newest checkpoint of ``checkpoint_dir``.
    seed : int
        Seed of every RNG (``seed_everything``) and of the data order.
    progress : bool
        Show a progress bar.
    log_every_n_steps : int
        Logging (and progress-bar refresh) interval in steps.
    checkpoint_every_n_steps : int, optional
        Also write ``last.ckpt`` every this many steps (long epochs).
    """

    max_epochs: int = 1
    max_steps: int | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    channels_last: bool | None = None
    compile: bool | str = False
    checkpoint_dir: str | None = None
    resume: bool = False
    seed: int = 0
    progress: bool = True
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.max_epochs, int) and self.max_epochs >= 1):
            raise ValueError(f"max_epochs must be a positive int, got {self.max_epochs!r}")
        if self.max_steps is not None and not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(f"max_steps must be None or a positive int, got {self.max_steps!r}")
        if self.accelerator not in ("auto", "gpu", "cuda", "cpu"):
            raise ValueError(f"accelerator must be 'auto', 'gpu', 'cuda' or 'cpu', got {self.accelerator!r}")
        if not (isinstance(self.num_nodes, int) and self.num_nodes >= 1):
            raise ValueError(f"num_nodes must be a positive int, got {self.num_nodes!r}")
        if not (isinstance(self.log_every_n_steps, int) and self.log_every_n_steps >= 1):
            raise ValueError(f"log_every_n_steps must be a positive int, got {self.log_every_n_steps!r}")
        every = self.checkpoint_every_n_steps
        if every is not None and not (isinstance(every, int) and every >= 1):
            raise ValueError(f"checkpoint_every_n_steps must be None or a positive int, got {every!r}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")

    @property
    def uses_cuda(self) -> bool:
        """Whether training runs on CUDA devices."""
        return self.accelerator in ("gpu", "cuda") or (self.accelerator == "auto" and torch.cuda.is_available())

    @property
    def uses_channels_last(self) -> bool:
        """Whether weights and batches are channels_last (``channels_last``, or CUDA when it is ``None``)."""
        return self.uses_cuda if self.channels_last is None else bool(self.channels_last)


def resolve_precision(cfg: TrainerConfig) -> str:
    """``cfg.precision``, or ``"bf16-mixed"`` on CUDA and ``"32-true"`` elsewhere when it is ``None``."""
    if cfg.precision is not None:
        return cfg.precision
    return "bf16-mixed" if cfg.uses_cuda else "32-true"


# --- data -----------------------------------------------------------------------------------------------------------
def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, epoch)`` only: the data order of an epoch does not depend on history."""
    digest = hashlib.sha256(f"hwnas-data/{int(seed)}/{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _dist() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """Random permutation per epoch from a generator seeded by ``(seed, epoch)`` (Lightning calls ``set_epoch``).

    Parameters
    ----------
    n : int
        Dataset size.
    seed : int
        Seed of the data order.
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=_epoch_generator(self.seed, self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


class ResidentLoader:
    """Batches of in-memory tensors, kept on the training device (no host-to-device copy per step).

    The tensors move to ``device`` once, at the first iteration (:func:`fit` sets the device to the training
    device). Training order: a permutation per epoch from a generator seeded by ``(seed, epoch)``; Lightning
    calls :meth:`set_epoch` (through :attr:`sampler`). Under DDP every rank takes its own shard of each
    permutation (``perm[rank::world]``), all ranks the same number of batches.

    Parameters
    ----------
    tensors : sequence of torch.Tensor
        Same-length tensors (e.g. images and labels).
    batch_size : int
        Samples per batch (per rank).
    shuffle : bool
        Permute every epoch (training); ``False`` keeps the order (validation).
    drop_last : bool
        Drop the last incomplete batch (default: the same as ``shuffle``).
    seed : int
        Seed of the data order.
    device : torch.device or str, optional
        Where the tensors live; ``None`` until :func:`fit` (or the first iteration: CPU) decides.
    channels_last : bool
        Yield 4-D tensors in channels_last memory format (stored as NHWC rows: a batch is a gather, no copy).
    """

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, *, shuffle: bool = True,
                 drop_last: bool | None = None, seed: int = 0, device: torch.device | str | None = None,
                 channels_last: bool = False):
        tensors = tuple(tensors)
        if not tensors or any(not isinstance(t, torch.Tensor) for t in tensors):
            raise ValueError("ResidentLoader needs one or more tensors")
        if len({len(t) for t in tensors}) != 1:
            raise ValueError(f"ResidentLoader tensors differ in length: {[len(t) for t in tensors]}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._tensors = tensors
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = self.shuffle if drop_last is None else bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        self.channels_last = bool(channels_last)
        self._device = None if device is None else torch.device(device)
        self._skip = 0
        self._nhwc: tuple[torch.Tensor | None, ...] | None = None

    batch_sampler = None  # read by Lightning's DataLoader checks: there is none

    @property
    def sampler(self) -> "ResidentLoader":
        """The object Lightning calls ``set_epoch`` on (the loader itself)."""
        return self

    @property
    def device(self) -> torch.device | None:
        """Where the tensors are (or will be moved at the first iteration)."""
        return self._device

    def to(self, device: torch.device | str) -> "ResidentLoader":
        """Keep the tensors on ``device`` (moved lazily, at the next iteration)."""
        self._device, self._nhwc = torch.device(device), None
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def skip(self, n_batches: int) -> None:
        """Start the next iteration after ``n_batches`` batches of the current epoch (mid-epoch resume)."""
        self._skip = max(0, int(n_batches))

    def state_dict(self) -> dict[str, int]:
        """Epoch and seed (the order of an epoch follows from them)."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])

    def _shard_size(self) -> int:
        rank, world = _dist()
        n = len(self._tensors[0])
        if world == 1:
            return n
        return n // world if self.drop_last else len(range(rank, n, world))

    def __len__(self) -> int:
        size = self._shard_size()
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def _place(self) -> tuple[torch.Tensor, ...]:
        device = self._device or torch.device("cpu")
        if any(t.device != device for t in self._tensors):
            self._tensors = tuple(t.to(device) for t in self._tensors)
        if self.channels_last and self._nhwc is None:   # index_select of NCHW rows would drop channels_last
            self._nhwc = tuple(t.permute(0, 2, 3, 1).contiguous() if t.dim() == 4 else None for t in self._tensors)
        return self._tensors

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # A generator: nothing runs until the first ``next`` (after Lightning's ``set_epoch`` and resume skip).
        tensors = self._place()
        n = len(tensors[0])
        rank, world = _dist()
        order = (torch.randperm(n, generator=_epoch_generator(self.seed, self.epoch)) if self.shuffle
                 else torch.arange(n))
        if world > 1:
            order = order[: n - n % world] if self.drop_last else order
            order = order[rank::world]
        order = order.to(tensors[0].device)
        start, self._skip = self._skip, 0
        nhwc = self._nhwc if self.channels_last else None
        for b in range(start, len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield tuple(t.index_select(0, index) if nhwc is None or nhwc[i] is None
                        else nhwc[i].index_select(0, index).permute(0, 3, 1, 2) for i, t in enumerate(tensors))


def _channels_last_collate(batch: list) -> Any:
    from torch.utils.data import default_collate

    out = default_collate(batch)
    if isinstance(out, (list, tuple)):
        return type(out)(t.contiguous(memory_format=torch.channels_last)
                         if isinstance(t, torch.Tensor) and t.dim() == 4 else t for t in out)
    return out


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, resident: bool | str = "auto",
                num_workers: int = 0, channels_last: bool = False) -> ResidentLoader | DataLoader:
    """A training or validation loader for the harness.

    Parameters
    ----------
    dataset : Dataset
        A ``TensorDataset`` (or any dataset, materialised when ``resident=True``).
    batch_size : int
        Samples per batch.
    train : bool
        Shuffle per epoch and drop the last incomplete batch (training) or keep the order (validation).
    seed : int
        Seed of the data order.
    resident : bool or "auto"
        Keep the whole dataset on the training device (:class:`ResidentLoader`). ``"auto"``: for a
        ``TensorDataset`` of at most 4 GiB.
    num_workers : int
        Worker processes of the ``DataLoader`` (not resident).
    channels_last : bool
        Image batches in channels_last memory format (host-to-device copies keep the format).

    Returns
    -------
    ResidentLoader or DataLoader
    """
    if resident == "auto":
        resident = isinstance(dataset, TensorDataset) and sum(
            t.element_size() * t.numel() for t in dataset.tensors) <= _RESIDENT_MAX_BYTES
    if resident:
        if isinstance(dataset, TensorDataset):
            tensors = dataset.tensors
        else:
            from hwnas.data import as_tensors

            tensors = as_tensors(dataset)
        return ResidentLoader(tensors, batch_size, shuffle=train, seed=seed, channels_last=channels_last)
    cuda = torch.cuda.is_available()
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed) if train else None,
                      drop_last=train, num_workers=num_workers, pin_memory=cuda,
                      persistent_workers=num_workers > 0,
                      collate_fn=_channels_last_collate if channels_last else None)


# --- RNG state as weights_only-safe values --------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


class _Harness(Callback):
    """Applies channels_last / compile, checkpoints RNG states, and skips trained batches on mid-epoch resume."""

    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self._applied = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._applied or stage != "fit":
            return
        self._applied = True
        if self.cfg.uses_channels_last:
            pl_module.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            targets = pl_module.compile_targets() if hasattr(pl_module, "compile_targets") else [pl_module]
            kwargs = {} if self.cfg.compile is True else {"backend": self.cfg.compile}
            for module in targets:
                module.compile(**kwargs)  # in place: state-dict keys stay as they are

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.fit_loop
        if loop.restarted_mid_epoch:
            # processed, not completed: a step checkpoint is written in on_train_batch_end, before Lightning counts
            # its batch completed (completed lags by one there; an exception checkpoint has both equal)
            done = loop.epoch_loop.batch_progress.current.processed
            for loader in _train_loaders(trainer):
                if isinstance(loader, ResidentLoader):
                    loader.skip(done)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            _set_rng_state(state_dict["rng"])


class _SaveOnException(Callback):
    """Writes a checkpoint when training is interrupted; removes it when a run finishes.

    Not Lightning's ``OnExceptionCheckpoint``: with that callback present, ``fit(ckpt_path=None)`` silently
    resumes from the newest checkpoint of the folder, and a fresh run must not.
    """

    def __init__(self, path: str):
        self.path = path

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        trainer.save_checkpoint(self.path)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Called after a run that ended normally only (an interrupted run skips the callbacks' teardown).
        if stage == "fit":
            trainer.strategy.remove_checkpoint(self.path)


def _train_loaders(trainer: pl.Trainer) -> list[Any]:
    source = trainer.train_dataloader
    if isinstance(source, dict):
        return list(source.values())
    return [] if source is None else list(source) if isinstance(source, (list, tuple)) else [source]


# --- trainer --------------------------------------------------------------------------------------------------------
def make_trainer(cfg: TrainerConfig, callbacks: Sequence[Callback] = ()) -> pl.Trainer:
    """A Lightning ``Trainer`` for ``cfg`` (see the module docstring for what it adds).

    Parameters
    ----------
    cfg : TrainerConfig
        The configuration.
    callbacks : sequence of Callback
        Extra callbacks.

    Returns
    -------
    pytorch_lightning.Trainer
    """
    cbs: list[Callback] = [_Harness(cfg)]
    logger: Any = False
    if cfg.checkpoint_dir is not None:
        from pytorch_lightning.loggers import CSVLogger

        folder = str(Path(cfg.checkpoint_dir))
        # No monitor and top-1 under the fixed name "last": the file is overwritten by each save.
        cbs.append(ModelCheckpoint(dirpath=folder, filename=LAST[:-len(".ckpt")], save_top_k=1,
                                   every_n_epochs=1, enable_version_counter=False))
        if cfg.checkpoint_every_n_steps is not None:
            cbs.append(ModelCheckpoint(dirpath=folder, filename=LAST[:-len(".ckpt")], save_top_k=1,
                                       every_n_train_steps=cfg.checkpoint_every_n_steps,
                                       save_on_train_epoch_end=False, enable_version_counter=False))
        cbs.append(_SaveOnException(str(Path(folder) / ON_EXCEPTION)))
        logger = CSVLogger(folder, name="log")  # log/version_<n>/metrics.csv: a resumed run adds a version
    if cfg.progress:
        cbs.append(TQDMProgressBar(refresh_rate=cfg.log_every_n_steps))
    cbs.extend(callbacks)
    accelerator = "gpu" if cfg.accelerator == "cuda" else cfg.accelerator
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        return pl.Trainer(
            accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
            precision=resolve_precision(cfg), max_epochs=cfg.max_epochs,
            max_steps=-1 if cfg.max_steps is None else cfg.max_steps, callbacks=cbs, logger=logger,
            enable_checkpointing=cfg.checkpoint_dir is not None, enable_progress_bar=cfg.progress,
            enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=cfg.log_every_n_steps,
            default_root_dir=cfg.checkpoint_dir, deterministic=False, benchmark=cfg.uses_cuda or None)


def _checkpoint_step(path: Path) -> int:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - reported with the file name
        raise HwnasError(f"checkpoint {path} cannot be read with weights_only=True: {err}") from None
    return int(ckpt.get("global_step", -1))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The checkpoint of ``checkpoint_dir`` with the most training steps (``last.ckpt`` or ``on_exception.ckpt``).

    Parameters
    ----------
    checkpoint_dir : str or Path
        The ``TrainerConfig.checkpoint_dir`` of a run.

    Returns
    -------
    Path or None
        ``None`` when the folder has neither file.
    """
    folder = Path(checkpoint_dir)
    found = [p for p in (folder / LAST, folder / ON_EXCEPTION) if p.is_file()]
    if not found:
        return None
    return max(found, key=_checkpoint_step)


def fit(module: pl.LightningModule, train_loader: Any, val_loader: Any = None,
        cfg: TrainerConfig | None = None, callbacks: Sequence[Callback] = ()) -> pl.Trainer:
    """Train ``module`` under ``cfg``; resume from ``cfg.checkpoint_dir`` when ``cfg.resume``.

    Without ``resume``, a run starts fresh: checkpoints an earlier run left in ``cfg.checkpoint_dir`` are
    removed (with a warning), never silently resumed from.

    Parameters
    ----------
    module : LightningModule
        The module; build it after seeding (``pytorch_lightning.seed_everything(cfg.seed)``) for a
        reproducible initialisation. A resumed run overwrites its weights from the checkpoint.
    train_loader, val_loader : ResidentLoader, DataLoader or iterable
        Training and (optional) validation data, e.g. from :func:`make_loader`.
    cfg : TrainerConfig, optional
        Defaults of :class:`TrainerConfig` when not given.
    callbacks : sequence of Callback
        Extra callbacks.

    Returns
    -------
    pytorch_lightning.Trainer
        The trainer after ``fit`` (``callback_metrics`` holds the last logged values).

    Raises
    ------
    HwnasError
        ``cfg.resume`` and no checkpoint in ``cfg.checkpoint_dir``, or one that does not load with
        ``weights_only=True``.
    """
    cfg = cfg or TrainerConfig()
    ckpt_path = None
    if cfg.resume:
        found = latest_checkpoint(cfg.checkpoint_dir)
        if found is None:
            raise HwnasError(f"resume requested but {cfg.checkpoint_dir} has no {LAST} or {ON_EXCEPTION}; "
                             "run without resume first")
        ckpt_path = str(found)
    elif cfg.checkpoint_dir is not None:
        stale = [Path(cfg.checkpoint_dir) / name for name in (LAST, ON_EXCEPTION)]
        stale = [p for p in stale if p.is_file()]
        if stale:
            warnings.warn(f"starting a fresh run: removing the checkpoints of an earlier run in {cfg.checkpoint_dir} "
                          f"({', '.join(p.name for p in stale)}); pass resume=True to continue it instead",
                          stacklevel=2)
            for p in stale:
                p.unlink()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = make_trainer(cfg, callbacks)
    for loader in (train_loader, val_loader):
        if isinstance(loader, ResidentLoader) and loader.device is None:
            loader.to(trainer.strategy.root_device)
            loader.channels_last = loader.channels_last or cfg.uses_channels_last
    with warnings.catch_warnings():
        # Expected when resuming, and the harness's own files when not: the checkpoints are overwritten by name.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path,
                    weights_only=True)
    return trainer
