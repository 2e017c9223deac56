"""The reference workload: how fast the machine is now.

The reference workload (:func:`reference_workload`, :func:`reference_ms`) is a small, fixed set of kernels and a
tiny MobileNet-like net built in code with fixed seeds (no downloads). Timed with the same protocol next to the
measured kernels or models, it tells how fast the machine was at the time (whole processes drift 7–27% on a
shared VM). It is a diagnostic only: no predictor records a reference time and nothing rescales predictions by
it (``experiments/benchmarks/noise.py`` prints measurements divided by it).

Apart from :mod:`hwnas.builder._protocol` because timing needs a backend (:mod:`hwnas.builder._backends`), and
the backends need the protocol.
"""

from __future__ import annotations

from typing import Any

from hwnas.builder._backends import get_backend
from hwnas.builder._protocol import DEFAULT_PROTOCOL, MeasureProtocol

REFERENCE_VERSION = "ref-v1"


def reference_workload() -> dict[str, tuple[Any, tuple[int, ...]]]:
    """The fixed reference set: name -> (module in eval mode, input shape).

    Built from fixed seeds inside :func:`torch.random.fork_rng` (the global RNG is left untouched). About 2–5 ms
    in total per pass at 1 thread on a Zen3/AVX2 core. Changing this set changes :data:`REFERENCE_VERSION`.
    """
    import torch
    from torch import nn

    def cbr(cin: int, cout: int, k: int, s: int, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                             act())

    class _InvRes(nn.Module):
        def __init__(self, cin: int, cout: int, s: int, e: int = 4):
            super().__init__()
            mid = cin * e
            self.body = nn.Sequential(cbr(cin, mid, 1, 1, act=nn.ReLU6), cbr(mid, mid, 3, s, mid, act=nn.ReLU6),
                                      nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.res = s == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.res else y

    items: dict[str, tuple[Any, tuple[int, ...]]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20261123)
        items["conv3x3_c32_h56"] = (cbr(32, 32, 3, 1), (1, 32, 56, 56))
        items["dwconv3x3_c96_h56"] = (cbr(96, 96, 3, 1, 96, nn.ReLU6), (1, 96, 56, 56))
        items["conv1x1_c128_h28"] = (cbr(128, 128, 1, 1), (1, 128, 28, 28))
        items["fc_1280_1000"] = (nn.Linear(1280, 1000), (1, 1280))
        items["mbnet_tiny_128"] = (nn.Sequential(
            cbr(3, 16, 3, 2, act=nn.Hardswish), _InvRes(16, 16, 1), _InvRes(16, 24, 2), _InvRes(24, 24, 1),
            _InvRes(24, 40, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 10)), (1, 3, 128, 128))
        for module, _ in items.values():
            for m in module.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
            module.eval()
    return items


def reference_ms(backend: Any = "torchscript-cpu", protocol: MeasureProtocol | None = None) -> dict[str, Any]:
    """Time the reference workload on a backend, with the given protocol.

    Parameters
    ----------
    backend : str or Backend
        Backend name (see :func:`hwnas.builder.list_backends`) or instance.
    protocol : MeasureProtocol, optional
        Defaults to :data:`DEFAULT_PROTOCOL`.

    Returns
    -------
    dict
        ``{"version", "backend", "protocol_id", "items": {name: ms}, "total_ms"}``: how fast the machine is now
        (a diagnostic: nothing in hwnas rescales predictions by it).
    """
    protocol = protocol or DEFAULT_PROTOCOL
    be = get_backend(backend)
    items = {name: be.measure(module, shape, protocol).ms for name, (module, shape) in reference_workload().items()}
    return {"version": REFERENCE_VERSION, "backend": be.name, "protocol_id": protocol.id, "items": items,
            "total_ms": float(sum(items.values()))}
