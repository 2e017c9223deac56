"""Graph capture and prediction time per torchvision model (the predictor core's speed benchmark).

Prints, per model: capture time (fx trace + meta shapes), kernel detection, regressor evaluation, total cold time,
and the time of a second prediction on the same model object (graph cached). Goal: resnet50 ≤ 50 ms cold,
≤ 10 ms cached. Times are wall-clock medians of ``--repeats`` runs in this process, one thread.

    python -m experiments.benchmarks.predict_speed --predictor NAME [--models resnet50,mobilenet_v2]
    python -m experiments.benchmarks.predict_speed --predictor synthetic

``--predictor synthetic`` fits, in this process, a predictor with one 100-tree random forest per kernel type of the
benchmarked models on synthetic targets: its latencies mean nothing, but its size (and so the speed of capture,
kernel detection and tree evaluation) is that of a real one. Use it before an embedded predictor exists.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from hwnas.graph import capture
from hwnas.predictor import load_latency_predictor

DEFAULT_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x1_0",
                  "efficientnet_b0", "mnasnet1_0", "regnet_y_400mf", "squeezenet1_0", "densenet121"]


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def synthetic_predictor(models: list[str], tmp: str):
    """A predictor of realistic size (100-tree forests) for every kernel type of ``models``; targets are synthetic."""
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    from hwnas.builder import features_for
    from hwnas.kernels import FusionRules, detect_kernels
    from hwnas.predictor import TreeEnsemble, write_predictor

    rules = [["conv", "bn"], ["dwconv", "bn"], ["conv", "bn", "relu"], ["conv", "bn", "relu6"],
             ["dwconv", "bn", "relu6"], ["dwconv", "bn", "relu"], ["add", "relu"], ["conv", "bn", "hswish"],
             ["dwconv", "bn", "hswish"], ["conv", "bn", "silu"], ["dwconv", "bn", "silu"], ["bn", "relu"]]
    feats: dict[str, list[dict]] = {}
    for name in models:
        g = capture(torchvision.models.get_model(name, weights=None), "torch", (1, 3, 224, 224))
        for k in detect_kernels(g, FusionRules(rules)):
            feats.setdefault(k.type, []).append(k.features)
    rng = np.random.default_rng(0)
    regs, kernels = {}, {}
    for t, rows in feats.items():
        names = features_for(t)
        x = np.array([[r[n] for n in names] for r in rows])
        x = np.concatenate([x * rng.uniform(0.5, 2.0, size=x.shape) for _ in range(max(1, 2000 // len(x)))])
        y = np.log1p(x.sum(1)) + rng.normal(0, 0.05, len(x))
        regs[t] = TreeEnsemble.from_sklearn(RandomForestRegressor(100, random_state=0, n_jobs=1).fit(x, y))
        kernels[t] = {"features": names, "target": "log_ms"}
    meta = {"name": "synthetic-speed-test", "backend": "torchscript-cpu", "units": "ms", "fusion_rules": rules,
            "zero_cost_ops": ["dropout", "identity"], "kernels": kernels}
    return load_latency_predictor(write_predictor(f"{tmp}/synthetic", meta, regs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import tempfile

    tmp = tempfile.mkdtemp()
    if args.predictor == "synthetic":
        pred = synthetic_predictor(args.models.split(","), tmp)
    else:
        pred = load_latency_predictor(args.predictor)
    from hwnas.device import describe, fingerprint

    print(f"device: {describe(fingerprint())}, torch {torch.__version__}, 1 thread, "
          f"predictor {pred.name}")
    print(f"{'model':22s} {'ops':>5s} {'kernels':>7s} {'capture':>8s} {'detect':>7s} {'regress':>8s} "
          f"{'cold':>7s} {'cached':>7s} {'pred ms':>8s}")
    for name in args.models.split(","):
        model = torchvision.models.get_model(name, weights=None).eval()
        shape = (1, 3, 224, 224)
        graph = capture(model, "torch", shape)
        kernels = pred.graph_kernels(graph)
        t_cap = _median_ms(lambda: capture(model, "torch", shape), args.repeats)
        t_det = _median_ms(lambda: pred.graph_kernels(graph), args.repeats)
        t_reg = _median_ms(lambda: pred.kernel_latencies(kernels), args.repeats)

        def cold():
            pred.clear_cache()
            return pred.predict(model, "torch", shape)

        t_cold = _median_ms(cold, args.repeats)
        ms = pred.predict(model, "torch", shape)
        t_cached = _median_ms(lambda: pred.predict(model, "torch", shape), args.repeats)
        print(f"{name:22s} {len(graph):5d} {len(kernels):7d} {t_cap:7.1f}  {t_det:6.1f}  {t_reg:7.1f}  "
              f"{t_cold:6.1f}  {t_cached:6.2f}  {ms:8.3f}")
    print("times in ms (wall clock, median); 'pred ms' is the predicted latency")


if __name__ == "__main__":
    main()
