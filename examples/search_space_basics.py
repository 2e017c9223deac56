"""Sample architectures from the SPOS and ProxylessNAS spaces, build subnets, count MACs and parameters.

    python examples/search_space_basics.py
"""

import torch

import search_spaces as ss

for name in ss.list_spaces():
    space = ss.create_space(name, input_size=32, num_classes=10)        # the small-input (CIFAR-size) variant
    labels = ss.choices(space)
    arch = ss.random_arch(space, seed=0)
    net = ss.build_subnet(space, arch).eval()                           # plain nn.Module, scriptable
    y = torch.jit.script(net)(torch.randn(2, 3, 32, 32))
    print(f"{name}: {len(labels)} choice blocks, e.g. {dict(list(arch.items())[:3])}")
    print(f"  output {tuple(y.shape)}, {ss.count_macs(space, arch) / 1e6:.1f} MMACs, "
          f"{ss.count_params(space, arch) / 1e6:.2f} M params")
