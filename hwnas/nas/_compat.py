"""The NNI 3.0 workarounds hwnas needs on today's torch (one place, each a named function applied explicitly).

NNI is archived: nothing upstream will fix these, so hwnas carries them. None is applied at import time; each is
called (or entered) by the code that needs it, is idempotent, and has a test that fails without it
(``tests/unit/test_nni_compat.py``). What each one fixes:

- :func:`plain_arch` — NNI samples (``ExecutableModelSpace.sample``) key architectures by ``nni.mutable.utils.label``
  objects, a ``str`` subclass. ``torch.load(weights_only=True)`` (the torch >= 2.6 default) refuses to unpickle them,
  so a checkpoint that stores an NNI sample cannot be read back. The fix converts keys (and values) to plain ``str``.
- :func:`allowlisted_checkpoints` — NNI's experiment checkpoint (``<exp dir>/checkpoint/state.ckpt.torch``, written by
  ``NasExperiment.save_checkpoint``) holds the strategy's numpy random state, NNI label objects and evolution
  ``Individual`` records; NNI reads it back with ``torch.load`` and the ``weights_only=True`` default, which refuses
  those types, so ``NasExperiment.resume`` fails with ``UnpicklingError``. The fix swaps NNI's default checkpoint
  serializer, for the duration of a ``with`` block, for one that still loads with ``weights_only=True`` but allows
  exactly those plain-data types (:data:`CHECKPOINT_SAFE_GLOBALS`): no code runs while a checkpoint loads.
- :func:`loopback_manager` — NNI's experiment manager (Node.js, ``nni_node``) calls ``app.listen(port)`` without a
  host, so its REST API and web UI listen on every interface (``::``), and the ``nni_manager_ip`` option only changes
  what is advertised. The fix preloads, through ``NODE_OPTIONS``, a few lines of JavaScript that make a server
  started without a host (or on a wildcard host) listen on ``127.0.0.1``. Only for the ``local`` training service:
  remote machines must reach the manager.

- :func:`quiet_nni_import` — importing ``nni.nas.nn.pytorch`` walks ``torch.nn`` and warns, for every class there
  that is not a module (``Buffer``, ``LinearCrossEntropyOptions`` on torch 2.14), "... is found to be not a nn.Module,
  which is unexpected. It means your PyTorch version might not be supported." The classes are not layers and NNI
  wraps none of them: the notice is harmless and the user cannot act on it. The fix is a warnings filter for
  exactly that message from NNI's modules, installed by ``import hwnas`` and ``import search_spaces`` (before
  either imports NNI): the one NNI fix applied at import, because the warning is an import's.

Fixes NNI 3.0 needs elsewhere but hwnas's multi-trial path does not use (so none is kept here): the stock
``Classification`` evaluator reusing one Lightning ``Trainer`` under the sequential engine (hwnas trials are a
:class:`~nni.nas.evaluator.FunctionalEvaluator` over :func:`hwnas.train.train_model`); the one-shot subnet freeze
and penalty gradient issues (handled by :mod:`hwnas.oneshot` and :mod:`hwnas.nas._latency_loss`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from hwnas.errors import ArchitectureError

__all__ = ["LOOPBACK", "NNI_IMPORT_NOTICE", "allowlisted_checkpoints", "checkpoint_safe_globals", "loopback_manager",
           "plain_arch", "quiet_nni_import"]

LOOPBACK = "127.0.0.1"

# Preloaded into the NNI manager's Node.js process: a server that listens without a host, or on a wildcard host,
# listens on loopback instead (explicit non-wildcard hosts and Unix sockets are left alone).
_LOOPBACK_JS = r"""'use strict';
const net = require('net');
const HOST = '%s';
const WILDCARD = new Set(['', '0.0.0.0', '::', '::0']);
const listen = net.Server.prototype.listen;
if (!listen.__hwnasLoopback) {
  const patched = function (...args) {
    const first = args[0];
    if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
      const local = first.path === undefined && first.fd === undefined && first.handle === undefined
        && first._handle === undefined;
      if (local && (first.host === undefined || WILDCARD.has(first.host))) {
        args[0] = Object.assign({}, first, { host: HOST });
      }
    } else if (typeof first === 'number' || first === undefined || first === null
               || (typeof first === 'string' && /^\d+$/.test(first))) {
      if (typeof args[1] === 'string') {
        if (WILDCARD.has(args[1])) args[1] = HOST;
      } else {
        args.splice(1, 0, HOST);
      }
    }
    return listen.apply(this, args);
  };
  patched.__hwnasLoopback = true;
  net.Server.prototype.listen = patched;
}
""" % LOOPBACK

_ACTIVE_ENV = "HWNAS_NNI_LOOPBACK"

#: The message NNI 3.0 warns at import for each ``torch.nn`` class that is not a module (a regex for ``warnings``).
NNI_IMPORT_NOTICE = (r".* is found to be not a nn\.Module, which is unexpected\. "
                     r"It means your PyTorch version might not be supported\.")


def quiet_nni_import() -> None:
    """Silence NNI's harmless import-time "is found to be not a nn.Module" notices (and only those).

    Installs a ``warnings`` filter for exactly :data:`NNI_IMPORT_NOTICE`, category ``RuntimeWarning``, raised from
    NNI's own modules; any other warning, NNI's included, still shows. Imports nothing; idempotent (``warnings``
    does not add a filter twice).
    """
    warnings.filterwarnings("ignore", message=NNI_IMPORT_NOTICE, category=RuntimeWarning, module=r"nni(\.|$)")


def plain_arch(sample: Any) -> dict[str, str]:
    """An NNI sample (or an ``ExecutableModelSpace``) as a plain, JSON- and ``weights_only``-safe ``dict[str, str]``.

    Parameters
    ----------
    sample : mapping or ExecutableModelSpace
        ``label -> choice``; NNI's ``label`` keys become ``str``. Anything with a ``.sample`` mapping (a frozen
        ``ExecutableModelSpace``) is unwrapped first. Idempotent on a plain dict.

    Returns
    -------
    dict of str to str
        A new dict in the sample's order.

    Raises
    ------
    ArchitectureError
        The sample is not a mapping, or a choice is not a string (hwnas spaces only have named choices).
    """
    inner = getattr(sample, "sample", None)
    if not isinstance(sample, Mapping) and isinstance(inner, Mapping):
        sample = inner
    if not isinstance(sample, Mapping):
        raise ArchitectureError(f"an architecture is a mapping label -> choice name, got {type(sample).__name__}")
    arch: dict[str, str] = {}
    for key, value in sample.items():
        if not isinstance(value, str):
            raise ArchitectureError(f"label {str(key)!r} has a non-string choice {value!r} "
                                    f"({type(value).__name__}); hwnas architectures map labels to choice names")
        arch[str.__str__(key)] = str.__str__(value)
    return arch


def checkpoint_safe_globals() -> list[Any]:
    """The types NNI's experiment checkpoints contain besides tensors and builtins, allowed for ``weights_only``
    loading: NNI's ``label`` (a ``str`` subclass), evolution ``Individual`` records (a dataclass of a sample and a
    metric), ``frozenset`` (dedup history) and what numpy's ``RandomState.get_state()`` pickles to (an ``ndarray`` of
    ``uint32``). Each is plain data: unpickling it constructs values and calls no user code."""
    import numpy as np
    from nni.mutable.utils import label
    from nni.nas.strategy.evolution import Individual

    return [label, Individual, frozenset, np.ndarray, np.dtype, np.dtypes.UInt32DType,
            np._core.multiarray._reconstruct]


@contextlib.contextmanager
def allowlisted_checkpoints() -> Iterator[None]:
    """Within the block, NNI's experiment checkpoints load with ``weights_only=True`` plus the types of
    :func:`checkpoint_safe_globals` (which NNI's own load refuses).

    NNI's default checkpoint serializer (``nni.nas.utils.serializer``) is replaced by a ``TorchSerializer`` whose
    ``load`` allows those types, and the previous one is restored on exit. Saving is unchanged. Nested or repeated
    use is harmless. Enter it around ``NasExperiment.resume`` (and ``run``, which saves).
    """
    from nni.nas.utils import serializer as ser

    previous = ser._default_serializer   # None until NNI picks its default lazily
    ser.set_default_serializer(_allowlist_serializer())
    try:
        yield
    finally:
        ser._default_serializer = previous


def _allowlist_serializer() -> Any:
    """A ``TorchSerializer`` loading with ``weights_only=True`` and NNI's checkpoint types allowed (the class needs
    NNI, hence built here)."""
    from nni.nas.utils.serializer import TorchSerializer, _find_path_with_prefix

    class AllowlistTorchSerializer(TorchSerializer):
        """NNI's ``TorchSerializer`` whose ``load`` allows the plain-data types of NNI's experiment state."""

        def load(self, path: Path) -> Any:
            import torch

            found = _find_path_with_prefix(path, self.suffix)
            with torch.serialization.safe_globals(checkpoint_safe_globals()):
                return torch.load(str(found), map_location=self._map_location, weights_only=True)

    return AllowlistTorchSerializer()


@contextlib.contextmanager
def loopback_manager() -> Iterator[str]:
    """Within the block, an NNI experiment manager started by this process listens on ``127.0.0.1`` only.

    Sets ``NODE_OPTIONS`` (keeping any value already there) to preload a small script (written to a temporary
    directory, removed on exit) into the Node.js processes started inside the block, and restores the environment
    on exit. The manager keeps its bind address after the block ends. Nested use is a no-op.

    Yields
    ------
    str
        The loopback address, ``"127.0.0.1"``: use it for ``nni_manager_ip`` and the web UI URL.
    """
    if os.environ.get(_ACTIVE_ENV) == "1":
        yield LOOPBACK
        return
    saved = {name: os.environ.get(name) for name in ("NODE_OPTIONS", _ACTIVE_ENV)}
    with tempfile.TemporaryDirectory(prefix="hwnas-nni-") as tmp:
        script = Path(tmp) / "loopback.js"
        script.write_text(_LOOPBACK_JS, encoding="utf-8")
        quoted = '"' + str(script).replace("\\", "\\\\").replace('"', '\\"') + '"'
        option = f"--require {quoted}"
        os.environ["NODE_OPTIONS"] = f"{saved['NODE_OPTIONS']} {option}" if saved["NODE_OPTIONS"] else option
        os.environ[_ACTIVE_ENV] = "1"
        try:
            yield LOOPBACK
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
