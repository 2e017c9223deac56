"""Kernels rebuilt as standalone modules compute tensors of the kernel's shapes; specs survive JSON."""

import json

import pytest
import torch
import torchvision

from hwnas.builder._kernel_modules import kernel_module, kernel_spec
from hwnas.builder._sampler import jitter, spec_key
from hwnas.graph import capture
from hwnas.kernels import FusionRules, detect_kernels, kernel_features

RULES = FusionRules([["conv", "bn", "relu"], ["conv", "bn"], ["dwconv", "bn", "relu6"], ["dwconv", "bn"],
                     ["conv", "bn", "relu6"], ["add", "relu"], ["conv", "bn", "hswish"], ["bn", "relu"]])


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "googlenet"])
def test_every_kernel_rebuilds_with_its_output_shape(name):
    model = torchvision.models.get_model(name, weights=None, **({"aux_logits": False, "init_weights": False}
                                                                if name == "googlenet" else {})).eval()
    for k in detect_kernels(capture(model, "torch", (1, 3, 96, 96)), RULES):
        spec = json.loads(json.dumps(kernel_spec(k)))
        m = kernel_module(spec)
        with torch.no_grad():
            y = m(torch.randn(m.input_shape))
        assert tuple(y.shape) == tuple(k.nodes[-1].output_shape), k.type


def test_stored_spec_keeps_features_and_module_recaptures_as_the_same_kernel():
    from hwnas.builder._kernel_modules import spec_nodes

    g = capture(torchvision.models.mobilenet_v2(), "torch", (1, 3, 64, 64))
    for k in detect_kernels(g, RULES)[:12]:
        spec = json.loads(json.dumps(kernel_spec(k)))
        assert kernel_features(spec_nodes(spec)) == pytest.approx(k.features)   # what the fit uses
        m = kernel_module(spec)
        k2 = detect_kernels(capture(m, "torch", m.input_shape), RULES)
        assert [x.type for x in k2] == [k.type]
        if k.type not in ("add", "mul", "concat"):   # binary ops take their second operand as a constant
            assert kernel_features(k2[0].nodes) == pytest.approx(k.features)


def test_jitter_gives_a_valid_neighbour_deterministically():
    import random

    g = capture(torchvision.models.mobilenet_v2(), "torch", (1, 3, 64, 64))
    spec = kernel_spec(detect_kernels(g, RULES)[1])   # dwconv-bn-relu6
    a, b = jitter(spec, random.Random(3)), jitter(spec, random.Random(3))
    assert a is not None and spec_key(a) == spec_key(b) and spec_key(a) != spec_key(spec)
    m = kernel_module(a)
    with torch.no_grad():
        y = m(torch.randn(m.input_shape))
    assert list(y.shape) == a["ops"][-1]["output_shape"]
