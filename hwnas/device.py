"""Device fingerprint: which machine and runtimes a measurement was taken on.

This module knows no measurement code: the predictor (to tell whether it describes this machine), the predictor
registry (to choose one for this machine) and the builder (to tag every measurement) all read it.

:func:`fingerprint` gathers the CPU model, the instruction-set flags that decide which kernels a runtime picks
(AVX2, AVX-512 families, FMA, AMX, VNNI; NEON/SVE on ARM), core counts, machine architecture, operating system and
the runtime versions (torch, onnxruntime, numpy). :func:`same_device` compares only what changes kernel speed for
a given runtime build: CPU model, relevant flags and architecture. Runtime versions are compared separately
(:func:`same_runtime`) because a measurement store or predictor also depends on them.
:func:`last_level_cache_bytes` reads the size of the last-level cache (what cold-weight timing must flush).

Nothing is imported at module import; reading the fingerprint reads ``/proc/cpuinfo`` on Linux and asks
``platform`` elsewhere. torch is queried (for its dispatch capability) only if it is already installed.

Limitations
-----------
- On virtual machines the CPU model name may be generic (``"Intel Xeon Processor"``), and the flags are those the
  hypervisor exposes; two VMs of one instance type normally agree, which is what :func:`same_device` needs.
- CPU frequency, turbo and co-tenants are not in the fingerprint; they are measured instead (reference workload).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from importlib import metadata
from typing import Any, Mapping

#: Flags that decide kernel selection (x86 and ARM spellings as in /proc/cpuinfo).
KERNEL_FLAGS = frozenset({
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx_vnni_int8", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
    "neon", "asimd", "asimdhp", "asimddp", "asimdfhm", "sve", "sve2", "i8mm", "bf16", "sme",
})
_KERNEL_FLAG_PREFIXES = ("avx512", "amx")

#: Keys of :func:`fingerprint` that :func:`same_device` compares (and :func:`device_id` hashes, with the optional keys).
DEVICE_KEYS = ("cpu_model", "kernel_flags", "arch")
#: Keys compared only when both fingerprints have them (older fingerprints lack them): ``cpu_signature`` tells
#: apart CPUs that share a model name and flags ("AMD EPYC" with AVX2 is a Zen 1 or a Zen 3 core, family 23 or 25).
OPTIONAL_DEVICE_KEYS = ("cpu_signature",)
#: Instruction-set levels, widest first, with the flag that marks each (x86 and ARM).
ISA_LEVELS = (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("sse4", "sse4_2"),
              ("sve", "sve"), ("neon", "asimd"))
#: Runtime packages whose versions are recorded.
RUNTIMES = ("torch", "onnxruntime", "numpy")


def _read_cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """First processor block of /proc/cpuinfo as a dict (empty where unreadable)."""
    info: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return info


def _physical_cores(path: str = "/proc/cpuinfo") -> int | None:
    pairs, phys = set(), None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    pairs.add((phys, value.strip()))
    except OSError:
        return None
    return len(pairs) or None


def relevant_flags(flags: str | list[str] | set[str]) -> list[str]:
    """The kernel-relevant subset of CPU flags, sorted (see :data:`KERNEL_FLAGS`)."""
    items = flags.split() if isinstance(flags, str) else list(flags)
    return sorted({f.lower() for f in items
                   if f.lower() in KERNEL_FLAGS or f.lower().startswith(_KERNEL_FLAG_PREFIXES)})


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _torch_capability() -> str | None:
    """torch's CPU dispatch level (``"AVX2"``, ``"AVX512"``...) if torch is installed."""
    if _version("torch") is None:
        return None
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - informative only; a torch build without it must not break fingerprinting
        return None


