"""Resumable measurement store: append-only JSON Lines, one record per measurement.

A store is a ``.jsonl`` file (or ``.jsonl.gz``, the compressed copy kept in a repository). Each line is one JSON
object with a ``type``:

``device``
    ``fingerprint_id`` and the full ``fingerprint`` (see :mod:`hwnas.device`) of a machine that wrote
    measurements; written once per machine when a store is opened for writing.
``protocol``
    ``protocol_id`` and the ``protocol`` dict; written the first time a protocol is used.
``measurement``
    ``key`` (the item: kernel type + config, or model + input shape, see :func:`item_key`), ``ms`` (the latency,
    ms), ``stats`` (min, p10, median, mean, trimmed_mean, max over all runs, ms), ``block_ms``, optionally
    ``runs_ms`` and ``warmup_ms`` (raw run times, ms, rounded to 0.1 µs), ``backend``, ``input_shape``, ``protocol_id``,
    ``fingerprint_id``, ``time`` (UTC, ISO 8601) and any extra fields the caller adds.

Every record is written with one ``write`` and flushed at once (``fsync=True`` also syncs the disk), so a killed
run loses at most the record being written. Opening a store reads what is there, so a build resumes and skips the
keys already measured (:meth:`MeasurementStore.pending`). A torn last line (the kill) is ignored with a warning and
cut off before the next append; a bad line anywhere else is corruption and raises :class:`StoreError`.

Several machines of one kind measure disjoint parts (:func:`shard`, deterministic by a hash of the key) into their
own files; :func:`merge` joins them, refusing different fingerprints or protocols unless forced, and drops
duplicate keys (the first record wins).

Limitations
-----------
- One writer per file. Shards write to separate files; two processes appending to one file can interleave.
- A torn ``.jsonl.gz`` is repaired by rewriting the file (readable records only) before appending.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import hashlib
import json
import os
import warnings
import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence

from hwnas import device as _device
from hwnas.errors import StoreError
from hwnas.files import atomic_write, parse_jsonl

STORE_SCHEMA = 1
_RAW_DECIMALS = 4  # ms -> 0.1 µs


def item_key(kind: str, config: Mapping[str, Any] | None = None) -> str:
    """Stable key of a measured item: ``kind`` and its config as canonical JSON.

    Examples
    --------
    >>> item_key("conv-bn-relu", {"cin": 32, "cout": 64, "hw": 56, "k": 3, "s": 1})
    'conv-bn-relu:{"cin":32,"cout":64,"hw":56,"k":3,"s":1}'
    >>> item_key("model", {"name": "resnet18", "input_shape": [1, 3, 224, 224]})
    'model:{"input_shape":[1,3,224,224],"name":"resnet18"}'
    """
    if config is None:
        return kind
    return f"{kind}:{json.dumps(config, sort_keys=True, separators=(',', ':'), default=list)}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _is_gz(path: str) -> bool:
    return path.endswith(".gz")


# ------------------------------------------------------------------------------------------------------- reading
def _read_bytes(path: str) -> tuple[bytes, bool]:
    """File content (decompressed) and whether a gzip stream was cut short."""
    if not _is_gz(path):
        with open(path, "rb") as f:
            return f.read(), False
    data = bytearray()
    with gzip.open(path, "rb") as f:
        try:
            while True:
                chunk = f.read1(1 << 16) if hasattr(f, "read1") else f.read(1 << 16)
                if not chunk:
                    return bytes(data), False
                data += chunk
        except (EOFError, gzip.BadGzipFile, zlib.error):
            return bytes(data), True


def _parse(path: str) -> tuple[list[dict], int | None]:
    """Records of a store and, if its tail is torn, the byte offset where the complete lines end.

    Only lines ending with a newline are complete (a record is written as one line with its newline); what follows
    the last newline, or a gzip stream that ends early, is the torn record of a killed run. The lines are parsed by
    :func:`hwnas.files.parse_jsonl` (the parser of every JSON-lines file of hwnas); a corrupt complete line is a
    :class:`~hwnas.errors.StoreError` naming the store and the line.
    """
    data, gz_torn = _read_bytes(path)
    records, offset, _ = parse_jsonl(data, f"measurement store {path!r}", valid=lambda rec: isinstance(rec, dict),
                                     what="a JSON object")
    tail = data[offset:]   # after the last newline: b"" for a clean file (any byte there is a torn record)
    torn = bool(tail) or gz_torn
    if torn:
        warnings.warn(f"measurement store {path!r}: ignoring a torn last record ({len(tail)} bytes after the last "
                      f"complete line{', gzip stream cut short' if gz_torn else ''}; a run was killed while "
                      f"writing)", RuntimeWarning, stacklevel=3)
    return records, (offset if torn else None)


def read_records(path: str | os.PathLike) -> list[dict]:
    """All records of a store file (any type), in file order; a torn last line is ignored with a warning."""
    return _parse(os.fspath(path))[0]


# ------------------------------------------------------------------------------------------------------ the store
class MeasurementStore:
    """An open measurement store; create with :func:`open_store`.

    Attributes
    ----------
    path : str
        The file.
    devices : dict
        ``fingerprint_id -> fingerprint`` of the machines that wrote to it.
    protocols : dict
        ``protocol_id -> protocol dict``.
    fingerprint : dict or None
        This machine's fingerprint when writable, else None.
    """

    def __init__(self, path: str, records: list[dict], fingerprint: Mapping[str, Any] | None, fsync: bool):
        self.path = path
        self.fingerprint = dict(fingerprint) if fingerprint is not None else None
        self.devices: dict[str, dict] = {}
        self.protocols: dict[str, dict] = {}
        self._measurements: dict[str, dict] = {}
        self._fsync = fsync
        self._f: Any = None
        for rec in records:
            self._index(rec)

    def _index(self, rec: Mapping[str, Any]) -> None:
        kind = rec.get("type")
        if kind == "device":
            self.devices.setdefault(rec["fingerprint_id"], rec["fingerprint"])
        elif kind == "protocol":
            self.protocols.setdefault(rec["protocol_id"], rec["protocol"])
        elif kind == "measurement":
            self._measurements.setdefault(rec["key"], dict(rec))

    # -- reading
    def __contains__(self, key: object) -> bool:
        return key in self._measurements

    def __len__(self) -> int:
        return len(self._measurements)

    def keys(self) -> set[str]:
        """Keys already measured."""
        return set(self._measurements)

    def get(self, key: str) -> dict | None:
        """The (first) measurement record of ``key``, or None."""
        return self._measurements.get(key)

    def records(self) -> list[dict]:
        """Measurement records, one per key, in the order they were first written."""
        return list(self._measurements.values())

    def pending(self, items: Iterable[Any], key: Callable[[Any], str] | None = None) -> list:
        """Items whose key is not measured yet, in their given order (``key`` as in :func:`shard`)."""
        key = key or _default_key
        return [it for it in items if key(it) not in self._measurements]

    # -- writing
    def _write(self, rec: Mapping[str, Any]) -> None:
        if self._f is None:
            raise StoreError(f"measurement store {self.path!r} is read-only or closed")
        self._f.write((json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n").encode())
        self._f.flush()
        if self._fsync:
            raw = getattr(self._f, "fileobj", self._f)
            raw.flush()
            os.fsync(raw.fileno())
        self._index(rec)

    def _open_for_append(self) -> None:
        self._f = gzip.open(self.path, "ab") if _is_gz(self.path) else open(self.path, "ab")
        fid = self.fingerprint["fingerprint_id"]
        if fid not in self.devices:
            self._write({"type": "device", "fingerprint_id": fid, "fingerprint": self.fingerprint,
                         "schema": STORE_SCHEMA, "time": _now()})

    def append(self, key: str, measurement: Any = None, *, ms: float | None = None,
               protocol: Any = None, raw: bool = True, **extra: Any) -> dict:
        """Write one measurement record and flush it.

        Parameters
        ----------
        key : str
            The item's key (see :func:`item_key`).
        measurement : Measurement, optional
            A :class:`~hwnas.builder.Measurement`; its ms, stats, block values, runs, backend, input shape and
            protocol are recorded.
        ms : float, optional
            A bare latency (ms) when no Measurement is given (then ``protocol`` should say how it was taken).
        protocol : MeasureProtocol or dict, optional
            Overrides the measurement's protocol; required with ``ms`` to be comparable.
        raw : bool
            Keep the raw run times (``runs_ms``).
        **extra
            JSON-safe fields added to the record (e.g. ``features``, ``pass_index``).

        Returns
        -------
        dict
            The record written.
        """
        if measurement is None and ms is None:
            raise ValueError("append needs a Measurement or ms")
        rec: dict[str, Any] = {"type": "measurement", "key": key}
        if measurement is not None:
            d = measurement.to_dict(raw=raw)
            protocol = protocol or d.pop("protocol")
            d.pop("protocol", None)
            if "runs_ms" in d:
                d["runs_ms"] = [[round(t, _RAW_DECIMALS) for t in b] for b in d["runs_ms"]]
                d["warmup_ms"] = [round(t, _RAW_DECIMALS) for t in d["warmup_ms"]]
            rec.update(d)
        else:
            rec["ms"] = float(ms)
        if protocol is not None:
            pd = protocol if isinstance(protocol, Mapping) else protocol.to_dict()
            pid = pd.get("id") or "p-" + hashlib.sha256(json.dumps(pd, sort_keys=True).encode()).hexdigest()[:8]
            if pid not in self.protocols:
                self._write({"type": "protocol", "protocol_id": pid, "protocol": dict(pd)})
            rec["protocol_id"] = pid
        else:
            rec["protocol_id"] = None
        rec["fingerprint_id"] = self.fingerprint["fingerprint_id"] if self.fingerprint else None
        rec["time"] = _now()
        rec.update(extra)
        self._write(rec)
        return rec

    def close(self) -> None:
        """Close the file (further appends raise)."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "MeasurementStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MeasurementStore({self.path!r}, {len(self)} measurements, devices={sorted(self.devices)}, "
                f"{'writable' if self._f is not None else 'closed'})")


