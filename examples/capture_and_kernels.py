"""See what hwnas sees: a model's op graph, its kernels under a backend's fusion rules, and their features.

    python examples/capture_and_kernels.py
"""

import torchvision

from hwnas.graph import capture
from hwnas.kernels import FusionRules, detect_kernels

model = torchvision.models.mobilenet_v3_small(weights=None)
graph = capture(model, model_type="torch", input_shape=(1, 3, 224, 224))
print(graph, graph.op_counts())

# A frozen TorchScript graph folds BatchNorm into the preceding convolution:
rules = FusionRules([["conv", "bn"], ["dwconv", "bn"]])
kernels = detect_kernels(graph, rules)
print(f"{len(kernels)} kernels")
for k in kernels[:8]:
    f = k.features
    print(f"{k.type:16s} in {int(f['cin'])}x{int(f['hin'])}x{int(f['win'])} -> out {int(f['cout'])}x{int(f['hout'])}"
          f"  k{int(f['kernel'])} s{int(f['stride'])}  {f['macs']:.2f} MMACs")
