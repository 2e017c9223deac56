"""Where predictors are found, and which one describes this machine.

Two places hold predictors: the package's own folder (``hwnas/predictors``, shipped) and the user's folder, where
``hwnas build`` and ``hwnas adapt`` register what they make: ``$HWNAS_PREDICTORS`` when set, else
``$XDG_CACHE_HOME/hwnas/predictors`` (``~/.cache/hwnas/predictors``). Each predictor is a sub-folder named after
the predictor. A name means one predictor: registering a name that is taken is refused, and a name found in both
places is an error when it is asked for, never silently shadowed.

``"auto"`` picks the predictor of a backend whose device fingerprint matches this machine
(:func:`hwnas.device.same_device`), preferring the user's (made on this very machine) and, among several, the
newest. With no match it picks the closest one (same architecture, then instruction-set level, vendor, CPU model,
shared flags) and says which machine that predictor describes, what differs and the command that adapts it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from hwnas.device import describe, explain_differences, fingerprint, isa_level, same_device
from hwnas.errors import PredictorFileError
from hwnas.files import copy_tree

#: The name that asks for the predictor of this machine.
AUTO = "auto"
#: Environment variable naming the user's predictor folder.
ENV_VAR = "HWNAS_PREDICTORS"
#: Old names of embedded predictors (renamed so that names tell CPUs apart): old -> current.
_ALIASES_FILE = "aliases.json"


@dataclasses.dataclass(frozen=True)
class PredictorEntry:
    """A predictor found on disk: its ``name``, folder ``path``, ``source`` (``"embedded"`` or ``"user"``) and its
    ``predictor.json`` content (``meta``; arrays are not loaded)."""

    name: str
    path: Path
    source: str
    meta: Mapping[str, Any]

    @property
    def backend(self) -> str | None:
        return self.meta.get("backend")

    @property
    def device_fingerprint(self) -> dict[str, Any] | None:
        dev = self.meta.get("device")
        fp = dev.get("fingerprint") if isinstance(dev, dict) else None
        return dict(fp) if isinstance(fp, dict) else None


@dataclasses.dataclass(frozen=True)
class Selection:
    """What ``"auto"`` chose: the ``entry``, whether its device ``matches`` this machine, and a ``message`` for the
    user (empty when it matches)."""

    entry: PredictorEntry
    matches: bool
    message: str


def embedded_dir() -> Path:
    """Folder of the predictors shipped inside the package."""
    return Path(str(resources.files("hwnas") / "predictors"))


def user_dir() -> Path:
    """The user's predictor folder (see the module docstring); it need not exist."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hwnas" / "predictors"


def _scan(root: Path, source: str) -> list[PredictorEntry]:
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        f = p / "predictor.json"
        if not f.is_file():
            continue
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PredictorFileError(f"{f}: unreadable predictor metadata ({e})") from None
        out.append(PredictorEntry(str(meta.get("name", p.name)), p, source, meta))
    return out


def aliases() -> dict[str, str]:
    """Old names of embedded predictors that still load: old name -> current name."""
    f = embedded_dir() / _ALIASES_FILE
    return dict(json.loads(f.read_text(encoding="utf-8"))) if f.is_file() else {}


def find_predictors(backend: str | None = None) -> list[PredictorEntry]:
    """Every predictor found, the embedded ones first, optionally of one backend only."""
    entries = _scan(embedded_dir(), "embedded") + _scan(user_dir(), "user")
    return [e for e in entries if backend is None or e.backend == backend]


def lookup(name: str) -> PredictorEntry | None:
    """The predictor called ``name`` (or an old name of an embedded one), ``None`` when there is none.

    Raises
    ------
    PredictorFileError
        Two predictors carry the name (one embedded, one in the user's folder).
    """
    name = aliases().get(name, name)
    hits = [e for e in find_predictors() if e.name == name]
    if len(hits) > 1:
        raise PredictorFileError(f"two predictors are named {name!r}: " + " and ".join(
            f"{e.path} ({e.source})" for e in hits) + "; rename or remove the user's copy (names must be unique)")
    return hits[0] if hits else None


