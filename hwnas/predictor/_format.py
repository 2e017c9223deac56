"""The on-disk predictor: a directory (or ``.zip`` of it) holding ``predictor.json`` and ``regressors.npz``.

Reading a predictor never unpickles (``np.load(..., allow_pickle=False)``), never executes code and never
touches the network; every problem is a :class:`~hwnas.errors.PredictorFileError` naming the file and what is
wrong. Writing is atomic per file: each file goes to a temporary file in the target folder, then is renamed
over the old one, ``regressors.npz`` first and ``predictor.json`` last, so a reader sees either the old
predictor, the new one, or (during the instant between the two renames) a checksum error, never a silent mix.

Layout
------
``predictor.json``
    UTF-8 JSON, keys sorted, indented; the metadata below.
``regressors.npz``
    One numpy ``.npz`` (deflate-compressed zip of ``.npy`` files, no pickles) holding every kernel type's
    regressor as arrays named ``"<prefix>.<field>"`` (see :mod:`hwnas.predictor._regressors`). Written with
    fixed zip timestamps, so the same regressors always give the same bytes and the same checksum.

A ``.zip`` archive holds the two files at its root or inside one top-level folder.

Metadata schema (``schema_version`` 3; 1 and 2 are read too)
--------------------------------------
Required (checked on read):

``schema_version`` : int
    Format version; :data:`SCHEMA_VERSION` (2: adds the ``log_ms_per_unit`` target and ``calibration``; 3: adds
    ``transfer``, so that an older hwnas refuses an adapted predictor instead of ignoring its transfer). A larger
    number means a newer hwnas wrote it.
``name`` : str
    Predictor name, e.g. ``"torchscript-cpu-xeon8375c-t1"``.
``backend`` : str
    Inference backend measured, e.g. ``"torchscript-cpu"``, ``"onnxruntime-cpu"``.
``units`` : "ms"
    Unit of every latency in the file (after :func:`~hwnas.predictor._regressors.apply_target`).
``kernels`` : {kernel type: {"features": [str, ...], "target": "ms" | "log_ms" | "log_ms_per_unit", "regressor": {"kind", "prefix"}}}
    Per kernel type: the ordered feature names its regressor takes (columns of ``X``), what the regressor
    predicts (with ``"unit_feature"``, one of the features, for ``log_ms_per_unit``; schema 2), and where its arrays are (``kind`` is a key of
    :data:`~hwnas.predictor._regressors.REGRESSOR_KINDS`; ``prefix`` names its arrays in ``regressors.npz``).
    ``regressor`` is filled in by :func:`write_predictor`. Types sharing one regressor (a pool of convolutions
    with different epilogues) share its prefix: its arrays are stored once.
``files`` : {file name: sha256 hex}
    Digest of every data file, at least ``"regressors.npz"``; filled in by :func:`write_predictor`.

Descriptive (written by the builder, not required by the reader):

``version`` : str
    Predictor release, e.g. ``"2025.01.31"``.
``device`` : {"description": str, "fingerprint": {"cpu_model", "cores", ..., runtime versions}}
    Machine measured; the predictor warns when the fingerprint differs from the current machine.
``runtime`` : {"torch": str, "onnxruntime": str, ...}
    Versions of the measured runtimes.
``threads``, ``batch_size`` : int
    Intra-op threads and batch size of the measurements.
``precision`` : str
    e.g. ``"fp32"``.
``protocol`` : {...}
    Measurement protocol (warm-up, repeats, statistic, ...).
``fusion_rules`` : [...]
    Backend fusion rules (data for :class:`hwnas.kernels.FusionRules`).
``zero_cost_ops`` : [str, ...]
    Ops the backend removes (kernels made only of them cost 0 ms by declaration).
``zero_cost_kernels`` : [str, ...], optional
    Kernel types (``"reshape-permute-reshape"``) that cost 0 ms by declaration: measured inside networks, their
    time lands on neighbouring kernels. Never also in ``kernels``.
``model_overhead_ms`` : float
    Per-call backend overhead, ms, added once per model.
``calibration`` : {"kernel_scale": {kernel type: float}, "intercept_ms": float, ...}
    Factors fitted on networks measured end to end (:mod:`hwnas.builder._calibrate`); read and applied by the
    predictor (a malformed entry is a :class:`~hwnas.errors.PredictorFileError`). Schema 2.
``transfer`` : {"kernel_types": {kernel type: [a, b]}, "default": [a, b], "source": str, ...}
    Written by ``hwnas adapt``: the regressors describe the source predictor's machine, and each kernel latency
    ``ms`` they give becomes ``exp(a) * ms ** b`` on this one (``default`` for types the probe did not measure),
    before the ``calibration``. Schema 3.
``accuracy`` : {...}
    Validation report (held-out errors per kernel type, end-to-end model errors).
``created`` : str
    UTC ISO-8601 time of writing.
``hwnas_version`` : str
    hwnas version that wrote the file.

Limitations
-----------
- Files listed in ``files`` must be plain names inside the predictor (no folders); each is checked.
- A file or archive member larger than 1 GiB (uncompressed) is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from hwnas.errors import PredictorFileError
from hwnas.files import atomic_write
from hwnas.predictor._regressors import REGRESSOR_KINDS, TARGETS

__all__ = ["SCHEMA_VERSION", "write_predictor", "read_predictor", "sha256_file", "predictor_checksum"]

#: Newest metadata schema this hwnas reads and the one it writes.
SCHEMA_VERSION = 3

_JSON = "predictor.json"
_NPZ = "regressors.npz"
_MAX_BYTES = 1 << 30
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# Keys that describe how a predictor was made but do not change a single prediction.
_DESCRIPTIVE = frozenset({"name", "version", "device", "runtime", "protocol", "threads", "batch_size",
                          "precision", "accuracy", "created", "hwnas_version"})


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# writing


def write_predictor(path: str | os.PathLike, metadata: Mapping[str, Any],
                    regressors: Mapping[str, Any]) -> Path:
    """Write a predictor directory, or a ``.zip`` archive when ``path`` ends in ``.zip``.

    Parameters
    ----------
    path : path-like
        Target directory (created if needed; other files in it are left alone) or ``.zip`` file.
    metadata : mapping
        JSON-safe metadata (see the module docstring). ``metadata["kernels"][ktype]`` must give at least
        ``"features"`` and ``"target"`` for every kernel type in ``regressors``. Not modified: the written copy
        gets ``schema_version``, ``files`` and each kernel's ``regressor`` entry.
    regressors : mapping of str to regressor
        Kernel type → :class:`~hwnas.predictor._regressors.TreeEnsemble` or
        :class:`~hwnas.predictor._regressors.LinearModel`.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Metadata not JSON-safe, kernel types of metadata and regressors differ, a feature count mismatch, or an
        invalid field.
    TypeError
        A regressor of an unknown kind.
    """
    try:
        meta = json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"predictor metadata is not JSON-safe: {e}") from None
    kernels = meta.get("kernels")
    if not isinstance(kernels, dict):
        raise ValueError("metadata['kernels'] must be a dict of kernel type -> {'features', 'target'}")
    if set(kernels) != set(regressors):
        raise ValueError(f"kernel types differ: metadata only {sorted(set(kernels) - set(regressors))}, "
                         f"regressors only {sorted(set(regressors) - set(kernels))}")
    arrays: dict[str, np.ndarray] = {}
    used: set[str] = set()
    written: dict[int, str] = {}   # id of a regressor -> its prefix: one shared by several types is stored once
    for ktype in sorted(kernels):
        if not isinstance(kernels[ktype], dict):
            raise ValueError(f"metadata['kernels'][{ktype!r}] must be a dict with 'features' and 'target'")
        reg = regressors[ktype]
        kind = getattr(type(reg), "kind", None)
        if REGRESSOR_KINDS.get(kind) is not type(reg):
            raise TypeError(f"kernel {ktype!r}: {type(reg).__name__} is not a known regressor kind "
                            f"({', '.join(REGRESSOR_KINDS)})")
        if id(reg) not in written:
            written[id(reg)] = _prefix(ktype, used)
            arrays.update(reg.to_arrays(written[id(reg)]))
        kernels[ktype]["regressor"] = {"kind": kind, "prefix": written[id(reg)]}
    npz = _npz_bytes(arrays)
    meta["schema_version"] = SCHEMA_VERSION
    meta["files"] = {_NPZ: hashlib.sha256(npz).hexdigest()}
    _check_metadata(meta, "metadata to write", exc=ValueError)
    for ktype, spec in kernels.items():
        if regressors[ktype].n_features != len(spec["features"]):
            raise ValueError(f"kernel {ktype!r}: regressor takes {regressors[ktype].n_features} features, "
                             f"metadata lists {len(spec['features'])}")
    text = (json.dumps(meta, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()

    path = Path(path)
    if path.suffix.lower() == ".zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in ((_NPZ, npz), (_JSON, text)):
                zf.writestr(_zip_info(name, zipfile.ZIP_STORED if name == _NPZ else zipfile.ZIP_DEFLATED), data)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue())
    else:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / _NPZ, npz)
        atomic_write(path / _JSON, text)
    return path


def _prefix(ktype: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]", "_", ktype) or "kernel"
    prefix, i = base, 1
    while prefix in used:
        prefix, i = f"{base}_{i}", i + 1
    used.add(prefix)
    return prefix


def _zip_info(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    return info


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A standard compressed ``.npz`` (as ``np.savez_compressed``), with fixed timestamps: same arrays, same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            with zf.open(_zip_info(key + ".npy", zipfile.ZIP_DEFLATED), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arrays[key]), allow_pickle=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# reading


def read_predictor(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and verify a predictor directory or ``.zip`` archive.

    Parameters
    ----------
    path : path-like
        Predictor directory, or a ``.zip`` archive of one.

    Returns
    -------
    metadata : dict
        ``predictor.json`` content.
    regressors : dict
        Kernel type → regressor (``predict(X)`` in the kernel's target units).

    Raises
    ------
    PredictorFileError
        Missing path; neither a directory nor a zip; ``predictor.json`` missing, not valid JSON, of a newer
        schema or lacking required keys; a data file whose sha256 differs from the metadata; an unreadable npz
        (including one that would need unpickling); a missing or invalid array; a feature-count mismatch; an
        unknown regressor kind. The message names the file.
    """
    label, read = _open(path)
    meta = _load_json(read, label)
    _check_metadata(meta, f"{label}/{_JSON}")
    blobs: dict[str, bytes] = {}
    for name, digest in meta["files"].items():
        data = read(name)
        if data is None:
            raise PredictorFileError(f"{label}/{name}: listed in {_JSON} 'files' but missing")
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise PredictorFileError(f"{label}/{name}: checksum mismatch: file tampered or corrupt "
                                     f"(sha256 {got[:12]}..., {_JSON} says {digest[:12]}...)")
        blobs[name] = data
    where = f"{label}/{_NPZ}"
    arrays = _load_npz(blobs[_NPZ], where)
    regressors: dict[str, Any] = {}
    loaded: dict[tuple[str, str], Any] = {}   # (kind, prefix) -> regressor: types sharing one get one object
    for ktype, spec in meta["kernels"].items():
        reg_spec = spec["regressor"]
        cls = REGRESSOR_KINDS[reg_spec["kind"]]
        key = (reg_spec["kind"], reg_spec["prefix"])
        try:
            if key not in loaded:
                loaded[key] = cls.from_arrays(arrays, reg_spec["prefix"])
            reg = loaded[key]
        except PredictorFileError as e:
            raise PredictorFileError(f"{where}: kernel {ktype!r}: {e}") from None
        if reg.n_features != len(spec["features"]):
            raise PredictorFileError(f"{where}: kernel {ktype!r}: regressor takes {reg.n_features} features but "
                                     f"{_JSON} lists {len(spec['features'])} ({spec['features']})")
        regressors[ktype] = reg
    return meta, regressors