def fingerprint() -> dict[str, Any]:
    """The device and runtime fingerprint of this machine.

    Returns
    -------
    dict
        JSON-safe: ``cpu_model``, ``cpu_vendor``, ``kernel_flags`` (sorted list), ``virtualized`` (hypervisor flag
        seen), ``logical_cores``, ``physical_cores``, ``usable_cores`` (CPU affinity), ``arch``, ``os``,
        ``python``, ``runtimes`` ({package: version or None}), ``torch_cpu_capability``, ``device_id`` (a
        short hash of :data:`DEVICE_KEYS`) and ``fingerprint_id`` (the same plus runtime versions).
    """
    info = _read_cpuinfo()
    flags_text = info.get("flags") or info.get("features") or ""
    model = info.get("model name") or info.get("hardware") or info.get("cpu model") or platform.processor() or \
        "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    family, number = info.get("cpu family"), info.get("model")
    fp: dict[str, Any] = {
        "cpu_model": re.sub(r"\s+", " ", model).strip(),
        "cpu_signature": f"family {family} model {number}" if family and number else None,
        "cpu_vendor": info.get("vendor_id") or info.get("cpu implementer"),
        "kernel_flags": relevant_flags(flags_text),
        "virtualized": "hypervisor" in flags_text.split(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": usable,
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "runtimes": {name: _version(name) for name in RUNTIMES},
        "torch_cpu_capability": _torch_capability(),
    }
    fp["device_id"] = device_id(fp)
    fp["fingerprint_id"] = fingerprint_id(fp)
    return fp


def _device_key(fp: Mapping[str, Any]) -> dict[str, Any]:
    """What the ids hash: :data:`DEVICE_KEYS`, and each optional key the fingerprint has (so a fingerprint
    without one keeps the id it had before that key existed, and two CPUs told apart only by it get two ids)."""
    key = {k: fp.get(k) for k in DEVICE_KEYS}
    key.update({k: fp[k] for k in OPTIONAL_DEVICE_KEYS if fp.get(k) is not None})
    return key


def device_id(fp: Mapping[str, Any]) -> str:
    """Short stable id of the parts :func:`same_device` compares, e.g. ``"d-1a2b3c4d"``."""
    key = _device_key(fp)
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return "d-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def fingerprint_id(fp: Mapping[str, Any]) -> str:
    """Short stable id of the device keys *and* runtime versions, e.g. ``"f-1a2b3c4d"``: measurements with the
    same fingerprint id are comparable (the measurement store tags each record with it)."""
    key = _device_key(fp)
    key["runtimes"] = dict(fp.get("runtimes") or {})
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return "f-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def device_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The :data:`DEVICE_KEYS` on which two fingerprints differ: key -> (value in a, value in b)."""
    out = {}
    for k in DEVICE_KEYS + OPTIONAL_DEVICE_KEYS:
        va, vb = a.get(k), b.get(k)
        if k in OPTIONAL_DEVICE_KEYS and (va is None or vb is None):
            continue
        if k == "kernel_flags":
            va, vb = sorted(va or []), sorted(vb or [])
        if va != vb:
            out[k] = (va, vb)
    return out


def isa_level(fp: Mapping[str, Any]) -> str:
    """The widest vector instruction set of a fingerprint: ``"amx"``, ``"avx512"``, ``"avx2"``, ``"avx"``,
    ``"sse4"``, ``"sve"``, ``"neon"`` or ``"generic"``."""
    flags = set(fp.get("kernel_flags") or [])
    for level, flag in ISA_LEVELS:
        if flag in flags or (level == "avx512" and any(f.startswith("avx512") for f in flags)):
            return level
    return "generic"


def explain_differences(a: Mapping[str, Any], b: Mapping[str, Any], a_label: str = "predictor",
                        b_label: str = "this machine") -> str:
    """What distinguishes two devices, in words, e.g. ``"instruction set avx512 (predictor) vs avx2 (this
    machine); flags only on the predictor's: avx512bw, avx512f"``; empty when :func:`same_device`."""
    diff = device_differences(a, b)
    parts = []
    if "kernel_flags" in diff:
        ia, ib = isa_level(a), isa_level(b)
        if ia != ib:
            parts.append(f"instruction set {ia} ({a_label}) vs {ib} ({b_label})")
        fa, fb = set(diff["kernel_flags"][0]), set(diff["kernel_flags"][1])
        if fa - fb:
            parts.append(f"flags only on the {a_label}'s CPU: {_few(fa - fb)}")
        if fb - fa:
            parts.append(f"flags only on {b_label}: {_few(fb - fa)}")
    for key in ("cpu_model", "cpu_signature", "arch"):
        if key in diff:
            parts.append(f"{key.replace('_', ' ')} {diff[key][0]!r} ({a_label}) vs {diff[key][1]!r} ({b_label})")
    return "; ".join(parts)


def _few(items: set[str], n: int = 5) -> str:
    names = sorted(items)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def short_name(fp: Mapping[str, Any]) -> str:
    """A name part that tells machines apart: CPU model, instruction-set level and, where known, the CPU family
    and model numbers, e.g. ``"amd-epyc-avx2-f23m1"`` (used in default predictor names)."""
    cpu = str(fp.get("cpu_model") or "cpu").lower()
    cpu = re.sub(r"\(r\)|\(tm\)|processor|cpu @.*", " ", cpu)
    short = re.sub(r"-+", "-", "".join(c if c.isalnum() else "-" for c in cpu)).strip("-")[:32].strip("-")
    name = f"{short or 'cpu'}-{isa_level(fp)}"
    sig = re.fullmatch(r"family (\w+) model (\w+)", str(fp.get("cpu_signature") or ""))
    return f"{name}-f{sig.group(1)}m{sig.group(2)}" if sig else name


def same_device(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two fingerprints describe the same kind of device: same CPU model, relevant flags and arch.

    Core counts, OS and runtime versions are ignored here (see :func:`same_runtime`).
    """
    return not device_differences(a, b)


def same_runtime(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two fingerprints have the same runtime versions (torch, onnxruntime, numpy)."""
    return dict(a.get("runtimes") or {}) == dict(b.get("runtimes") or {})


def describe(fp: Mapping[str, Any]) -> str:
    """One line for logs: CPU model, arch, flags summary, cores, runtime versions (torch, onnxruntime, numpy, then
    any other in name order, whatever the order a stored fingerprint keeps them in)."""
    runtimes = dict(fp.get("runtimes") or {})
    order = [k for k in ("torch", "onnxruntime", "numpy") if k in runtimes] + sorted(
        k for k in runtimes if k not in ("torch", "onnxruntime", "numpy"))
    rt = ", ".join(f"{k} {runtimes[k]}" for k in order if runtimes[k])
    sig = f", {fp['cpu_signature']}" if fp.get("cpu_signature") else ""
    return (f"{fp.get('cpu_model')} ({fp.get('arch')}, {isa_level(fp)}{sig}, {fp.get('usable_cores')} usable cores"
            f"{', VM' if fp.get('virtualized') else ''}); {rt}; python {fp.get('python', sys.version.split()[0])}")


def _size_bytes(text: str) -> int:
    """``"32768K"`` / ``"32 MB"`` / ``"512"`` as bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"cannot read a cache size from {text!r}")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def last_level_cache_bytes(sysfs: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Size of the last-level data (or unified) cache of CPU 0, in bytes, read from Linux's sysfs.

    Raises
    ------
    OSError
        The cache description is not there (not Linux, or a container hiding it): nothing is guessed.
    """
    best: tuple[int, int] | None = None
    names = sorted(os.listdir(sysfs)) if os.path.isdir(sysfs) else []
    for name in names:
        d = os.path.join(sysfs, name)
        if not name.startswith("index"):
            continue
        try:
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "level")) as f:
                level = int(f.read().strip())
            with open(os.path.join(d, "size")) as f:
                size = _size_bytes(f.read())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and (best is None or level > best[0]):
            best = (level, size)
    if best is None:
        raise OSError(f"no CPU cache size readable under {sysfs}: the last-level cache size cannot be measured here")
    return best[1]