def _repair_tail(path: str, records: list[dict], good_end: int) -> None:
    """Cut a torn last record before appending: truncate a plain file, rewrite a gzip one."""
    if not _is_gz(path):
        with open(path, "r+b") as f:
            f.truncate(good_end)
        return
    atomic_write(path, _record_writer(path, records))


def _record_writer(path: str, records: Iterable[dict]) -> Callable[[Any], None]:
    """A writer of whole store files for :func:`hwnas.files.atomic_write` (gzip when ``path`` ends in ``.gz``)."""
    def write(f: Any) -> None:
        with (gzip.GzipFile(fileobj=f, mode="wb") if _is_gz(path) else contextlib.nullcontext(f)) as out:
            for rec in records:
                out.write((json.dumps(rec, separators=(",", ":")) + "\n").encode())
    return write


def _check_compatible(path: str, devices: Mapping[str, dict], fp: Mapping[str, Any]) -> None:
    for fid, other in devices.items():
        if fid == fp.get("fingerprint_id"):
            continue
        diff = _device.device_differences(other, fp)
        if diff or not _device.same_runtime(other, fp):
            what = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items()) or \
                f"runtimes: {other.get('runtimes')} vs {fp.get('runtimes')}"
            raise StoreError(f"measurement store {path!r} holds measurements of another machine or runtime "
                             f"({what}); write to another file, or pass allow_mixed=True")


