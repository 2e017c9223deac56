"""Latency tables: per-(label, choice) latency, MACs and parameters of a search space's blocks.

A chain search space (:mod:`search_spaces`) is ``stem -> blocks -> head`` where every choice block is a
self-contained module. :meth:`LatencyTable.build` prices every candidate of every block once, at its position
(its input shape), with a :class:`~hwnas.predictor.LatencyPredictor`; afterwards an architecture's latency is

    ``fixed + Σ_l row_l[choice_l]``      (ms)

where ``fixed`` is the latency of the fixed parts (stem, fixed blocks, head) plus the predictor's per-call
overhead, counted once. Scoring a batch of architectures is one numpy gather and a sum, and the expected latency
under per-label choice probabilities is a dot product (differentiable, :meth:`LatencyTable.expected_latency`).
MACs (multiply-accumulates per image, the convention of :func:`search_spaces.count_macs`) and parameter counts
are tables of the same shape and sum the same way.

Exactness and its limits
------------------------
The table is exact (equal to ``predictor.predict`` of the whole subnet up to float rounding) when the network's
kernels are the union of its blocks' kernels. That fails only if a fusion rule chains the last op of a block into
the first op of the next (the matcher, :func:`hwnas.kernels.detect_kernels`, extends a chain through a node with
exactly one consumer; a block captured alone has no consumer of its output). :meth:`LatencyTable.build` checks
every neighbouring pair of slots (output ops of each candidate against the first op of the next slot's
candidates whose input has a single reader) against every consecutive op pair of every rule, and raises
:class:`FusionBoundaryError` naming the rule and the blocks: such a predictor would need pairwise terms. ``skip``
candidates stay in the network as ``identity`` ops (each candidate is captured wrapped in ``nn.Sequential``, so
a bare ``nn.Identity`` is that op too), hence neighbours are always consecutive slots.

Tables are data: :meth:`LatencyTable.save` writes one JSON file (space name and config, input shape, predictor
name and checksum, units, hwnas version, schema version, the rows); :meth:`LatencyTable.load` reads it and
refuses a newer schema. ``build(..., cache_dir=...)`` reuses a file keyed by a hash of (space name, space config,
predictor checksum, input shape, schema version); without ``cache_dir`` nothing is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hwnas._boundaries import boundary_op_pairs, check_boundaries, graph_ends, space_slots
from hwnas.errors import ArchitectureError, FusionBoundaryError, TableFileError
from hwnas.files import atomic_write

__all__ = ["FusionBoundaryError", "LatencyTable", "SCHEMA", "SCHEMA_VERSION", "TableFileError", "boundary_op_pairs"]

SCHEMA = "hwnas.latency_table"
SCHEMA_VERSION = 2   # 2: multiply-accumulates are "macs" (version 1 called them "flops"; still read)
UNITS = {"latency": "ms", "macs": "multiply-accumulates per image", "params": "count"}


class LatencyTable:
    """Per-(label, choice) latency (ms), MACs and parameters of one search space on one predictor.

    Build one with :meth:`build` or read one with :meth:`load`; the constructor takes the table's JSON document
    (the content of a saved file) and validates it.

    Parameters
    ----------
    document : dict
        ``schema``, ``schema_version``, ``units``, ``space`` (``name``, ``config``), ``input_shape``,
        ``predictor`` (``name``, ``checksum``, ...), ``fixed`` (``latency_ms``, ``overhead_ms``, ``macs``,
        ``params``, ``slots``) and ``blocks``: one entry per label in network order with ``label``, ``choices``,
        ``latency_ms``, ``macs`` and ``params`` (lists aligned with ``choices``). A document of schema version 1,
        which calls the MACs ``flops``, is read the same.

    Raises
    ------
    TableFileError
        Malformed document, other units, or a schema newer than :data:`SCHEMA_VERSION`.
    """

    def __init__(self, document: Mapping[str, Any]):
        doc = _checked(document)
        self._doc = doc
        blocks = doc["blocks"]
        self._labels = tuple(b["label"] for b in blocks)
        self._choices = {b["label"]: tuple(b["choices"]) for b in blocks}
        self._position = {b["label"]: {c: i for i, c in enumerate(b["choices"])} for b in blocks}
        self._n_choices = np.array([len(b["choices"]) for b in blocks], dtype=np.intp)
        # Padded (L, max_choices) arrays; padding is NaN (latency) / 0 (counts) and never indexed.
        self._lat = _padded(blocks, "latency_ms", np.float64, np.nan)
        self._macs = _padded(blocks, "macs", np.int64, 0)
        self._params = _padded(blocks, "params", np.int64, 0)
        self._rows = np.arange(len(blocks))
        fixed = doc["fixed"]
        self._fixed_lat = float(fixed["latency_ms"])
        self._fixed_macs = int(fixed["macs"])
        self._fixed_params = int(fixed["params"])

    # -- building ---------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, space: Any, predictor: Any, input_shape: Sequence[int] | None = None,
              cache_dir: str | os.PathLike | None = None, progress: bool = False) -> "LatencyTable":
        """Price every candidate of every block of ``space`` with ``predictor``.

        Parameters
        ----------
        space : ChainSpace or str
            A space instance (e.g. from :func:`search_spaces.create_space`) or a registered name (default
            config). Only its structure matters, not its weights; a space already mutated by an NNI one-shot
            strategy is rebuilt from its config.
        predictor : LatencyPredictor
            Prices kernels (ms); its per-call overhead is added once, to the fixed part.
        input_shape : sequence of int, optional
            NCHW input shape with batch; ``(1, 3, input_size, input_size)`` of the space's config when not given.
        cache_dir : path, optional
            Folder of cached tables: a table with the same key is loaded instead of rebuilt, a new one is written
            there. ``None`` (default): nothing is read or written.
        progress : bool
            Print one line per slot to stderr.

        Returns
        -------
        LatencyTable

        Raises
        ------
        FusionBoundaryError
            A fusion rule can fuse the last op of a block with the first op of the next (see the module
            docstring).
        UnknownKernelError
            A candidate has a kernel the predictor cannot price.
        """
        import search_spaces as ss

        if isinstance(space, str):
            space = ss.create_space(space)
        config = _config_dict(space.config)
        side = space.config.input_size
        shape = (1, 3, side, side) if input_shape is None else tuple(int(d) for d in input_shape)
        identity = {"space": {"name": _space_name(space), "config": config}, "input_shape": list(shape),
                    "predictor": {"name": predictor.name, "checksum": predictor.checksum}}
        path = None
        if cache_dir is not None:
            key = hashlib.sha256(json.dumps({**identity, "schema_version": SCHEMA_VERSION},
                                            sort_keys=True).encode("utf-8")).hexdigest()
            path = Path(cache_dir) / f"{identity['space']['name']}-{key[:24]}.json"
            if path.is_file():
                try:
                    table = cls.load(path)
                    if table._identity() == identity:
                        return table
                    warnings.warn(f"latency table cache {path} does not describe this space/predictor; rebuilding",
                                  stacklevel=2)
                except TableFileError as err:
                    warnings.warn(f"unreadable latency table cache {path} ({err}); rebuilding", stacklevel=2)
        table = cls(_measure(space, predictor, shape, identity, progress))
        if path is not None:
            table.save(path)
        return table

    # -- identity ---------------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        p = self._doc["predictor"]
        return {"space": {"name": self._doc["space"]["name"], "config": self._doc["space"]["config"]},
                "input_shape": list(self._doc["input_shape"]),
                "predictor": {"name": p["name"], "checksum": p["checksum"]}}   # an old file's "scale" (1.0) is ignored

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything but the rows: schema, units, space, input shape, predictor, hwnas version (a copy)."""
        return json.loads(json.dumps({k: v for k, v in self._doc.items() if k not in ("blocks", "fixed")}))

    @property
    def labels(self) -> list[str]:
        """Choice labels in network order."""
        return list(self._labels)

    @property
    def choices(self) -> dict[str, list[str]]:
        """Label → candidate names, in network order (a copy)."""
        return {label: list(c) for label, c in self._choices.items()}

    @property
    def rows(self) -> dict[str, dict[str, float]]:
        """Label → {choice: latency in ms} of the block at its position (a copy)."""
        return {label: {c: float(self._lat[i, j]) for j, c in enumerate(self._choices[label])}
                for i, label in enumerate(self._labels)}

    @property
    def fixed_latency(self) -> float:
        """Latency of the fixed parts plus the predictor's per-call overhead, ms."""
        return self._fixed_lat

    @property
    def n_choices(self) -> np.ndarray:
        """Number of candidates per label, shape (L,): the valid width of each row of :meth:`as_tensor`."""
        return self._n_choices.copy()

    def __repr__(self) -> str:
        s, p = self._doc["space"], self._doc["predictor"]
        return (f"LatencyTable(space={s['name']!r}, input_shape={tuple(self._doc['input_shape'])}, "
                f"predictor={p['name']!r}, labels={len(self._labels)}, "
                f"range={self.min_latency():.4g}..{self.max_latency():.4g} ms)")

    # -- encoding ---------------------------------------------------------------------------------------------------
    def _indices(self, archs: Any) -> np.ndarray:
        """(n, L) choice indices of a list of dicts or an index matrix (validated)."""
        if isinstance(archs, Mapping):
            raise ArchitectureError("expected a list of architectures or an (n, L) index matrix, got one dict; "
                                    "use the single-architecture method")
        if isinstance(archs, np.ndarray) or (not isinstance(archs, (list, tuple)) and hasattr(archs, "__array__")):
            return self._check_matrix(np.asarray(archs))
        archs = list(archs)
        if archs and not isinstance(archs[0], Mapping):
            return self._check_matrix(np.asarray(archs))
        items = [(label, self._position[label]) for label in self._labels]
        n_labels = len(items)
        out = np.empty((len(archs), n_labels), dtype=np.intp)
        for i, arch in enumerate(archs):
            try:
                if len(arch) != n_labels:
                    raise KeyError
                out[i] = [pos[arch[label]] for label, pos in items]
            except (KeyError, TypeError):
                self._explain(arch)
        return out

    def _check_matrix(self, idx: np.ndarray) -> np.ndarray:
        n_labels = len(self._labels)
        if idx.ndim != 2 or idx.shape[1] != n_labels:
            raise ArchitectureError(f"an index matrix must have shape (n_archs, {n_labels}), got {idx.shape}")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ArchitectureError(f"an index matrix must hold integers, got dtype {idx.dtype}")
        bad = (idx < 0) | (idx >= self._n_choices)
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            label = self._labels[col]
            raise ArchitectureError(f"index {int(idx[row, col])} (architecture {row}) is out of range for label "
                                    f"{label!r} ({len(self._choices[label])} choices: {list(self._choices[label])})")
        return idx

    def _explain(self, arch: Any) -> None:
        """Raise the :class:`ArchitectureError` that says what is wrong with ``arch``."""
        space = self._doc["space"]["name"]
        if not isinstance(arch, Mapping):
            raise ArchitectureError(f"{space}: an architecture is a dict label -> choice name, "
                                    f"got {type(arch).__name__}")
        unknown = [k for k in arch if k not in self._position]
        if unknown:
            raise ArchitectureError(f"{space}: unknown label(s) {unknown}; valid labels: {list(self._labels)}")
        missing = [k for k in self._labels if k not in arch]
        if missing:
            raise ArchitectureError(f"{space}: missing label(s) {missing}; every label needs a choice")
        for label, value in arch.items():
            if not (isinstance(value, str) and value in self._position[label]):
                raise ArchitectureError(f"{space}: label {label!r} has no choice {value!r}; "
                                        f"valid choices: {list(self._choices[label])}")
        raise ArchitectureError(f"{space}: invalid architecture {arch!r}")

    # -- scoring ----------------------------------------------------------------------------------------------------
    def latency_batch(self, archs: Sequence[Mapping[str, str]] | np.ndarray) -> np.ndarray:
        """Latency of many architectures, ms.

        Parameters
        ----------
        archs : list of dict, or int array of shape (n, L)
            Architectures, or their choice indices (labels in :attr:`labels` order, choices in :attr:`choices`
            order: :func:`search_spaces.arch_to_indices`).

        Returns
        -------
        numpy.ndarray of float64, shape (n,)
            ``fixed_latency + Σ_l row_l[choice_l]``: one gather and a sum.

        Raises
        ------
        ArchitectureError
            Naming the unknown / missing label or the invalid choice or index.
        """
        idx = self._indices(archs)
        return self._fixed_lat + self._lat[self._rows, idx].sum(axis=1)

    def macs_batch(self, archs: Sequence[Mapping[str, str]] | np.ndarray) -> np.ndarray:
        """Multiply-accumulates per image of many architectures (int64, equal to :func:`search_spaces.count_macs`
        at the table's input size)."""
        idx = self._indices(archs)
        return self._fixed_macs + self._macs[self._rows, idx].sum(axis=1)

    def params_batch(self, archs: Sequence[Mapping[str, str]] | np.ndarray) -> np.ndarray:
        """Parameter counts of many architectures (int64, equal to :func:`search_spaces.count_params`)."""
        idx = self._indices(archs)
        return self._fixed_params + self._params[self._rows, idx].sum(axis=1)

    def latency(self, arch: Mapping[str, str]) -> float:
        """Latency of one architecture (dict label → choice), ms."""
        return float(self.latency_batch([arch])[0])

    def macs(self, arch: Mapping[str, str]) -> int:
        """Multiply-accumulates per image of one architecture."""
        return int(self.macs_batch([arch])[0])

    def params(self, arch: Mapping[str, str]) -> int:
        """Parameter count of one architecture."""
        return int(self.params_batch([arch])[0])

    # -- extremes ---------------------------------------------------------------------------------------------------
    def _extreme(self, pick: Any) -> dict[str, str]:
        idx = pick(self._lat, axis=1)   # NaN padding is ignored by nanargmin / nanargmax; ties: first choice
        return {label: self._choices[label][int(j)] for label, j in zip(self._labels, idx)}

    def fastest_arch(self) -> dict[str, str]:
        """The architecture of :meth:`min_latency` (per label the fastest choice; ties: the first)."""
        return self._extreme(np.nanargmin)

    def slowest_arch(self) -> dict[str, str]:
        """The architecture of :meth:`max_latency` (per label the slowest choice; ties: the first)."""
        return self._extreme(np.nanargmax)

    def min_latency(self) -> float:
        """Smallest latency of the space, ms (exact: ``fixed + Σ_l min row_l``)."""
        return self.latency(self.fastest_arch())

    def max_latency(self) -> float:
        """Largest latency of the space, ms (exact: ``fixed + Σ_l max row_l``)."""
        return self.latency(self.slowest_arch())

    # -- differentiable ---------------------------------------------------------------------------------------------
    def as_tensor(self, dtype: Any = None, device: Any = None) -> Any:
        """The latency rows as a torch tensor of shape (L, max_choices), ms, zero-padded beyond :attr:`n_choices`."""
        import torch

        return torch.tensor(np.nan_to_num(self._lat, nan=0.0), dtype=dtype or torch.float32, device=device)

    def expected_latency(self, probs: Any) -> Any:
        """Expected latency under independent per-label choice probabilities, ms (differentiable).

        Parameters
        ----------
        probs : dict of str to Tensor, or Tensor of shape (L, max_choices)
            Per label a probability vector over its choices (in :attr:`choices` order), e.g.
            ``softmax(alpha_l)``; or all of them as one zero-padded matrix (labels in :attr:`labels` order).

        Returns
        -------
        torch.Tensor
            A scalar ``fixed_latency + Σ_l probs_l · row_l`` of the probabilities' dtype and device; it equals
            :meth:`latency` for one-hot probabilities.
        """
        import torch

        if isinstance(probs, Mapping):
            unknown = [k for k in probs if k not in self._position]
            missing = [k for k in self._labels if k not in probs]
            if unknown or missing:
                raise ArchitectureError(f"expected_latency: unknown label(s) {unknown}, missing label(s) {missing}")
            total = None
            for i, label in enumerate(self._labels):
                p = probs[label]
                k = len(self._choices[label])
                if p.shape != (k,):
                    raise ValueError(f"expected_latency: label {label!r} needs {k} probabilities, got {tuple(p.shape)}")
                term = p @ torch.tensor(self._lat[i, :k].tolist(), dtype=p.dtype, device=p.device)
                total = term if total is None else total + term
            return total + self._fixed_lat if total is not None else torch.tensor(self._fixed_lat)
        shape = (len(self._labels), self._lat.shape[1])
        if tuple(probs.shape) != shape:
            raise ValueError(f"expected_latency: a probability matrix must have shape {shape}, got {tuple(probs.shape)}")
        return (probs * self.as_tensor(probs.dtype, probs.device)).sum() + self._fixed_lat

    # -- files ------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The table's JSON document (a copy): what :meth:`save` writes and the constructor takes."""
        return json.loads(json.dumps(self._doc))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as one JSON file (atomically, :func:`hwnas.files.atomic_write`). Returns the path."""
        return atomic_write(path, json.dumps(self._doc, indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """Read a table written by :meth:`save`.

        Raises
        ------
        TableFileError
            Missing or corrupt file, or a schema newer than this hwnas reads.
        """
        try:
            with open(path, "rb") as f:
                document = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            raise TableFileError(f"no latency table at {os.fspath(path)!r}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TableFileError(f"latency table {os.fspath(path)!r} is not readable JSON: {err}") from None
        try:
            return cls(document)
        except TableFileError as err:
            raise TableFileError(f"{os.fspath(path)}: {err}") from None


# ----- building ------------------------------------------------------------------------------------------------------
def _space_name(space: Any) -> str:
    import search_spaces as ss

    return ss.space_name(space) or f"{type(space).__module__}.{type(space).__qualname__}"


def _config_dict(config: Any) -> dict[str, Any]:
    """The space config as canonical JSON data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True))


