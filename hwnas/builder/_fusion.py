"""Fusion test: which op chains a backend runs as one kernel (nn-Meter's rule).

Ops A and B *fuse* on a backend when running them together saves more than half of the cheaper one::

    T(A) + T(B) - T(A+B) > threshold * min(T(A), T(B))        (threshold = 0.5)

For a chain of three or more ops, A is the chain without its last op (a prefix already tested) and B the last op,
so ``conv -> bn -> relu`` is tested as ``(conv -> bn) + relu``. ``T(B)`` is measured on B's own input, the output of
A. Every chain is tested on several configurations (channels, spatial size, kernel, stride) and the rule is the
majority vote (a tie is *not fused*), with the evidence (``t_a``, ``t_b``, ``t_ab`` per configuration, ms) kept.
A, B and A+B are timed in interleaved rounds, and each round's own decision is kept (``round_votes``), so a
decision inside the noise shows. Where the backend can show its compiled graph (both CPU backends can), the op
kinds of A, B and A+B are kept too (``graph``), a noise-free second opinion (e.g. BatchNorm folded into the conv).

The ``add`` op (element-wise addition) needs a second operand. Modules here take one input tensor, so:

- ``add`` alone (and ``add -> relu``) computes ``x + c`` with ``c`` a fixed tensor captured as a buffer (frozen into
  the graph as a constant; two distinct tensors are read, as in a real residual).
- ``... -> add`` after other ops (``conv -> add``, ``conv -> bn -> add``) is the residual pattern
  ``ops(x) + x`` when the shapes agree (stride 1, same channels), else ``ops(x) + c``.

Weights and BatchNorm statistics are random from fixed seeds (inside :func:`torch.random.fork_rng`, leaving the
global RNG untouched); BatchNorm runs in eval mode with non-trivial running statistics.

Limitations
-----------
- The rule measures one chain in isolation; boundary costs of the backend (e.g. ``torchscript-cpu`` converting to
  and from the oneDNN layout at graph inputs and outputs, tens of µs) are inside every ``T``. A backend whose
  boundary cost dominates small configurations can show spurious "fusion": use configurations of realistic size.
- Only linear chains are in the catalogue; branches (concat, split) are kernels on their own in nn-Meter too.
- When B is much cheaper than A (an activation after a conv), ``T(A) + T(B) - T(A+B)`` is a difference of large,
  noisy times; on a shared machine it is within the noise (seen on a busy 2-vCPU VM: per-round votes disagree).
  Decide on a quiet machine, with the default protocol, and compare with the graph evidence.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from hwnas.builder._protocol import DEFAULT_PROTOCOL, MeasureProtocol

#: Candidate op chains seen in real CNNs (ResNet, MobileNetV1-V3, EfficientNet, ShuffleNetV2), as data.
FUSION_CATALOGUE: tuple[tuple[str, ...], ...] = (
    ("conv", "bn"),
    ("conv", "relu"),
    ("conv", "relu6"),
    ("conv", "hswish"),
    ("conv", "silu"),
    ("conv", "bn", "relu"),
    ("conv", "bn", "relu6"),
    ("conv", "bn", "hswish"),
    ("conv", "bn", "silu"),
    ("dwconv", "bn"),
    ("dwconv", "bn", "relu"),
    ("dwconv", "bn", "relu6"),
    ("dwconv", "bn", "hswish"),
    ("bn", "relu"),
    ("add", "relu"),
    ("fc", "relu"),
    ("conv", "add"),
    ("conv", "bn", "add"),
)

#: Chains the graph probe (:func:`probe_fused_chains`) compiles: every activation of the op vocabulary after each
#: main op a backend could fuse it into, as data. Compiling is cheap and noise-free, so the catalogue is wide.
PROBE_CATALOGUE: tuple[tuple[str, ...], ...] = tuple(
    (main, act) for main in ("conv", "dwconv", "fc", "bn", "add")
    for act in ("relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "gelu", "tanh")
) + (("conv", "add"), ("conv", "add", "relu"), ("dwconv", "add"))

#: Ops :func:`build_op` can instantiate.
SUPPORTED_OPS = ("conv", "dwconv", "bn", "relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "gelu", "tanh",
                 "add", "fc")
_FC_FIRST = ("fc",)


def chain_name(ops: Sequence[str]) -> str:
    """Readable name of a chain, e.g. ``"conv-bn-relu"``."""
    return "-".join(ops)


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """One configuration a chain is built at.

    Parameters
    ----------
    channels : int
        Input channels (for ``fc``: input features).
    hw : int
        Input height and width (ignored for ``fc``).
    kernel : int
        Kernel size of ``conv``/``dwconv`` (padding ``kernel // 2``).
    stride : int
        Stride of ``conv``/``dwconv``.
    out_channels : int, optional
        Output channels of ``conv`` / output features of ``fc``; defaults to ``channels``.
    """

    channels: int
    hw: int
    kernel: int = 3
    stride: int = 1
    out_channels: int | None = None

    @property
    def cout(self) -> int:
        return self.out_channels or self.channels

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Default configurations: early, middle and late stages of a 224x224 ImageNet CNN, with a strided one.
DEFAULT_CONFIGS: tuple[FusionConfig, ...] = (
    FusionConfig(32, 112, 3, 1),
    FusionConfig(64, 56, 3, 1),
    FusionConfig(128, 28, 1, 1),
    FusionConfig(96, 56, 3, 2),
    FusionConfig(256, 14, 3, 1),
)


# -------------------------------------------------------------------------------------------------- the rule
def fusion_gain(t_a: float, t_b: float, t_ab: float) -> float:
    """Saved time relative to the cheaper op: ``(t_a + t_b - t_ab) / min(t_a, t_b)`` (times in ms)."""
    for name, t in (("t_a", t_a), ("t_b", t_b), ("t_ab", t_ab)):
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ValueError(f"{name} must be a positive finite time in ms, got {t!r}")
    return (t_a + t_b - t_ab) / min(t_a, t_b)


def fuses(t_a: float, t_b: float, t_ab: float, threshold: float = 0.5) -> bool:
    """nn-Meter's fusion rule: ``t_a + t_b - t_ab > threshold * min(t_a, t_b)``.

    Parameters
    ----------
    t_a, t_b : float
        Latency of op A alone and op B alone on A's output (ms), positive and finite.
    t_ab : float
        Latency of A followed by B, as one model (ms).
    threshold : float
        Fraction of the cheaper op that must be saved; nn-Meter uses 0.5.

    Returns
    -------
    bool
        True when the saving is strictly above the threshold.

    Raises
    ------
    ValueError
        A time that is not positive and finite.
    """
    return fusion_gain(t_a, t_b, t_ab) > threshold


def vote(evidence: Sequence[Mapping[str, float]], threshold: float = 0.5) -> dict[str, Any]:
    """Majority vote of the rule over configurations.

    Parameters
    ----------
    evidence : sequence of mapping
        One mapping per configuration with ``t_a``, ``t_b``, ``t_ab`` (ms).
    threshold : float
        As in :func:`fuses`.

    Returns
    -------
    dict
        ``fused`` (strict majority; a tie is False), ``votes_for``, ``votes``, ``share``, ``median_gain`` and
        ``evidence`` (the inputs, each with its ``gain`` and ``fused`` added).
    """
    if not evidence:
        raise ValueError("vote needs at least one configuration")
    rows = []
    for e in evidence:
        gain = fusion_gain(e["t_a"], e["t_b"], e["t_ab"])
        rows.append({**e, "gain": gain, "fused": gain > threshold})
    k = sum(r["fused"] for r in rows)
    gains = sorted(r["gain"] for r in rows)
    n = len(gains)
    median = gains[n // 2] if n % 2 else 0.5 * (gains[n // 2 - 1] + gains[n // 2])
    return {"fused": 2 * k > n, "votes_for": k, "votes": n, "share": k / n, "median_gain": median,
            "threshold": threshold, "evidence": rows}


# ------------------------------------------------------------------------------------------------ the modules
class AddConst(nn.Module):
    """``x + c`` with ``c`` a fixed tensor of x's shape (the second operand of a binary add)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.register_buffer("c", torch.randn(tuple(shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c


class ResidualAdd(nn.Module):
    """Marker step of a :class:`Chain`: add the chain's input (the skip connection) here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - Chain does the add
        return x


class Chain(nn.Module):
    """Ops applied in order; a :class:`ResidualAdd` step adds the chain's input."""

    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        for op in self.ops:
            x = x + skip if isinstance(op, ResidualAdd) else op(x)
        return x


def chain_input_shape(ops: Sequence[str], cfg: FusionConfig) -> tuple[int, ...]:
    """Input shape (batch 1) of a chain starting with ``ops[0]`` at ``cfg``."""
    if ops[0] in _FC_FIRST:
        return (1, cfg.channels)
    return (1, cfg.channels, cfg.hw, cfg.hw)


def _conv_out(hw: int, k: int, s: int) -> int:
    return (hw + 2 * (k // 2) - k) // s + 1


def build_op(op: str, cfg: FusionConfig, in_shape: Sequence[int], *, bias: bool = True,
             residual: bool = False) -> tuple[Any, tuple[int, ...]]:
    """One op as a module for an input of ``in_shape``.

    Parameters
    ----------
    op : str
        A name from :data:`SUPPORTED_OPS`.
    cfg : FusionConfig
        Kernel, stride and output channels/features.
    in_shape : sequence of int
        The op's input shape (batch included).
    bias : bool
        Bias of ``conv``/``dwconv`` (False when a ``bn`` follows, as in real networks).
    residual : bool
        For ``add`` inside a chain: add the chain input (only valid when its shape equals ``in_shape``).

    Returns
    -------
    (nn.Module, tuple of int)
        The module (eval mode) and its output shape.
    """
    shape = tuple(int(s) for s in in_shape)
    if op in ("conv", "dwconv"):
        if len(shape) != 4:
            raise ValueError(f"{op} needs a 4-d input, got {shape}")
        c = shape[1]
        cout = c if op == "dwconv" else cfg.cout
        m = nn.Conv2d(c, cout, cfg.kernel, cfg.stride, cfg.kernel // 2, groups=c if op == "dwconv" else 1,
                      bias=bias)
        h = _conv_out(shape[2], cfg.kernel, cfg.stride)
        w = _conv_out(shape[3], cfg.kernel, cfg.stride)
        return m.eval(), (shape[0], cout, h, w)
    if op == "bn":
        m = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        return m.eval(), shape
    if op == "fc":
        if len(shape) != 2:
            raise ValueError(f"fc needs a 2-d input (batch, features), got {shape}")
        return nn.Linear(shape[1], cfg.cout).eval(), (shape[0], cfg.cout)
    acts = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "hsigmoid": nn.Hardsigmoid,
            "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}
    if op in acts:
        return acts[op]().eval(), shape
    if op == "add":
        return (ResidualAdd() if residual else AddConst(shape)).eval(), shape
    raise ValueError(f"unsupported op {op!r}; supported: {SUPPORTED_OPS}")


def build_chain(ops: Sequence[str], cfg: FusionConfig, in_shape: Sequence[int] | None = None,
                seed: int = 0) -> Any:
    """A module running ``ops`` in order, built for ``cfg``.

    Parameters
    ----------
    ops : sequence of str
        Canonical op names, e.g. ``["conv", "bn", "relu"]``.
    cfg : FusionConfig
        The configuration.
    in_shape : sequence of int, optional
        Input shape; defaults to :func:`chain_input_shape` (use it for B alone: B's input is A's output).
    seed : int
        Seed of the weights (the global RNG is left untouched).

    Returns
    -------
    nn.Module
        In eval mode, with ``.input_shape`` and ``.output_shape`` attributes (tuples).
    """
    if not ops:
        raise ValueError("a chain needs at least one op")
    shape = tuple(in_shape) if in_shape is not None else chain_input_shape(ops, cfg)
    first = shape
    modules = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, op in enumerate(ops):
            nxt = ops[i + 1] if i + 1 < len(ops) else None
            residual = op == "add" and i > 0 and shape == first
            m, shape = build_op(op, cfg, shape, bias=nxt != "bn", residual=residual)
            modules.append(m)
    chain = Chain(modules).eval()
    chain.input_shape, chain.output_shape = first, shape
    return chain


def build_test_modules(ops: Sequence[str], cfg: FusionConfig, seed: int = 0) -> dict[str, tuple[Any, tuple]]:
    """The three modules the rule times: ``"a"`` (all ops but the last), ``"b"`` (the last op alone, on A's
    output shape) and ``"ab"`` (the whole chain). Values are ``(module, input_shape)``."""
    if len(ops) < 2:
        raise ValueError(f"a fusion test needs a chain of at least two ops, got {list(ops)}")
    a = build_chain(ops[:-1], cfg, seed=seed)
    b = build_chain(ops[-1:], cfg, in_shape=a.output_shape, seed=seed + 1)
    ab = build_chain(ops, cfg, seed=seed)
    return {"a": (a, a.input_shape), "b": (b, b.input_shape), "ab": (ab, ab.input_shape)}


# ------------------------------------------------------------------------------------------------- detection
def _fc_config(cfg: FusionConfig) -> FusionConfig:
    """fc chains reuse the config's channel numbers as features, scaled to classifier-like sizes."""
    return FusionConfig(channels=cfg.channels * 8, hw=1, kernel=1, stride=1, out_channels=cfg.cout * 8)


def _time_items(be: Any, items: Mapping[str, tuple[Any, tuple]], protocol: MeasureProtocol,
                rounds: int) -> dict[str, list[tuple[float, ...]]]:
    """Compile each item once, then time them interleaved: ``rounds`` rounds of A, B, A+B, each round a full
    protocol (the first with the protocol's warm-up, later ones with 2 warm-up runs). Run times (ms) per block."""
    from hwnas.builder._backends import time_callable

    fns = {k: be.prepare(module, shape, threads=protocol.threads) for k, (module, shape) in items.items()}
    runs: dict[str, list[tuple[float, ...]]] = {k: [] for k in items}
    later = dataclasses.replace(protocol, warmup=min(protocol.warmup, 2))
    with be.runtime(protocol.threads):
        for r in range(rounds):
            for k, fn in fns.items():
                runs[k].extend(time_callable(fn, protocol if r == 0 else later)[1])
    return runs


def _graph_evidence(be: Any, mods: Mapping[str, tuple[Any, tuple]]) -> dict[str, Any] | None:
    """Op kinds of the compiled A, B and A+B, and whether A+B has fewer ops than A and B apart."""
    if not hasattr(be, "compiled_ops"):
        return None
    g = {k: be.compiled_ops(module, shape) for k, (module, shape) in mods.items()}
    g["fused"] = len(g["ab"]) < len(g["a"]) + len(g["b"])
    return g


def detect_fusion_rules(backend: Any, configs: Iterable[FusionConfig] | None = None,
                        protocol: MeasureProtocol | None = None, progress: bool = True,
                        chains: Iterable[Sequence[str]] | None = None, threshold: float = 0.5,
                        rounds: int = 3, graph_check: bool = True) -> list[dict]:
    """Measure every candidate chain on a backend and decide which fuse.

    Parameters
    ----------
    backend : str or Backend
        Backend name (see :func:`hwnas.builder.list_backends`) or instance.
    configs : iterable of FusionConfig, optional
        Configurations to test each chain at; defaults to :data:`DEFAULT_CONFIGS`.
    protocol : MeasureProtocol, optional
        Measurement protocol; defaults to :data:`~hwnas.builder.DEFAULT_PROTOCOL`.
    progress : bool
        Show a tqdm progress bar (one step per chain and configuration).
    chains : iterable of sequence of str, optional
        Chains to test; defaults to :data:`FUSION_CATALOGUE`.
    threshold : float
        The rule's threshold (see :func:`fuses`).
    rounds : int
        Interleaved rounds of A, B, A+B per configuration (see Notes).
    graph_check : bool
        Also record the compiled graphs' op kinds when the backend offers ``compiled_ops`` (see Notes).

    Returns
    -------
    list of dict
        One rule per chain: ``name``, ``ops``, ``a`` (ops of A), ``b`` (op B), ``fused``, ``votes_for``,
        ``votes``, ``share``, ``median_gain``, ``threshold``, ``backend``, ``protocol``, ``rounds`` and
        ``evidence`` (per configuration: the config, its input shape, ``t_a``, ``t_b``, ``t_ab`` in ms over all
        rounds, ``gain``, ``fused``, and ``round_votes``: the rule's decision in each round alone; rounds that
        disagree mean the saving is within the noise) and, with ``graph_check``, ``graph``: ``{"a", "b", "ab"}``
        op kinds of the compiled graphs and ``fused`` (A+B compiles to fewer kernels than A and B apart); the rule
        then has ``graph_fused``, the majority of those (None when the backend cannot show its graph).

    Notes
    -----
    The rule subtracts two large times (A, A+B) to find a small one (B): when B is a cheap activation after a
    conv, noise on T(A) of a few percent is as large as T(B). So A, B and A+B of a configuration are compiled
    once and timed in interleaved rounds (A, B, A+B, A, B, A+B...), which spreads slow phases of a shared machine
    over all three, and each time is ``protocol.block_aggregate`` over the blocks of every round.

    ``fused`` is nn-Meter's timing rule (what the predictor must reproduce: a saving, whatever its cause).
    ``graph_fused`` is noise-free structural evidence; where the two disagree, look at the evidence: B may be
    a separate but nearly free kernel (an in-place activation on a oneDNN tensor), or the timing is within noise.
    """
    from tqdm.auto import tqdm

    from hwnas.builder._backends import get_backend

    be = get_backend(backend)
    protocol = protocol or DEFAULT_PROTOCOL
    configs = tuple(configs) if configs is not None else DEFAULT_CONFIGS
    chains = [tuple(c) for c in (chains if chains is not None else FUSION_CATALOGUE)]
    if not configs:
        raise ValueError("detect_fusion_rules needs at least one configuration")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    nb = protocol.blocks
    rules = []
    bar = tqdm(total=len(chains) * len(configs), desc=f"fusion rules on {be.name}", disable=not progress)
    try:
        for ops in chains:
            evidence = []
            for cfg in configs:
                c = _fc_config(cfg) if ops[0] in _FC_FIRST else cfg
                mods = build_test_modules(ops, c)
                bar.set_postfix_str(f"{chain_name(ops)} c{c.channels} hw{c.hw}")
                graph = _graph_evidence(be, mods) if graph_check else None
                runs = _time_items(be, mods, protocol, rounds)
                t = {f"t_{k}": protocol.aggregate(runs[k]) for k in ("a", "b", "ab")}
                per_round = [fuses(*(protocol.aggregate(runs[k][r * nb:(r + 1) * nb]) for k in ("a", "b", "ab")),
                                   threshold=threshold) for r in range(rounds)]
                row = {"config": c.to_dict(), "input_shape": list(mods["ab"][1]), **t, "round_votes": per_round}
                if graph is not None:
                    row["graph"] = graph
                evidence.append(row)
                bar.update(1)
            result = vote(evidence, threshold)
            graphs = [e["graph"]["fused"] for e in evidence if "graph" in e]
            result["graph_fused"] = 2 * sum(graphs) > len(graphs) if graphs else None
            rules.append({"name": chain_name(ops), "ops": list(ops), "a": list(ops[:-1]), "b": ops[-1],
                          "backend": be.name, "protocol": protocol.to_dict(), "rounds": rounds, **result})
    finally:
        bar.close()
    return rules


#: The configuration the graph probe builds its chains at (the graph, not the time, is read: one is enough; 32
#: channels are a multiple of every NCHWc block size, so a layout transform sees the chain as in a real network).
PROBE_CONFIG = FusionConfig(32, 16, 3, 1)


def _framed(chain: Any, config: FusionConfig) -> tuple[Any, tuple]:
    """``chain`` between a convolution with a 3x3 max pool after it and another such pool (shape kept): inside a
    network, with blocked tensors in and a blocked consumer out, and nothing it could fuse into."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        front = nn.Conv2d(config.channels, config.channels, 3, 1, 1)
    m = nn.Sequential(front, nn.MaxPool2d(3, 1, 1), chain, nn.MaxPool2d(3, 1, 1)).eval()
    return m, (1, config.channels, config.hw, config.hw)


def probe_fused_chains(backend: Any, chains: Iterable[Sequence[str]] | None = None,
                       config: FusionConfig = PROBE_CONFIG) -> list[dict[str, Any]]:
    """Which op chains a backend compiles into one kernel, read from its compiled graphs.

    Nothing is timed. A chain's A (all ops but the last) and A+B are compiled as they sit inside a network: after
    a convolution and a max pool, before another max pool (ONNX Runtime's NCHWc transformer fuses an activation
    into a convolution only when a blocked consumer follows, and turns a ``BatchNormalization -> Relu`` into one
    node only on a tensor a convolution blocked). The chain fuses when B adds no op to the compiled graph
    (layout conversions left out). ``fc`` chains are compiled alone (no blocked layout), and fuse when A+B has
    fewer ops than A and B apart. This is the backend's own fusion, known before any network is traced, so it
    holds for a family no training network showed.

    Parameters
    ----------
    backend : str or Backend
        A backend with ``compiled_ops`` (both CPU backends).
    chains : iterable of sequence of str, optional
        Chains to compile; defaults to :data:`PROBE_CATALOGUE`.
    config : FusionConfig
        The configuration every chain is built at (stride 1 and as many output as input channels: the frame
        keeps the shape).

    Returns
    -------
    list of dict
        One per chain: ``ops``, ``fused``, and ``graph`` (``{"a", "ab"}``, plus ``"b"`` for ``fc`` chains: op
        kinds of each compiled part, the frame included).

    Raises
    ------
    ValueError
        The backend cannot show its compiled graph, or ``config`` changes the shape.
    """
    from hwnas.builder._backends import get_backend

    be = get_backend(backend)
    if not hasattr(be, "compiled_ops"):
        raise ValueError(f"backend {be.name!r} cannot show its compiled graph; the fusion probe needs compiled_ops")
    if config.stride != 1 or config.cout != config.channels:
        raise ValueError(f"the probe's config must keep the shape (stride 1, out_channels = channels), got {config}")
    out = []
    for ops in (tuple(c) for c in (chains if chains is not None else PROBE_CATALOGUE)):
        if ops[0] in _FC_FIRST:
            graph = {k: be.compiled_ops(m, shape) for k, (m, shape) in build_test_modules(ops, _fc_config(config)).items()}
            fused = len(graph["ab"]) < len(graph["a"]) + len(graph["b"])
        else:
            inner = config.channels, config.hw, config.hw
            graph = {k: be.compiled_ops(*_framed(build_chain(part, config, in_shape=(1, *inner)), config))
                     for k, part in (("a", ops[:-1]), ("ab", ops))}
            fused = len(graph["ab"]) == len(graph["a"])
        out.append({"ops": list(ops), "fused": bool(fused), "graph": graph})
    return out