def matches(entry: PredictorEntry, fp: Mapping[str, Any] | None = None) -> bool:
    """Whether a predictor was measured on a device like this machine (or ``fp``)."""
    theirs = entry.device_fingerprint
    return bool(theirs) and same_device(theirs, fp or fingerprint())


def _closeness(entry: PredictorEntry, fp: Mapping[str, Any]) -> tuple:
    theirs = entry.device_fingerprint or {}
    flags_a, flags_b = set(theirs.get("kernel_flags") or []), set(fp.get("kernel_flags") or [])
    shared = len(flags_a & flags_b) / max(len(flags_a | flags_b), 1)
    return (theirs.get("arch") == fp.get("arch"), isa_level(theirs) == isa_level(fp),
            theirs.get("cpu_vendor") == fp.get("cpu_vendor"), theirs.get("cpu_model") == fp.get("cpu_model"),
            shared, entry.source == "user", str(entry.meta.get("created", "")))


def adapt_command(backend: str) -> str:
    """The one command that makes a predictor of ``backend`` for this machine."""
    return f"hwnas adapt --backend {backend} --out-dir runs/adapt-{backend}"


def select(backend: str, fp: Mapping[str, Any] | None = None) -> Selection:
    """The predictor ``"auto"`` means for ``backend`` on this machine (or on a machine with fingerprint ``fp``).

    Raises
    ------
    PredictorFileError
        No predictor of that backend exists at all.
    """
    fp = fp or fingerprint()
    entries = find_predictors(backend)
    if not entries:
        known = sorted({str(e.backend) for e in find_predictors()})
        raise PredictorFileError(f"no predictor of backend {backend!r} is installed (backends with predictors: "
                                 f"{', '.join(known) or 'none'}); make one with: {adapt_command(backend)}")
    matching = [e for e in entries if matches(e, fp)]
    if matching:
        best = max(matching, key=lambda e: (e.source == "user", str(e.meta.get("created", ""))))
        return Selection(best, True, "")
    best = max(entries, key=lambda e: _closeness(e, fp))
    theirs = best.device_fingerprint
    what = (f"measured on {describe(theirs)}; differs from this machine in: {explain_differences(theirs, fp)}"
            if theirs else "it records no device fingerprint")
    msg = (f"no {backend} predictor was measured on this machine ({describe(fp)}); using the closest, "
           f"{best.name!r}, {what}. Its latencies describe that machine, not this one: uncorrected, expect errors "
           f"far beyond ±10% (the AVX-512 predictors measured 2-5x low on AVX2 CPUs). Adapt it to this machine "
           f"(about 10 minutes) with: {adapt_command(backend)}")
    return Selection(best, False, msg)


def register_predictor(path: str | os.PathLike, *, replace: bool = False) -> Path:
    """Copy a predictor directory into the user's folder under its own name, for ``"auto"`` and lookup by name.

    Parameters
    ----------
    path : path-like
        A predictor directory (``predictor.json`` and its data files).
    replace : bool
        Overwrite a user predictor of the same name (the one a rerun of the same build or adaptation wrote).

    Returns
    -------
    Path
        The registered copy.

    Raises
    ------
    PredictorFileError
        Not a predictor, or its name is taken by an embedded predictor (always) or by a user predictor
        (unless ``replace``).
    """
    from hwnas.predictor._format import read_predictor

    src = Path(path)
    meta, _ = read_predictor(src)   # verified before it is registered
    name = str(meta["name"])
    if not name or os.sep in name or name in (".", "..", AUTO):
        raise PredictorFileError(f"{src}: predictor name {name!r} cannot be registered")
    taken = [e for e in find_predictors() if (e.name == name or aliases().get(name) == e.name)
             and e.path.resolve() != src.resolve()]
    for e in taken:
        if e.source == "embedded" or not replace:
            raise PredictorFileError(
                f"a predictor named {name!r} already exists ({e.path}, {e.source}); refusing to shadow it: give "
                "this one another name (--name)" + ("" if e.source == "embedded" else " or pass replace"))
    dest = user_dir() / name
    if dest.resolve() == src.resolve():
        return dest
    return copy_tree(src, dest)