def open_store(path: str | os.PathLike, *, readonly: bool = False, fingerprint: Mapping[str, Any] | None = None,
               fsync: bool = False, allow_mixed: bool = False) -> MeasurementStore:
    """Open (or create) a measurement store and read the records already in it.

    Parameters
    ----------
    path : str or path
        ``.jsonl`` or ``.jsonl.gz`` file; created (with its folder) when missing, unless ``readonly``.
    readonly : bool
        Only read; :meth:`MeasurementStore.append` raises.
    fingerprint : dict, optional
        This machine's fingerprint (default: :func:`hwnas.builder.fingerprint`); written once as a ``device``
        record and used to tag measurements.
    fsync : bool
        Sync the disk after every record (survives power loss, not only a killed process; slower).
    allow_mixed : bool
        Allow appending to a store written by a machine of another kind or with other runtime versions.

    Returns
    -------
    MeasurementStore
        Use it as a context manager, or call ``close()``.

    Raises
    ------
    StoreError
        A corrupt line other than a torn last one; or a store from another machine kind (unless ``allow_mixed``).
    """
    path = os.fspath(path)
    records, good_end = _parse(path) if os.path.exists(path) else ([], None)
    if readonly:
        if not os.path.exists(path):
            raise StoreError(f"measurement store {path!r} does not exist")
        return MeasurementStore(path, records, None, fsync)
    fp = dict(fingerprint) if fingerprint is not None else _device.fingerprint()
    fp.setdefault("fingerprint_id", _device.fingerprint_id(fp))
    store = MeasurementStore(path, records, fp, fsync)
    if not allow_mixed:
        _check_compatible(path, store.devices, fp)
    if good_end is not None:
        _repair_tail(path, records, good_end)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    store._open_for_append()
    return store


