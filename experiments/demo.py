"""The README's main job (until the multi-trial search lands): latency prediction on the embedded default.

Loads the embedded ``torchscript-cpu`` predictor, predicts torchvision models and random subnets of the SPOS and
ProxylessNAS spaces, and measures three of them on this machine with the same backend, side by side, so the
printout shows predicted and measured milliseconds together.

    python -m experiments.demo [--predictor NAME] [--no-measure]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision

import hwnas
import search_spaces as ss

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0", "mnasnet1_0", "resnet18", "efficientnet_b0",
          "regnet_y_400mf", "squeezenet1_1"]
MEASURED = {"mobilenet_v2", "shufflenet_v2_x1_0", "resnet18"}


def default_predictor() -> str:
    preds = [p for p in hwnas.list_latency_predictors() if p["backend"] == "torchscript-cpu"]
    if not preds:
        raise SystemExit("no embedded torchscript-cpu predictor found in this installation")
    return preds[0]["name"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default=None, help="predictor name or path (default: embedded torchscript-cpu)")
    ap.add_argument("--no-measure", action="store_true", help="skip measuring on this machine")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    name = args.predictor or default_predictor()
    pred = hwnas.load_latency_predictor(name)
    print(f"predictor: {pred.name} ({pred.backend}; {pred.metadata['device']['description']})\n")
    rows = []
    for m in MODELS:
        rows.append((m, torchvision.models.get_model(m, weights=None).eval(), (1, 3, 224, 224)))
    for space_name in ss.list_spaces():
        space = ss.create_space(space_name)
        arch = ss.random_arch(space, seed=0)
        rows.append((f"{space_name} random arch", ss.build_subnet(space, arch).eval(), (1, 3, 224, 224)))
    print(f"{'model':28s} {'MMACs':>8s} {'predicted ms':>13s} {'took':>7s} {'measured ms':>12s} {'ratio':>6s}")
    for label, model, shape in rows:
        t = time.perf_counter()
        ms = pred.predict(model, "torch", shape)
        took = (time.perf_counter() - t) * 1e3
        macs = sum(k.features["macs"] for k in pred.kernels(model, "torch", shape))
        meas = ""
        ratio = ""
        if not args.no_measure and label in MEASURED:
            from hwnas.builder import measure_latency

            real = measure_latency(model, backend=pred.backend, input_shape=shape)
            meas, ratio = f"{real:12.2f}", f"{ms / real:6.2f}"
        print(f"{label:28s} {macs:8.1f} {ms:13.2f} {took:5.0f}ms {meas:>12s} {ratio:>6s}")
    print("\npredicted: hwnas kernel-level predictor; measured: this machine now, same backend and protocol "
          "(machines of this kind drift 10-30% between processes; see the predictor's accuracy report)")


if __name__ == "__main__":
    main()