def predictor_checksum(source: str | os.PathLike | Mapping[str, Any]) -> str:
    """One stable hex digest identifying what a predictor predicts, for caching derived tables.

    Hashes the canonical JSON of the metadata without its descriptive keys (name, version, device, runtime,
    protocol, threads, batch size, precision, accuracy, creation time, hwnas version): so the data files'
    digests, the kernel specs, the fusion rules, the zero-cost ops and the per-model overhead. Reads only
    ``predictor.json``; :func:`read_predictor` is what verifies the data files.

    Parameters
    ----------
    source : path-like or mapping
        A predictor directory or ``.zip``, or its metadata.

    Returns
    -------
    str
        64 hex digits.
    """
    if isinstance(source, Mapping):
        meta = dict(source)
    else:
        label, read = _open(source)
        meta = _load_json(read, label)
        _check_metadata(meta, f"{label}/{_JSON}")
    kept = {k: v for k, v in meta.items() if k not in _DESCRIPTIVE}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _open(path: str | os.PathLike) -> tuple[str, Callable[[str], bytes | None]]:
    """``(label, read)``: ``read(name)`` gives a predictor file's bytes, or None when it is absent."""
    p = Path(path)
    if not p.exists():
        raise PredictorFileError(f"{p}: no such predictor directory or archive")
    if p.is_dir():
        def read_dir(name: str) -> bytes | None:
            f = p / name
            if not f.is_file():
                return None
            if f.stat().st_size > _MAX_BYTES:
                raise PredictorFileError(f"{f}: larger than {_MAX_BYTES} bytes; refusing to read it")
            return f.read_bytes()
        return str(p), read_dir
    if not zipfile.is_zipfile(p):
        raise PredictorFileError(f"{p}: not a predictor directory or .zip archive")
    try:
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise PredictorFileError(f"{p}: unreadable zip archive: {e}") from None
    root = ""
    if _JSON not in names:
        tops = sorted(n[:-len(_JSON)] for n in names if n.endswith("/" + _JSON) and n.count("/") == 1)
        if len(tops) == 1:
            root = tops[0]

    def read_zip(name: str) -> bytes | None:
        member = root + name
        if member not in names:
            return None
        try:
            with zipfile.ZipFile(p) as zf:
                if zf.getinfo(member).file_size > _MAX_BYTES:
                    raise PredictorFileError(f"{p}:{member}: larger than {_MAX_BYTES} bytes; refusing to read it")
                return zf.read(member)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:   # zlib/CRC errors surface as these
            raise PredictorFileError(f"{p}:{member}: unreadable archive member: {e}") from None

    return f"{p}:{root}".rstrip(":/") if root else str(p), read_zip


