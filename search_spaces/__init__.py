"""Search spaces of hwnas: SPOS and ProxylessNAS (mobile) as NNI 3.0 ``ModelSpace``s.

Public API (everything else is private machinery and may change):

- :func:`create_space` ``(name, **config) -> ModelSpace`` — ``"spos"`` or ``"proxyless"``;
  ``space.config`` is its frozen dataclass (:class:`SposConfig`, :class:`ProxylessConfig`).
- :func:`list_spaces`, :func:`register_space` — the name registry (no I/O at import); :func:`lookup` — a name's
  :class:`SpaceEntry` (space class, config class); :func:`space_name` — the registered name of an instance.
- :func:`choices` (label -> candidate names), :func:`random_arch`, :func:`validate_arch`.
- :func:`build_subnet` — plain, scriptable ``nn.Module`` of an architecture, inheriting the
  weights of a space instance.
- :func:`count_macs` (multiply-accumulates, the papers' "FLOPs"; old name ``count_flops``), :func:`count_params`.
- :func:`layout` -> list of :class:`Slot` — the decomposition latency tables use.
- :func:`arch_to_indices`, :func:`indices_to_arch` — index-matrix encoding of architectures.

Architectures are flat JSON-safe ``dict[str, str]``: labels ``s{stage}_b{block}`` (stages from 1,
blocks from 0) mapped to choice names (``shuffle3`` ... ``xception``; ``k3e3`` ... ``k7e6``,
``skip``). The labels are the NNI ``LayerChoice`` labels, so ``space.simplify()`` and NNI samples use
the same keys.
"""

from __future__ import annotations

from hwnas.nas import quiet_nni_import

quiet_nni_import()   # before NNI's import below: its notices about torch classes are harmless

from ._api import (Slot, arch_to_indices, build_subnet, choices, count_flops, count_macs, count_params,
                   indices_to_arch, layout, random_arch, validate_arch)
from ._base import BlockSpec, ChainNet, ChainSpace, SpaceConfig
from ._registry import SpaceEntry, create_space, list_spaces, lookup, register_space, space_name
from .proxyless import ProxylessConfig, ProxylessSpace
from .spos import SposConfig, SposSpace

__all__ = [
    "BlockSpec", "ChainNet", "ChainSpace", "ProxylessConfig", "ProxylessSpace", "Slot", "SpaceConfig",
    "SpaceEntry", "SposConfig", "SposSpace", "arch_to_indices", "build_subnet", "choices", "count_flops", "count_macs",
    "count_params", "create_space", "indices_to_arch", "layout", "list_spaces", "lookup", "random_arch",
    "register_space", "space_name", "validate_arch",
]

register_space("spos", SposSpace, SposConfig)
register_space("proxyless", ProxylessSpace, ProxylessConfig)