def _measure(space: Any, predictor: Any, shape: tuple[int, ...], identity: dict[str, Any],
             progress: bool) -> dict[str, Any]:
    """The table document: price, count and check every slot candidate."""
    from torch import nn

    from hwnas import __version__
    from hwnas.graph import capture
    from hwnas.kernels import op_macs, output_in_group

    batch = shape[0]
    slots = space_slots(space, shape)
    layout = getattr(predictor, "layout", None)
    in_group = False   # the network input is a plain tensor; each slot's input has its predecessor's layout
    fixed_slots: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []
    ends: list[dict[str, tuple[set[str], str | None, bool]]] = []   # per slot: choice -> (tails, head, empty)
    for n, slot in enumerate(slots, start=1):
        if progress:
            print(f"latency table: slot {n}/{len(slots)} {slot.name} ({len(slot.candidates)} candidate(s))",
                  file=sys.stderr, flush=True)
        rows: dict[str, tuple[float, int, int]] = {}
        slot_ends = {}
        out_layout: dict[str, bool] = {}
        for choice, module in slot.candidates.items():
            # Wrapped, so that a bare leaf module (nn.Identity) is captured as the op it is inside the network.
            graph = capture(nn.Sequential(module), "torch", slot.in_shape)
            if layout is None:
                kernels = predictor.kernels(graph, "graph")
            else:
                kernels = predictor.graph_kernels(graph, inputs_in_group=in_group, output_returned=n == len(slots))
                out_layout[choice] = output_in_group(graph, layout, in_group)
            ms = float(predictor.kernel_latencies(kernels).sum())
            macs = sum(op_macs(node) for node in graph.nodes)
            if macs % batch:
                raise ValueError(f"{slot.name}:{choice}: {macs} MACs are not a multiple of the batch {batch}")
            rows[choice] = (ms, macs // batch, sum(p.numel() for p in module.parameters()))
            slot_ends[choice] = graph_ends(graph)
        ends.append(slot_ends)
        if len(set(out_layout.values())) > 1:
            which = {c: ("backend layout" if v else "plain") for c, v in out_layout.items()}
            raise FusionBoundaryError(
                f"predictor {predictor.name!r}: a per-block latency table would not be exact: the tensor after "
                f"{slot.name} is in a layout that depends on its choice ({which}), so the next block's kernels "
                "would depend on it (pairwise terms, which this table does not have); score whole subnets with "
                "predictor.predict instead")
        in_group = next(iter(out_layout.values()), in_group)
        if slot.label is None:
            ms, macs, params = rows["fixed"]
            fixed_slots.append({"name": slot.name, "latency_ms": ms, "macs": macs, "params": params})
        else:
            names = list(slot.candidates)
            blocks.append({"label": slot.label, "choices": names,
                           "latency_ms": [rows[c][0] for c in names], "macs": [rows[c][1] for c in names],
                           "params": [rows[c][2] for c in names]})
    check_boundaries(slots, ends, predictor)
    overhead = float(predictor.overhead_ms)
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "hwnas_version": __version__, "units": dict(UNITS),
        **identity,
        "predictor": {**identity["predictor"], "backend": getattr(predictor, "backend", None)},
        "fixed": {"latency_ms": math.fsum(s["latency_ms"] for s in fixed_slots) + overhead, "overhead_ms": overhead,
                  "macs": sum(s["macs"] for s in fixed_slots), "params": sum(s["params"] for s in fixed_slots),
                  "slots": fixed_slots},
        "blocks": blocks,
    }


