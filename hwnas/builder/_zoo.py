"""The model-level set ("zoo"): twelve families, at least 40 networks each, built in code (no weights).

The builder measures it end to end to calibrate a predictor (:mod:`hwnas.builder._calibrate`) and the accuracy
benchmark (``experiments/benchmarks/predictor_accuracy.py``) scores predictors on it.

Ten torchvision CNN families with width, depth and input-resolution variants, plus random subnets of the SPOS and
ProxylessNAS spaces at several resolutions. Resolutions are chosen per family so that each network takes at most
about 150 ms at one thread (measured on an AMD EPYC VM: 0.18-114 ms on ONNX Runtime, 1.5-151 ms on TorchScript; one
pass over the set took 8 and 14 minutes).

The families match the ``families`` tags of the builder's kernel prior (``hwnas.builder._sampler``), so a
leave-one-family-out fit can drop exactly the kernels one family brought into the prior.

    from hwnas.builder._zoo import zoo
    for m in zoo():
        net = m.build(); shape = m.input_shape
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

#: Seed of the random subnets of the search spaces (kept apart from the builder's prior, which uses seeds 0..).
SPACE_SEED = 7000


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One benchmark network: ``build()`` returns an ``nn.Module`` in eval mode, input shape with batch 1."""

    family: str
    name: str
    build: Callable[[], Any]
    input_shape: tuple[int, int, int, int]

    @property
    def key(self) -> str:
        """Unique name of the network with its resolution, e.g. ``resnet50@160``."""
        return f"{self.name}@{self.input_shape[-1]}"


def _tv(name: str, **kw: Any) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kw).eval()
    return build


def _grid(family: str, variants: list[tuple[str, str, dict]], resolutions: tuple[int, ...]) -> list[ZooModel]:
    return [ZooModel(family, label, _tv(tv_name, **kw), (1, 3, r, r))
            for label, tv_name, kw in variants for r in resolutions]