def _load_json(read: Callable[[str], bytes | None], label: str) -> dict[str, Any]:
    where = f"{label}/{_JSON}"
    data = read(_JSON)
    if data is None:
        raise PredictorFileError(f"{where}: missing; a predictor holds {_JSON} and {_NPZ}")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        meta = json.loads(data.decode("utf-8"), parse_constant=no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PredictorFileError(f"{where}: not valid JSON: {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict):
        raise PredictorFileError(f"{where}: top level must be a JSON object, got {type(meta).__name__}")
    return meta


def _check_metadata(meta: dict[str, Any], where: str, exc: type[Exception] = PredictorFileError) -> None:
    """Raise ``exc`` naming ``where`` unless ``meta`` follows the schema (regressor entries included)."""
    def fail(problem: str) -> None:
        raise exc(f"{where}: {problem}")

    version = meta.get("schema_version")
    if version is None:
        fail("'schema_version' is missing")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        fail(f"'schema_version' must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        fail(f"written by a newer hwnas (schema {version} > {SCHEMA_VERSION}); upgrade hwnas")
    missing = [k for k in ("name", "backend", "units", "kernels", "files") if k not in meta]
    if missing:
        fail(f"required keys missing: {missing}")
    for key in ("name", "backend"):
        if not isinstance(meta[key], str) or not meta[key]:
            fail(f"{key!r} must be a non-empty string, got {meta[key]!r}")
    if meta["units"] != "ms":
        fail(f"'units' must be 'ms', got {meta['units']!r}")
    files = meta["files"]
    if not isinstance(files, dict) or _NPZ not in files:
        fail(f"'files' must map file names to sha256 digests and list {_NPZ!r}")
    for name, digest in files.items():
        if not _FILE_NAME.match(name) or name == _JSON:
            fail(f"'files' lists {name!r}, which is not a plain data file name")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            fail(f"'files'[{name!r}] must be a 64-digit lowercase sha256 hex digest, got {digest!r}")
    kernels = meta["kernels"]
    if not isinstance(kernels, dict):
        fail("'kernels' must be an object of kernel type -> spec")
    for ktype, spec in kernels.items():
        if not isinstance(spec, dict):
            fail(f"kernel {ktype!r}: spec must be an object")
        feats = spec.get("features")
        if (not isinstance(feats, list) or not feats or not all(isinstance(f, str) for f in feats)
                or len(set(feats)) != len(feats)):
            fail(f"kernel {ktype!r}: 'features' must be a non-empty list of distinct names, got {feats!r}")
        if spec.get("target") not in TARGETS:
            fail(f"kernel {ktype!r}: 'target' must be one of {list(TARGETS)}, got {spec.get('target')!r}")
        if spec.get("target") == "log_ms_per_unit" and spec.get("unit_feature") not in feats:
            fail(f"kernel {ktype!r}: target 'log_ms_per_unit' needs 'unit_feature' naming one of its features, "
                 f"got {spec.get('unit_feature')!r}")
        reg = spec.get("regressor")
        if not isinstance(reg, dict) or not isinstance(reg.get("prefix"), str) or "kind" not in reg:
            fail(f"kernel {ktype!r}: 'regressor' must be an object with 'kind' and 'prefix', got {reg!r}")
        if reg["kind"] not in REGRESSOR_KINDS:
            fail(f"kernel {ktype!r}: unknown regressor kind {reg['kind']!r} (known: {', '.join(REGRESSOR_KINDS)})")
    free = meta.get("zero_cost_kernels", [])
    if not isinstance(free, list) or not all(isinstance(t, str) and t for t in free):
        fail(f"'zero_cost_kernels' must be a list of kernel type names, got {free!r}")
    both = sorted(set(free) & set(kernels))
    if both:
        fail(f"kernel types both priced and declared free ('zero_cost_kernels'): {both}")


def _load_npz(data: bytes, where: str) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            size = sum(i.file_size for i in zf.infolist())
    except zipfile.BadZipFile as e:
        raise PredictorFileError(f"{where}: unreadable npz (not a zip): {e}") from None
    if size > _MAX_BYTES:
        raise PredictorFileError(f"{where}: arrays take {size} bytes uncompressed; refusing more than {_MAX_BYTES}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        # ValueError covers object arrays ("allow_pickle=False"), bad .npy headers and non-npz files
        raise PredictorFileError(f"{where}: unreadable npz: {type(e).__name__}: {e}") from None