# ----- documents -----------------------------------------------------------------------------------------------------
def _checked(document: Mapping[str, Any]) -> dict[str, Any]:
    """A validated deep copy of a table document."""
    try:
        doc = json.loads(json.dumps(document, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TableFileError(f"a latency table must be finite JSON data: {err}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise TableFileError(f"not a latency table (schema {doc.get('schema') if isinstance(doc, dict) else None!r}, "
                             f"expected {SCHEMA!r})")
    version = doc.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise TableFileError(f"invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise TableFileError(f"latency table schema version {version} is newer than this hwnas reads "
                             f"({SCHEMA_VERSION}); upgrade hwnas or rebuild the table")
    if (doc.get("units") or {}).get("latency") != "ms":
        raise TableFileError(f"latency units must be 'ms', got {(doc.get('units') or {}).get('latency')!r}")
    for key in ("space", "input_shape", "predictor", "fixed", "blocks"):
        if key not in doc:
            raise TableFileError(f"latency table without {key!r}")
    _rename_flops(doc)
    fixed = doc["fixed"]
    if not (isinstance(fixed, dict) and _number(fixed.get("latency_ms")) and _integer(fixed.get("macs"))
            and _integer(fixed.get("params"))):
        raise TableFileError("'fixed' needs a number 'latency_ms' and integers 'macs' and 'params'")
    labels: set[str] = set()
    if not isinstance(doc["blocks"], list):
        raise TableFileError(f"'blocks' must be a list, got {type(doc['blocks']).__name__}")
    for b in doc["blocks"]:
        label = b.get("label") if isinstance(b, dict) else None
        if not isinstance(label, str) or label in labels:
            raise TableFileError(f"block without a label or with a repeated label: {label!r}")
        labels.add(label)
        names = b.get("choices")
        if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names) or len(set(names)) != len(names):
            raise TableFileError(f"label {label!r}: choices must be distinct strings, got {names!r}")
        for key, ok in (("latency_ms", _number), ("macs", _integer), ("params", _integer)):
            values = b.get(key)
            if not isinstance(values, list) or len(values) != len(names) or not all(ok(v) for v in values):
                raise TableFileError(f"label {label!r}: {key!r} must hold {len(names)} numbers, got {values!r}")
    return doc


def _rename_flops(doc: dict[str, Any]) -> None:
    """Schema version 1 called the multiply-accumulates ``flops``: rename them ``macs`` in place."""
    fixed = doc["fixed"] if isinstance(doc["fixed"], dict) else {}
    slots = fixed.get("slots") if isinstance(fixed.get("slots"), list) else []
    blocks = doc["blocks"] if isinstance(doc["blocks"], list) else []
    for part in [doc.get("units"), fixed, *slots, *blocks]:
        if isinstance(part, dict) and "flops" in part and "macs" not in part:
            part["macs"] = part.pop("flops")


def _padded(blocks: list[dict[str, Any]], key: str, dtype: Any, fill: Any) -> np.ndarray:
    width = max((len(b["choices"]) for b in blocks), default=1)
    out = np.full((len(blocks), width), fill, dtype=dtype)
    for i, b in enumerate(blocks):
        out[i, :len(b[key])] = b[key]
    out.flags.writeable = False
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
