"""``make demo-predictor``: the embedded predictor on torchvision models and random subnets, predicted vs measured.

Loads the ``auto`` predictor, the ``torchscript-cpu`` one of this machine (as every entry point does; or
``--predictor``; a warning names what differs when none matches), predicts torchvision models and random
subnets of the SPOS and ProxylessNAS spaces, and measures three of them on this machine with the same backend, side
by side, so the printout shows predicted and measured milliseconds together. (The README's main job is the random
multi-trial search, ``make demo``: ``python -m experiments.random_search``.) The predictors ship with hwnas, so
there is always one to load (``auto`` falls back to the closest machine, with a warning naming the differences).

    python -m experiments.demo [--predictor NAME] [--no-measure]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch
import torchvision

import hwnas
import search_spaces as ss

MODELS = ["mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0", "mnasnet1_0", "resnet18", "efficientnet_b0",
          "regnet_y_400mf", "squeezenet1_1"]
MEASURED = {"mobilenet_v2", "shufflenet_v2_x1_0", "resnet18"}


def _models() -> list:
    rows = [(m, torchvision.models.get_model(m, weights=None).eval(), (1, 3, 224, 224)) for m in MODELS]
    for space_name in ss.list_spaces():
        space = ss.create_space(space_name)
        arch = ss.random_arch(space, seed=0)
        rows.append((f"{space_name} random arch", ss.build_subnet(space, arch).eval(), (1, 3, 224, 224)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", default="auto",
                    help="auto (the one of this machine), auto:BACKEND, a predictor name or directory (%(default)s)")
    ap.add_argument("--no-measure", action="store_true", help="skip measuring on this machine")
    args = ap.parse_args()
    # torch's own deprecation notices only; every warning of hwnas (a predictor of another machine, ...) shows
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch(\.|$)")
    torch.set_num_threads(1)
    pred = hwnas.load_latency_predictor(args.predictor or "auto")
    print(f"predictor: {pred.name} ({pred.backend}; {pred.metadata['device']['description']})\n")
    rows = _models()
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
    print("\npredicted: hwnas kernel-level predictor; measured: this machine now, same backend and protocol; ratio: "
          "predicted / measured.")
    if not args.no_measure:
        from hwnas.predictor import adapt_command

        print(f"A ratio far from 1 (beyond about 0.9-1.1, the noise of a shared VM) means {pred.name} does not "
              f"describe this machine, or that other work shares its cores (measured here runs slower then): "
              f"`hwnas list-predictors` shows whether a predictor matches this machine, and "
              f"`{adapt_command(pred.backend)}` makes one (about ten minutes).")


if __name__ == "__main__":
    from hwnas.errors import EXIT_ERROR, HwnasError

    try:
        main()
    except HwnasError as err:   # the exit-code policy of every entry point (hwnas.errors.EXIT_ERROR)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
