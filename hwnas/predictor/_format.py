"""The on-disk predictor: a directory (or a ``.zip`` of it) with ``predictor.json`` and ``regressors.npz``.

Reading never unpickles (``np.load(allow_pickle=False)``), never executes code and never touches the network.

``predictor.json`` (schema version 1)::

    schema_version   1
    name, version    predictor name and its version string
    backend          "torchscript-cpu" | "onnxruntime-cpu" | "torchscript-cuda" ...
    device           {"description": str, "fingerprint": {...}}  (hwnas.builder fingerprint of the measuring machine)
    runtime          {"torch": ..., "onnxruntime": ..., ...}
    threads, batch_size, precision, units ("ms")
    protocol         the measurement protocol (warm-up, runs, statistic ...)
    fusion_rules     [["conv", "bn", "relu"], ...]   chains the backend runs as one kernel
    zero_cost_ops    ops the backend removes at inference (a kernel made only of them costs 0 ms)
    model_overhead_ms  per-call cost of the backend, added once per model
    kernels          {kernel type: {"features": [names], "target": "ms"|"log_ms",
                                    "regressor": {"kind": "tree_ensemble"|"linear", "prefix": str}}}
    files            {"regressors.npz": sha256 hex}
    accuracy         how it was validated (free-form, numbers with units)
    created, hwnas_version
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hwnas.errors import PredictorFileError
from hwnas.predictor._regressors import REGRESSOR_KINDS, TARGETS

SCHEMA_VERSION = 1
META_FILE = "predictor.json"
ARRAYS_FILE = "regressors.npz"
REQUIRED = ("name", "backend", "units", "kernels", "files")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


def write_predictor(path: str | os.PathLike, metadata: Mapping[str, Any], regressors: Mapping[str, Any]) -> Path:
    """Write a predictor directory atomically; returns its path.

    ``metadata["kernels"][type]`` must give ``features`` and ``target``; the regressor entries, ``files`` and
    ``schema_version`` are filled in here.
    """
    path = Path(path)
    meta = json.loads(json.dumps(dict(metadata)))   # a JSON-safe copy
    kernels = meta.setdefault("kernels", {})
    arrays: dict[str, np.ndarray] = {}
    for i, (ktype, reg) in enumerate(sorted(regressors.items())):
        if ktype not in kernels:
            raise ValueError(f"regressor for {ktype!r} has no entry in metadata['kernels']")
        if len(kernels[ktype]["features"]) != reg.n_features:
            raise ValueError(f"{ktype!r}: {len(kernels[ktype]['features'])} feature names, regressor takes "
                             f"{reg.n_features}")
        prefix = f"k{i}"
        kernels[ktype]["regressor"] = {"kind": reg.kind, "prefix": prefix}
        arrays.update(reg.to_arrays(prefix))
    missing = set(kernels) - set(regressors)
    if missing:
        raise ValueError(f"kernel types without a regressor: {sorted(missing)}")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    meta["files"] = {ARRAYS_FILE: sha256_bytes(data)}
    meta["schema_version"] = SCHEMA_VERSION
    meta.setdefault("units", "ms")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    (tmp / ARRAYS_FILE).write_bytes(data)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        path.replace(old)
        tmp.replace(path)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.replace(path)
    return path


def _read_files(path: Path) -> tuple[bytes, bytes]:
    if not path.exists():
        raise PredictorFileError(f"predictor not found: {path}")
    if path.is_dir():
        meta, arr = path / META_FILE, path / ARRAYS_FILE
        if not meta.is_file():
            raise PredictorFileError(f"{meta}: missing")
        if not arr.is_file():
            raise PredictorFileError(f"{arr}: missing")
        return meta.read_bytes(), arr.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = {Path(n).name: n for n in z.namelist()}
            for f in (META_FILE, ARRAYS_FILE):
                if f not in names:
                    raise PredictorFileError(f"{path}: archive has no {f}")
            return z.read(names[META_FILE]), z.read(names[ARRAYS_FILE])
    raise PredictorFileError(f"{path}: not a predictor directory or .zip archive")


def read_predictor(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and verify a predictor; returns ``(metadata, {kernel type: regressor})``.

    Raises
    ------
    PredictorFileError
        Missing files, invalid JSON, a newer schema, missing keys, checksum mismatch, unreadable or invalid
        arrays, unknown regressor kinds, or feature counts that do not match.
    """
    path = Path(path)
    meta_bytes, arr_bytes = _read_files(path)
    where = f"{path}/{META_FILE}"
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictorFileError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise PredictorFileError(f"{where}: top level must be an object")
    version = meta.get("schema_version")
    if not isinstance(version, int):
        raise PredictorFileError(f"{where}: schema_version missing")
    if version > SCHEMA_VERSION:
        raise PredictorFileError(f"{where}: written by a newer hwnas (schema {version} > {SCHEMA_VERSION}); "
                                 "upgrade hwnas")
    for key in REQUIRED:
        if key not in meta:
            raise PredictorFileError(f"{where}: required key {key!r} missing")
    if meta["units"] != "ms":
        raise PredictorFileError(f"{where}: units must be 'ms', got {meta['units']!r}")
    expected = meta["files"].get(ARRAYS_FILE)
    if expected != sha256_bytes(arr_bytes):
        raise PredictorFileError(f"{path}/{ARRAYS_FILE}: checksum mismatch (file tampered with or corrupt)")
    try:
        npz = np.load(io.BytesIO(arr_bytes), allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except Exception as e:
        raise PredictorFileError(f"{path}/{ARRAYS_FILE}: unreadable ({type(e).__name__}: {e})") from e
    regressors = {}
    for ktype, spec in meta["kernels"].items():
        reg = spec.get("regressor") or {}
        kind = reg.get("kind")
        if kind not in REGRESSOR_KINDS:
            raise PredictorFileError(f"{where}: kernel {ktype!r} has unknown regressor kind {kind!r}")
        if spec.get("target", "ms") not in TARGETS:
            raise PredictorFileError(f"{where}: kernel {ktype!r} has unknown target {spec.get('target')!r}")
        try:
            model = REGRESSOR_KINDS[kind].from_arrays(arrays, reg.get("prefix", ""))
        except PredictorFileError as e:
            raise PredictorFileError(f"{path}/{ARRAYS_FILE}: kernel {ktype!r}: {e}") from e
        if model.n_features != len(spec.get("features", [])):
            raise PredictorFileError(f"{where}: kernel {ktype!r} lists {len(spec.get('features', []))} features, "
                                     f"its regressor takes {model.n_features}")
        regressors[ktype] = model
    return meta, regressors


def predictor_checksum(path: str | os.PathLike) -> str:
    """One stable digest of a predictor's data (array checksums + kernel specs + fusion rules)."""
    meta_bytes, _ = _read_files(Path(path))
    meta = json.loads(meta_bytes.decode("utf-8"))
    core = {k: meta.get(k) for k in ("files", "kernels", "fusion_rules", "zero_cost_ops", "model_overhead_ms")}
    return sha256_bytes(json.dumps(core, sort_keys=True).encode())[:16]