# ------------------------------------------------------------------------------------------- sharding and merging
def _default_key(item: Any) -> str:
    if isinstance(item, str):
        return item
    return json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)


def shard_index(key: str, n: int) -> int:
    """The shard (0..n-1) of a key: a stable hash (SHA-256), the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (shards are numbered from 0)."""
    try:
        i, n = (int(p) for p in str(spec).split("/"))
    except ValueError as e:
        raise ValueError(f"shard spec must be 'I/N' with integers, e.g. '0/4', got {spec!r}") from e
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard spec {spec!r}: need N >= 1 and 0 <= I < N (shards are numbered 0..N-1)")
    return i, n


def round_robin(items: Iterable[Any], key: Callable[[Any], str]) -> list:
    """Interleave items by group (stable within a group), so that work stopped early by a time budget has covered
    every group: kernels by type in a build, networks by family in a zoo pass."""
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    queues = list(groups.values())
    out: list = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def shard(items: Iterable[Any], spec: str, key: Callable[[Any], str] | None = None) -> list:
    """The items of shard ``I`` out of ``N``, in their given order.

    Parameters
    ----------
    items : iterable
        Items to measure.
    spec : str
        ``"I/N"``, shards numbered ``0..N-1``; the N shards partition the items.
    key : callable, optional
        ``item -> str``; default: the item itself if it is a string, else its canonical JSON.

    Returns
    -------
    list
        Items whose key hashes to shard ``I`` (deterministic across machines and runs).
    """
    i, n = parse_shard(spec)
    key = key or _default_key
    return [it for it in items if shard_index(key(it), n) == i]


def merge(paths: Sequence[str | os.PathLike], out: str | os.PathLike, force: bool = False) -> dict[str, Any]:
    """Join stores measured on machines of the same kind into one file, dropping duplicate keys.

    Parameters
    ----------
    paths : sequence of str or path
        Store files (``.jsonl`` or ``.jsonl.gz``), e.g. one per shard.
    out : str or path
        Output file; ``.gz`` writes it compressed. Overwritten.
    force : bool
        Merge even when the stores come from different device kinds, runtime versions or protocols.

    Returns
    -------
    dict
        ``{"out", "measurements", "duplicates", "sources": {path: measurements}, "devices", "protocols"}``.

    Raises
    ------
    StoreError
        Different fingerprints or protocols without ``force``, or a corrupt input.
    """
    out = os.fspath(out)
    devices: dict[str, dict] = {}
    protocols: dict[str, dict] = {}
    measurements: dict[str, dict] = {}
    sources: dict[str, int] = {}
    duplicates = 0
    for p in map(os.fspath, paths):
        if os.path.abspath(p) == os.path.abspath(out):
            raise StoreError(f"merge output {out!r} is also an input")
        count = 0
        for rec in read_records(p):
            kind = rec.get("type")
            if kind == "device":
                devices.setdefault(rec["fingerprint_id"], rec)
            elif kind == "protocol":
                protocols.setdefault(rec["protocol_id"], rec)
            elif kind == "measurement":
                count += 1
                if rec["key"] in measurements:
                    duplicates += 1
                else:
                    measurements[rec["key"]] = rec
        sources[p] = count
    if not force:
        fps = [d["fingerprint"] for d in devices.values()]
        for other in fps[1:]:
            diff = _device.device_differences(fps[0], other)
            if diff or not _device.same_runtime(fps[0], other):
                what = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items()) or \
                    f"runtimes: {fps[0].get('runtimes')} vs {other.get('runtimes')}"
                raise StoreError(f"refusing to merge stores of different machines or runtimes ({what}); "
                                 f"pass force=True to merge anyway")
        if len(protocols) > 1:
            raise StoreError(f"refusing to merge stores measured with different protocols {sorted(protocols)}; "
                             f"pass force=True to merge anyway")
    atomic_write(out, _record_writer(out, [*devices.values(), *protocols.values(), *measurements.values()]))
    return {"out": out, "measurements": len(measurements), "duplicates": duplicates, "sources": sources,
            "devices": sorted(devices), "protocols": sorted(protocols)}
