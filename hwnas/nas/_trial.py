"""What one trial of an NNI multi-trial search runs, and how the launcher collects the full results.

- :func:`evaluate_architecture` — the trial: an importable function for NNI's ``FunctionalEvaluator``. It trains the
  sampled subnet with :func:`hwnas.train.train_model` (the trainer of hwnas's plain random search too, so times per
  trial compare), looks up the subnet's predicted latency, MACs and parameters in the experiment's latency table,
  optionally saves the trained weights, and reports ``{"default": accuracy, "latency_ms", "macs", "params", ...}``.
- :func:`traced_dataset` — a dataset of :class:`hwnas.data.DataConfig` as an ``nni.trace``-d
  :class:`LoadedDataset` (a call of :func:`hwnas.data.load_dataset`): NNI sends the call (about 100 bytes) to a trial, which rebuilds the data itself.
- :class:`TrialRecorder` — a strategy middleware that keeps every trial's full result dict (NNI's ``Metrics`` keeps
  only ``"default"``), in memory and as JSON lines, for both the sequential and the training-service engine.

Why a ``FunctionalEvaluator`` and not NNI's ``Classification``: the same trainer as the plain random search
(comparable accuracy and seconds per trial), the whole result dict under hwnas's control, no Lightning ``Trainer``
(whose reuse under the sequential engine is broken in NNI 3.0), and small payloads (a table path, plain dicts and
traced dataset calls).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import nni
from torch.utils.data import Dataset
from nni.nas.execution.event import ModelEventType
from nni.nas.strategy.middleware import StrategyMiddleware

from hwnas.errors import HwnasError
from hwnas.files import append_jsonl, atomic_write, read_jsonl
from hwnas.nas._compat import plain_arch

__all__ = ["LoadedDataset", "TrialRecorder", "arch_key", "evaluate_architecture", "read_records", "traced_dataset",
           "weights_path"]


def arch_key(arch: Mapping[str, str]) -> str:
    """A short stable name of an architecture (12 hex digits of the SHA-1 of its sorted JSON)."""
    text = json.dumps(plain_arch(arch), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def weights_path(weights_dir: str | os.PathLike, arch: Mapping[str, str]) -> Path:
    """Where :func:`evaluate_architecture` saves the trained weights of ``arch`` under ``weights_dir``."""
    return Path(weights_dir) / f"{arch_key(arch)}.pt"


class LoadedDataset(Dataset):
    """:func:`hwnas.data.load_dataset` ``(name, split, **kwargs)`` held in a dataset type of hwnas's own.

    Why a class of its own: ``nni.trace`` of a *function* makes the class of the returned object traceable in place,
    so tracing ``load_dataset`` itself would patch ``TensorDataset`` (or ``CIFAR10``, ``ImageFolder``) for the
    whole process, and every later plain ``TensorDataset`` would then break NNI's own evaluators (``KeyError:
    '_nni_symbol'`` from ``Classification``). ``nni.trace`` of a class makes a traced subclass and patches
    nothing. Items and length are the loaded dataset's (``dataset``).
    """

    def __init__(self, name: str, split: str, **kwargs: Any) -> None:
        from hwnas.data import load_dataset

        self.dataset = load_dataset(name, split, **kwargs)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]


def traced_dataset(data: Any, split: str) -> Any:
    """The ``split`` dataset of a :class:`hwnas.data.DataConfig`, built now and recorded as a traced call.

    NNI serialises the result as the call ``LoadedDataset(name, split, root=..., image_size=...)`` (not its
    tensors), so trial payloads stay small and each trial process rebuilds the data. Building it here also makes a
    missing path or a malformed dataset fail in the launcher (:class:`hwnas.errors.DataError`), before any trial
    starts. No class outside hwnas is patched (see :class:`LoadedDataset`).
    """
    extra = {"val_fraction": data.val_fraction, "seed": data.seed} if data.name == "digits" else {}
    return nni.trace(LoadedDataset)(data.name, split, root=data.root, image_size=data.image_size, **extra)


def evaluate_architecture(model: Any, *, train_data: Any, val_data: Any, train: Mapping[str, Any],
                          table_path: str, space: str | None = None, weights_dir: str | None = None,
                          num_threads: int | None = None) -> dict[str, Any]:
    """Train and score the architecture NNI hands this trial; report and return the full result dict.

    Parameters
    ----------
    model : nn.Module
        The model space frozen to this trial's architecture (NNI instantiates it). The plain subnet
        (:func:`search_spaces.build_subnet`) of its architecture is what is trained and saved.
    train_data, val_data : Dataset
        Training and validation data (usually :func:`traced_dataset` calls).
    train : mapping
        Fields of :class:`hwnas.train.TrainConfig` (a plain dict keeps the payload small and JSON-safe).
    table_path : str
        The experiment's :class:`~hwnas.tables.LatencyTable` file (``LatencyTable.save``).
    space : str, optional
        The space's registered name: the subnet is then freshly initialised under ``torch.manual_seed(train
        ["seed"])``, so an architecture starts from the same weights in every engine and process. ``None``: it
        inherits the weights NNI initialised ``model`` with (which depend on the process's random state).
    weights_dir : str, optional
        Save ``{"arch", "state_dict", "result"}`` of the trained subnet to ``weights_path(weights_dir, arch)``
        (``torch.load(weights_only=True)``-safe). Needs a file system the launcher shares (local training service,
        sequential engine).
    num_threads : int, optional
        ``torch.set_num_threads`` for this trial (e.g. cores / concurrent trials); torch's default when ``None``.

    Returns
    -------
    dict
        ``{"default": accuracy, "accuracy", "latency_ms" (ms), "macs", "params", "train_loss", "steps",
        "train_seconds", "seconds"}``; also sent with ``nni.report_final_result``. The architecture is not in it
        (NNI's web UI shows numbers): :class:`TrialRecorder` adds it from the trial's sample.

    Raises
    ------
    HwnasError
        Called outside an NNI trial (no current parameter); use ``Evaluator.mock_runtime(frozen_model)`` to run it
        by hand.
    """
    import torch

    import search_spaces as ss
    from hwnas.tables import LatencyTable
    from hwnas.train import TrainConfig, train_model

    start = time.perf_counter()
    current = nni.get_current_parameter()
    if current is None or not hasattr(current, "sample"):
        raise HwnasError("evaluate_architecture runs inside an NNI trial (nni.get_current_parameter() gave "
                         f"{type(current).__name__}); wrap a manual call in Evaluator.mock_runtime(frozen_model)")
    arch = plain_arch(current.sample)
    table = LatencyTable.load(table_path)
    info = {"latency_ms": float(table.latency(arch)), "macs": int(table.macs(arch)),
            "params": int(table.params(arch))}
    cfg = TrainConfig(**dict(train))
    if space is None:
        net = ss.build_subnet(model, arch)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            net = ss.build_subnet(space, arch, config=model.config)
    threads = torch.get_num_threads()
    if num_threads is not None:   # restored below: the sequential engine runs trials in the launcher's process
        torch.set_num_threads(int(num_threads))
    try:
        outcome = train_model(net, train_data, val_data, cfg)
    finally:
        torch.set_num_threads(threads)
    acc = float(outcome.accuracy)
    result: dict[str, Any] = {"default": acc, "accuracy": acc, **info, "train_loss": float(outcome.train_loss),
                              "steps": int(outcome.steps), "train_seconds": float(outcome.seconds)}
    if weights_dir is not None:
        path = weights_path(weights_dir, arch)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        atomic_write(path, lambda f: torch.save({"arch": arch, "state_dict": state, "result": dict(result)}, f))
    result["seconds"] = time.perf_counter() - start
    nni.report_final_result(result)
    return result


class TrialRecorder(StrategyMiddleware):
    """Strategy middleware that records each trial's full final-result dict (NNI keeps only ``"default"``).

    Put it last in a chain (next to the engine): ``Chain(Random(), LatencyFilter(...), TrialRecorder(path))``.
    Each finished trial becomes one record ``{"trial": n, "status", "arch", **result, "wall_seconds"}`` (``status``
    ``"trained"``, or ``"failed"`` without a result), kept in :attr:`records` and appended as a JSON line to
    ``path``. Call :meth:`wait` after the experiment returns: the last trial's end can arrive after it. Works with the sequential engine (events in this thread) and the training-service engine (events
    from NNI's listener thread: records are guarded by a lock).

    Parameters
    ----------
    path : str or PathLike, optional
        JSON-lines file to append records to (created with its directory).
    on_record : callable, optional
        Called with each new record (e.g. to print progress).

    Notes
    -----
    The recorder holds a strong reference to every model it submits until its trial ends: NNI's training-service
    engine keeps only weak references and drops the events of a model the strategy no longer holds.
    """

    def __init__(self, path: str | os.PathLike | None = None, on_record: Callable[[dict], None] | None = None):
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.on_record = on_record
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._live: dict[int, tuple[Any, float, int]] = {}   # id(model) -> (model, submit time, trial number)
        self._results: dict[int, dict[str, Any]] = {}
        self._submitted = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _initialize_engine(self, engine: Any) -> None:
        engine.register_model_event_callback(ModelEventType.FinalMetric, self._on_final)
        engine.register_model_event_callback(ModelEventType.TrainingEnd, self._on_end)

    # -- pass-through to the engine (the recorder never dispatches events of its own) ----------------------------
    def submit_models(self, *models: Any) -> None:
        with self._lock:
            for model in models:
                self._submitted += 1
                self._live[id(model)] = (model, time.perf_counter(), self._submitted)
        self.engine.submit_models(*models)

    def list_models(self, status: Any = None) -> Iterable[Any]:
        return self.engine.list_models(status)

    def register_model_event_callback(self, event_type: Any, callback: Callable[..., None]) -> None:
        self.engine.register_model_event_callback(event_type, callback)

    def unregister_model_event_callback(self, event_type: Any, callback: Callable[..., None]) -> None:
        self.engine.unregister_model_event_callback(event_type, callback)

    def load_state_dict(self, state_dict: dict) -> None:
        self._submitted = int(state_dict.get("submitted", 0))

    def state_dict(self) -> dict:
        return {"submitted": self._submitted}

    def pending(self) -> int:
        """Trials submitted whose end has not been seen yet."""
        with self._lock:
            return len(self._live)

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait until every submitted trial has ended, then close the ones still open.

        NNI's ``NasExperiment.run`` returns when the manager reports the experiment done, which can come before the
        last trial-end event reaches this process. Trials still open after ``timeout`` seconds are recorded as
        ``"trained"`` when their result arrived, else ``"unfinished"`` (e.g. killed by a stop).

        Returns
        -------
        bool
            Whether every trial ended by itself within ``timeout``.
        """
        deadline = time.monotonic() + max(float(timeout), 0.0)
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._lock:
            rest = sorted(self._live.items(), key=lambda item: item[1][2])
            self._live.clear()
            results = {key: self._results.pop(key, None) for key, _ in rest}
        for key, (model, submitted, number) in rest:
            result = results[key]
            rec = self._record(model, result or {}, number, "trained" if result is not None else "unfinished")
            rec["wall_seconds"] = time.perf_counter() - submitted
            self._write(rec)
        return not rest

    # -- events ---------------------------------------------------------------------------------------------------
    def _on_final(self, event: Any) -> None:
        metric = event.metric
        result = dict(metric) if isinstance(metric, Mapping) else {"default": float(metric)}
        with self._lock:
            entry = self._live.get(id(event.model))
            if entry is not None:
                self._results[id(event.model)] = result
                return
        self._write(self._record(event.model, result, None, "trained"))   # a model the recorder never saw

    def _on_end(self, event: Any) -> None:
        with self._lock:
            entry = self._live.pop(id(event.model), None)
            result = self._results.pop(id(event.model), None)
        if entry is None:
            return
        model, submitted, number = entry
        status = "trained" if result is not None else "failed"
        rec = self._record(model, result or {}, number, status)
        rec["wall_seconds"] = time.perf_counter() - submitted
        self._write(rec)

    def _record(self, model: Any, result: dict[str, Any], number: int | None, status: str) -> dict[str, Any]:
        try:
            arch = plain_arch(model)
        except HwnasError:
            arch = None
        rec: dict[str, Any] = {"trial": number, "status": status, "arch": arch}
        rec.update({k: _json_safe(v) for k, v in result.items()})
        return rec

    def _write(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(rec)
            if self.path is not None:
                append_jsonl(self.path, rec)
        if self.on_record is not None:
            self.on_record(rec)


def _json_safe(value: Any) -> Any:
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records a :class:`TrialRecorder` appended to ``path`` (``[]`` if there is no file yet).

    Read with :func:`hwnas.files.read_jsonl`: a torn last line (a launcher killed mid-write) is dropped with a
    warning; any other line that is not JSON raises :class:`~hwnas.errors.StoreError` naming the file and line.
    """
    return read_jsonl(path, what="a JSON record")

