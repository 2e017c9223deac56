"""Which kernels to measure: a prior from real networks, plus neighbours of the configurations that predict worst.

Prior: capture networks that people deploy (torchvision CNN families at several resolutions and widths, and
random subnets of the SPOS and ProxylessNAS spaces), split them into kernels with the backend's fusion rules,
and keep the distinct kernel configurations. Adaptive sampling (nn-Meter's idea): after a first fit, perturb the
configurations whose held-out error is largest (channels, resolution) and measure those neighbours too.

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from typing import Any, Callable, Iterable, Sequence

from hwnas.builder._kernel_modules import kernel_spec
from hwnas.graph import capture
from hwnas.kernels import FusionRules, detect_kernels


@dataclasses.dataclass(frozen=True)
class PriorModel:
    """A network whose kernels enter the prior: ``build()`` returns an ``nn.Module``."""

    name: str
    family: str
    build: Callable[[], Any]
    input_shape: tuple[int, ...]


def _tv(name: str, **kw: Any) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision

        return torchvision.models.get_model(name, weights=None, **kw)
    return build


def torchvision_prior(resolutions: Sequence[int] = (160, 224)) -> list[PriorModel]:
    """Torchvision CNN families with width and resolution variants (no weights are loaded)."""
    variants: list[tuple[str, str, dict]] = []
    for w in (0.5, 0.75, 1.0, 1.4):
        variants.append((f"mobilenet_v2_w{w}", "mobilenet_v2", {"width_mult": w}))
    for w in (0.75, 1.0):
        variants += [(f"mobilenet_v3_large_w{w}", "mobilenet_v3", {"width_mult": w}),
                     (f"mobilenet_v3_small_w{w}", "mobilenet_v3", {"width_mult": w})]
    for n in ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"):
        variants.append((n, "shufflenet_v2", {}))
    for n in ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"):
        variants.append((n, "mnasnet", {}))
    for n in ("resnet18", "resnet34", "resnet50", "resnext50_32x4d"):
        variants.append((n, "resnet", {}))
    for n in ("efficientnet_b0", "efficientnet_b1"):
        variants.append((n, "efficientnet", {}))
    for n in ("regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf", "regnet_y_800mf"):
        variants.append((n, "regnet", {}))
    for n in ("squeezenet1_0", "squeezenet1_1"):
        variants.append((n, "squeezenet", {}))
    variants += [("densenet121", "densenet", {}), ("googlenet", "googlenet", {"aux_logits": False,
                                                                               "init_weights": False})]
    out = []
    for name, family, kw in variants:
        tv_name = name.split("_w")[0] if name.startswith("mobilenet") else name
        for r in resolutions:
            out.append(PriorModel(f"{name}@{r}", family, _tv(tv_name, **kw), (1, 3, r, r)))
    # families whose input size is fixed by the architecture (position embeddings, 7x7 adaptive pooling heads)
    for name, family in (("vit_b_16", "vit"), ("vit_b_32", "vit"), ("swin_t", "swin"), ("swin_v2_t", "swin"),
                         ("convnext_tiny", "convnext"), ("maxvit_t", "maxvit"), ("vgg11_bn", "vgg"),
                         ("alexnet", "alexnet")):
        out.append(PriorModel(f"{name}@224", family, _tv(name), (1, 3, 224, 224)))
    return out


def space_prior(n_per_space: int = 8, seed: int = 0) -> list[PriorModel]:
    """Random subnets of the registered search spaces at 224 px and at 32 px (small-input variant)."""
    import search_spaces as ss   # ships with hwnas: an import error is a real error, not "no spaces"
    out = []
    for space_name in ss.list_spaces():
        for size in (224, 32):
            space = ss.create_space(space_name, input_size=size, num_classes=10 if size == 32 else 1000)
            for i in range(n_per_space):
                arch = ss.random_arch(space, seed=seed * 1000 + i)
                out.append(PriorModel(f"{space_name}@{size}#{i}", space_name,
                                      lambda space=space, arch=arch: ss.build_subnet(space, arch), (1, 3, size, size)))
    return out


def spec_key(spec: dict[str, Any]) -> str:
    """Stable identity of a kernel configuration (type + ops, shapes and attributes)."""
    return spec["type"] + ":" + json.dumps(spec["ops"], sort_keys=True, separators=(",", ":"))


def prior_specs(models: Iterable[PriorModel], rules: FusionRules, progress: bool = True) -> list[dict[str, Any]]:
    """Distinct kernel specs of ``models`` under ``rules``, each tagged with the families it occurs in."""
    from tqdm.auto import tqdm

    seen: dict[str, dict[str, Any]] = {}
    for pm in tqdm(list(models), desc="prior: capturing models", disable=not progress):
        graph = capture(pm.build(), "torch", pm.input_shape)
        for k in detect_kernels(graph, rules):
            spec = kernel_spec(k)
            key = spec_key(spec)
            if key not in seen:
                seen[key] = {**spec, "families": []}
            if pm.family not in seen[key]["families"]:
                seen[key]["families"].append(pm.family)
    return list(seen.values())


def _scale(v: int, f: float, multiple: int = 1) -> int:
    return max(multiple, int(round(v * f / multiple)) * multiple)


def jitter(spec: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    """A neighbour of a conv-like or element-wise kernel: channels and resolution scaled by random factors.

    Returns None for kernels whose shapes cannot be perturbed consistently (attention, reshapes...).
    """
    ops = spec["ops"]
    main = ops[0]
    if len(main["output_shape"]) != 4 or any(len(s) != 4 for o in ops for s in o["input_shapes"]):
        return None
    if any(o["op"] in ("reshape", "permute", "slice", "split", "concat", "pad", "mha", "matmul") for o in ops):
        return None
    fc = rng.choice((0.5, 0.75, 1.25, 1.5, 2.0))
    fh = rng.choice((0.5, 0.75, 1.0, 1.0, 1.5, 2.0))
    new = copy.deepcopy(spec)
    new.pop("families", None)
    a = new["ops"][0]["attrs"]
    depthwise = main["op"] == "dwconv"
    for o in new["ops"]:
        o["input_shapes"] = [[s[0], _scale(s[1], fc), _scale(s[2], fh), _scale(s[3], fh)] for s in o["input_shapes"]]
    if main["op"] in ("conv", "dwconv"):
        cin = new["ops"][0]["input_shapes"][0][1]
        groups = cin if depthwise else (a["groups"] if a["groups"] == 1 or cin % a["groups"] == 0 else 1)
        cout = cin if depthwise else _scale(a["cout"], fc)
        if groups > 1 and cout % groups:
            cout = groups * max(1, cout // groups)
        a.update(cin=cin, cout=cout, groups=groups)
    # recompute output shapes through the chain with the module itself (exact, no formula to keep in sync)
    import torch

    from hwnas.builder._kernel_modules import KernelModule, spec_nodes

    try:
        nodes = spec_nodes(new)
        m = KernelModule(nodes).eval()
        x = torch.empty(m.input_shape, device="meta")
        for node, op in zip(new["ops"], m.ops):
            x = op.to("meta")(x)
            node["output_shape"] = list(x.shape)
        for prev, node in zip(new["ops"], new["ops"][1:]):
            idx = [i for i, j in enumerate(node["inputs"]) if j >= 0]
            for i in idx:
                node["input_shapes"][i] = list(prev["output_shape"])
    except Exception:
        return None
    return new


def spec_from_key(key: str) -> dict[str, Any]:
    """Inverse of :func:`spec_key`."""
    ktype, ops = key.split(":", 1)
    return {"type": ktype, "ops": json.loads(ops)}


def adaptive_specs(rows: Sequence[dict[str, Any]], *, worst_fraction: float = 0.1, max_per_type: int = 60,
                   neighbours: int = 2, seed: int = 0, min_rows: int = 20) -> list[dict[str, Any]]:
    """Neighbours of the measured kernels that the regressors predict worst (nn-Meter's adaptive sampling).

    For each kernel type with at least ``min_rows`` measurements, a random forest on the log time per unit of
    work gives every kernel an out-of-fold prediction (5 folds); the ``worst_fraction`` with the largest
    ``|log(predicted / measured)|`` (at most ``max_per_type``) each get ``neighbours`` perturbed configurations
    (:func:`jitter`) that were not measured yet. New specs carry ``families=["adaptive"]`` and their source's
    families in ``parent_families``.

    Parameters
    ----------
    rows : sequence of dict
        Measured kernels, as :func:`hwnas.builder._fit.kernel_rows` returns them (``key``, ``type``,
        ``features``, ``ms``, ``families``, ``parent_families``).
    """
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import cross_val_predict

    from hwnas.builder._fit import features_for, unit_feature
    from hwnas.predictor import UNIT_FLOOR

    rng = random.Random(seed)
    measured = {r["key"] for r in rows}
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append(r)
    out: list[dict[str, Any]] = []
    for ktype in sorted(by_type):
        rs = by_type[ktype]
        if len(rs) < min_rows:
            continue
        names = features_for(ktype)
        x = np.array([[r["features"][n] for n in names] for r in rs], dtype=np.float64)
        unit = np.maximum(np.array([r["features"][unit_feature(ktype)] for r in rs], dtype=np.float64), UNIT_FLOOR)
        y = np.log(np.array([r["ms"] for r in rs])) - np.log(unit)
        est = RandomForestRegressor(n_estimators=32, min_samples_leaf=2, random_state=seed, n_jobs=1)
        err = np.abs(cross_val_predict(est, x, y, cv=5) - y)
        k = min(max_per_type, max(1, int(round(worst_fraction * len(rs)))))
        for i in np.argsort(-err)[:k]:
            src = rs[int(i)]
            parents = [f for f in src["families"] if f not in ("jitter", "adaptive")] or src["parent_families"]
            for _ in range(neighbours):
                n = jitter(spec_from_key(src["key"]), rng)
                if n is None:
                    break
                key = spec_key(n)
                if key in measured:
                    continue
                measured.add(key)
                out.append({**n, "families": ["adaptive"], "parent_families": list(parents)})
    return out
