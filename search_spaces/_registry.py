"""Name registry of search spaces (private; use :func:`search_spaces.register_space` and friends).

The one piece of module-level state of the package: a mapping filled at import with the built-in
spaces. It is append-only (a name cannot be re-registered), so what a name means never changes
during a run; nothing is read from disk or the network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from ._base import ChainSpace, SpaceConfig

__all__ = ["SpaceEntry", "create_space", "list_spaces", "lookup", "register_space", "space_name"]


class SpaceEntry(NamedTuple):
    """A registered space: its name, model-space class and config dataclass."""

    name: str
    space_cls: type[ChainSpace]
    config_cls: type[SpaceConfig]


_SPACES: dict[str, SpaceEntry] = {}


def register_space(name: str, space_cls: type[ChainSpace], config_cls: type[SpaceConfig]) -> None:
    """Register a search space under a name.

    Parameters
    ----------
    name : str
        Stable, lower-case name (e.g. ``"spos"``).
    space_cls : type
        A subclass of :class:`~search_spaces._base.ChainSpace` (the hooks the public functions use).
    config_cls : type
        Its config dataclass (a subclass of ``SpaceConfig``; must be ``space_cls.config_cls``).

    Raises
    ------
    ValueError
        If the name is taken or not a non-empty string.
    TypeError
        If the classes do not fit together.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"space name must be a non-empty string, got {name!r}")
    if name in _SPACES:
        raise ValueError(f"search space {name!r} is already registered (to {_SPACES[name].space_cls.__name__})")
    if not (isinstance(space_cls, type) and issubclass(space_cls, ChainSpace)):
        raise TypeError(f"space_cls must be a ChainSpace subclass, got {space_cls!r}")
    if not (dataclasses.is_dataclass(config_cls) and isinstance(config_cls, type)
            and issubclass(config_cls, SpaceConfig)):
        raise TypeError(f"config_cls must be a SpaceConfig dataclass, got {config_cls!r}")
    if space_cls.config_cls is not config_cls:
        raise TypeError(f"{space_cls.__name__}.config_cls is {space_cls.config_cls.__name__}, "
                        f"not {config_cls.__name__}")
    _SPACES[name] = SpaceEntry(name, space_cls, config_cls)


def list_spaces() -> list[str]:
    """Names of the registered search spaces, sorted."""
    return sorted(_SPACES)


def lookup(name: str) -> SpaceEntry:
    """The registry entry of a space name.

    Parameters
    ----------
    name : str
        A name from :func:`list_spaces`.

    Returns
    -------
    SpaceEntry
        Its name, model-space class and config dataclass.

    Raises
    ------
    KeyError
        If ``name`` is not registered (the message lists the registered names).
    """
    try:
        return _SPACES[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown search space {name!r}; registered: {list_spaces()}") from None


def space_name(space: Any) -> str | None:
    """The registered name of a space instance's class.

    Parameters
    ----------
    space : ChainSpace
        A search space instance.

    Returns
    -------
    str or None
        The name its class is registered under (exact class, not a subclass); ``None`` if unregistered.
    """
    return next((n for n in list_spaces() if _SPACES[n].space_cls is type(space)), None)


def create_space(name: str, **config: Any) -> ChainSpace:
    """Create a registered search space.

    Parameters
    ----------
    name : str
        A name from :func:`list_spaces` (``"spos"``, ``"proxyless"``).
    **config
        Fields of the space's config dataclass (``width_mult``, ``input_size``, ``num_classes``,
        ``dropout``, ...); defaults for the rest.

    Returns
    -------
    ChainSpace
        An NNI ``ModelSpace``; ``space.config`` is its frozen config dataclass.

    Raises
    ------
    KeyError
        Unknown space name.
    TypeError
        Unknown config field.
    ValueError
        Invalid config value.
    """
    entry = lookup(name)
    cfg = entry.config_cls(**_checked_fields(entry.config_cls, config))
    # Plain keyword arguments, so that NNI records JSON-friendly init arguments for the space.
    return entry.space_cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})


def _checked_fields(config_cls: type, config: dict[str, Any]) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(config) - set(names))
    if unknown:
        raise TypeError(f"unknown {config_cls.__name__} field(s) {unknown}; valid fields: {names}")
    return config
