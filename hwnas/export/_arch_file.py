"""The architecture file of a search result (``arch.json``): the architecture and what rebuilds and prices it.

Written by the searches (``best/arch.json`` of the random and NNI searches, ``arch.json`` of ProxylessNAS,
``best_arch.json`` of SPOS) and read by ``hwnas export``::

    {"space": "proxyless",
     "space_config": {"width_mult": 0.35, "input_size": 32, "num_classes": 10, ...},   # every config field
     "input_shape": [1, 3, 32, 32], "num_classes": 10,
     "arch": {"s1_b0": "k5e6", ...},
     ...}                                                                            # extra keys are kept

Older files hold only ``{label: choice}`` or ``{"arch": {...}}`` (and sometimes ``space`` / ``space_config``):
they still read, with the missing settings left to the command line. No torch import here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from hwnas.errors import HwnasError

__all__ = ["ArchFile", "arch_document", "read_arch_document"]


def _config_dict(space: str, config: Any) -> dict[str, Any]:
    """Every field of the space's config (defaults filled in), JSON-safe; the given fields when unknown."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        out = dataclasses.asdict(config)
    else:
        out = dict(config or {})
        try:
            from search_spaces import lookup

            cfg = lookup(space).config_cls(**out)
        except (ImportError, KeyError, TypeError, ValueError):
            pass   # an unregistered space or a config it rejects: keep what was given (export will say)
        else:
            out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def arch_document(space: str, config: Any, arch: Mapping[str, str], *, input_shape: Sequence[int] | None = None,
                  **extra: Any) -> dict[str, Any]:
    """The JSON document of an architecture file (see the module docstring).

    Parameters
    ----------
    space : str
        Registered space name.
    config : mapping or config dataclass
        The space's configuration; the missing fields are filled with the config class's defaults.
    arch : mapping
        Label -> choice.
    input_shape : sequence of int, optional
        The input the network was searched and priced at; ``(1, 3, input_size, input_size)`` when omitted.
    **extra
        Further keys (``record``, ``budget``, ...).
    """
    cfg = _config_dict(space, config)
    if input_shape is None and isinstance(cfg.get("input_size"), int):
        input_shape = (1, 3, cfg["input_size"], cfg["input_size"])
    doc: dict[str, Any] = {"space": str(space), "space_config": cfg,
                           "input_shape": None if input_shape is None else [int(s) for s in input_shape],
                           "num_classes": cfg.get("num_classes"),
                           "arch": {str(k): str(v) for k, v in arch.items()}}
    for key, value in extra.items():
        doc.setdefault(key, value)
    return doc


@dataclasses.dataclass
class ArchFile:
    """What an architecture file holds; settings it does not record are ``None``."""

    arch: dict[str, str]
    space: str | None = None
    space_config: dict[str, Any] | None = None
    input_shape: tuple[int, ...] | None = None


def read_arch_document(path: str | Path) -> ArchFile:
    """Read an architecture file, new (with settings) or old (architecture only).

    Raises
    ------
    HwnasError
        Missing or unreadable file, or no ``label -> choice`` object in it, or malformed settings.
    """
    try:
        data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HwnasError(f"architecture file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HwnasError(f"cannot read architecture file {str(path)!r} as JSON: {e}") from None
    doc: Mapping[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        doc, data = data, data["arch"]
    if not (isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values())):
        raise HwnasError(f"architecture file {str(path)!r} must hold a JSON object label -> choice name "
                         "(or {\"arch\": {...}})")
    space = doc.get("space")
    if isinstance(space, dict):   # {"name": ..., "config": ...} as in topk.json and the export metadata
        space, config = space.get("name"), space.get("config")
    else:
        config = doc.get("space_config")
    if space is not None and not isinstance(space, str):
        raise HwnasError(f"architecture file {str(path)!r}: 'space' must be a space name, got {space!r}")
    if config is not None and not isinstance(config, dict):
        raise HwnasError(f"architecture file {str(path)!r}: 'space_config' must be an object, got {config!r}")
    config = dict(config) if config is not None else None
    if isinstance(doc.get("num_classes"), int) and "num_classes" not in (config or {}):
        config = {**(config or {}), "num_classes": doc["num_classes"]}
    shape = doc.get("input_shape")
    if shape is not None:
        if not (isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape)):
            raise HwnasError(f"architecture file {str(path)!r}: 'input_shape' must be a list of positive ints, "
                             f"got {shape!r}")
        shape = tuple(shape)
    return ArchFile(arch={str(k): v for k, v in data.items()}, space=space, space_config=config, input_shape=shape)