def _torchvision() -> list[ZooModel]:
    out: list[ZooModel] = []
    out += _grid("mobilenet_v2", [(f"mobilenet_v2_w{w}", "mobilenet_v2", {"width_mult": w})
                                  for w in (0.35, 0.5, 0.75, 1.0, 1.25, 1.4)],
                 (96, 112, 128, 160, 192, 224, 256))
    out += _grid("mobilenet_v3", [(f"{n}_w{w}", n, {"width_mult": w}) for n in ("mobilenet_v3_large",
                                                                               "mobilenet_v3_small")
                                  for w in (0.5, 0.75, 1.0, 1.25)], (96, 128, 160, 192, 224))
    out += _grid("resnet", [(n, n, {}) for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                                 "resnext50_32x4d", "wide_resnet50_2", "resnext101_32x8d")],
                 (64, 96, 128, 160, 192))
    out += _grid("shufflenet_v2", [(n, n, {}) for n in ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
                                                        "shufflenet_v2_x1_5", "shufflenet_v2_x2_0")],
                 (64, 96, 112, 128, 160, 176, 192, 208, 224, 256))
    out += _grid("mnasnet", [(n, n, {}) for n in ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3")],
                 (64, 96, 112, 128, 160, 176, 192, 208, 224, 256))
    out += _grid("efficientnet", [(n, n, {}) for n in ("efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
                                                       "efficientnet_b3", "efficientnet_b4")],
                 (96, 128, 160, 192, 224, 240, 256, 288))
    out += _grid("regnet", [(n, n, {}) for n in ("regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf",
                                                 "regnet_y_800mf", "regnet_x_1_6gf", "regnet_y_1_6gf",
                                                 "regnet_x_3_2gf", "regnet_y_3_2gf")], (96, 128, 160, 192, 224))
    out += _grid("squeezenet", [(n, n, {}) for n in ("squeezenet1_0", "squeezenet1_1")],
                 tuple(range(64, 304, 12)))
    out += _grid("densenet", [(n, n, {}) for n in ("densenet121", "densenet169", "densenet201", "densenet161")],
                 (64, 80, 96, 112, 128, 144, 160, 176, 192, 224))
    out += _grid("googlenet", [("googlenet", "googlenet", {"aux_logits": False, "init_weights": False})],
                 tuple(range(64, 232, 8)))
    out += _grid("googlenet", [("inception_v3", "inception_v3", {"aux_logits": False, "init_weights": False})],
                 tuple(range(96, 296, 10)))
    return out


def _spaces() -> list[ZooModel]:
    import search_spaces as ss

    out = []
    for space_name in ss.list_spaces():
        for r_i, res in enumerate((96, 128, 160, 192, 224)):
            for width in (0.75, 1.0):
                space = ss.create_space(space_name, input_size=res, width_mult=width)
                for i in range(4):
                    seed = SPACE_SEED + 100 * r_i + 10 * int(width * 4) + i
                    arch = ss.random_arch(space, seed=seed)
                    out.append(ZooModel(space_name, f"{space_name}_w{width}#{seed}",
                                        lambda s=space, a=arch: ss.build_subnet(s, a).eval(), (1, 3, res, res)))
    return out


def zoo(families: tuple[str, ...] | None = None) -> list[ZooModel]:
    """All benchmark networks, optionally only some families, in a fixed order."""
    models = _torchvision() + _spaces()
    if families:
        unknown = set(families) - {m.family for m in models}
        if unknown:
            raise ValueError(f"unknown families {sorted(unknown)}")
        models = [m for m in models if m.family in families]
    return models


def zoo_store_path(raw_dir: Any) -> Any:
    """The zoo store of a build's ``raw/`` directory: ``zoo.jsonl``, or ``zoo.jsonl.gz`` when only that exists
    (stores are kept compressed in the repository; appending to the gzip store works too)."""
    from pathlib import Path

    plain = Path(raw_dir) / "zoo.jsonl"
    gz = Path(raw_dir) / "zoo.jsonl.gz"
    return gz if gz.is_file() and not plain.is_file() else plain


def zoo_key(model_key: str, pass_id: int) -> str:
    """Store key of one network's measurement in one pass."""
    return f"zoo:{model_key}:pass{pass_id}"


def measure_zoo(backend: Any, store_path: Any, pass_id: int = 0, protocol: Any = None, *, every: int = 1,
                offset: int = 0, families: tuple[str, ...] | None = None, time_budget_min: float | None = None,
                progress: bool = True) -> tuple[int, int]:
    """Time zoo networks end to end into a resumable store; one call is one *pass* (one process).

    Two passes at different times give the noise ceiling. Networks are taken round-robin over the families, so a
    pass cut short by ``time_budget_min`` still covers every family; run again to resume.

    Parameters
    ----------
    backend : str or Backend
    store_path : path-like
        JSONL store (created or resumed); records have ``kind="zoo"``, ``family``, ``model``, ``pass_id``.
    pass_id : int
        Which independent pass this is.
    protocol : MeasureProtocol, optional
        Default :data:`~hwnas.builder.DEFAULT_PROTOCOL` (use the kernels' protocol).
    every : int
        Keep every N-th network of each family (a subset, e.g. for a noise pass).
    offset : int
        Start that subset at the offset-th network of each family (another subset of the same size).
    families : tuple of str, optional
        Only these families.

    Returns
    -------
    (measured, failed) : tuple of int
    """
    import time

    from tqdm.auto import tqdm

    from hwnas.builder._backends import get_backend, release_memory
    from hwnas.builder._protocol import DEFAULT_PROTOCOL
    from hwnas.builder._store import open_store, round_robin

    protocol = protocol or DEFAULT_PROTOCOL
    models = zoo(families)
    if every > 1:
        seen: dict[str, int] = {}
        kept = []
        for m in models:
            seen[m.family] = seen.get(m.family, -1) + 1
            if seen[m.family] % every == offset % every:
                kept.append(m)
        models = kept
    be = get_backend(backend)
    store = open_store(store_path)
    todo = [m for m in round_robin(models, key=lambda m: m.family) if zoo_key(m.key, pass_id) not in store]
    deadline = time.monotonic() + 60 * time_budget_min if time_budget_min else None
    done = failed = 0
    with store:
        bar = tqdm(todo, desc=f"zoo on {be.name}, pass {pass_id}", disable=not progress)
        for m in bar:
            if deadline is not None and time.monotonic() > deadline:
                bar.write("time budget reached; run again to resume")
                break
            fields: dict[str, Any] = {"kind": "zoo", "family": m.family, "model": m.key, "pass_id": pass_id,
                                      "input_shape": list(m.input_shape)}
            try:
                net = m.build()
                t0 = time.perf_counter()
                meas = be.measure(net, m.input_shape, protocol)
                fields["wall_s"] = round(time.perf_counter() - t0, 3)
            except Exception as e:  # noqa: BLE001 - one network that fails to compile must not end the pass
                failed += 1
                store.append(zoo_key(m.key, pass_id), ms=-1.0, protocol=protocol, method="failed",
                             error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", **fields)
                continue
            finally:
                net = None
                release_memory(be)
            store.append(zoo_key(m.key, pass_id), meas, raw=False, **fields)
            done += 1
    return done, failed


if __name__ == "__main__":
    from collections import Counter

    c = Counter(m.family for m in zoo())
    for f, n in sorted(c.items()):
        print(f"{f:15s} {n}")
    print(f"{'total':15s} {sum(c.values())}")
