"""NNI 3.0's own frozen ShuffleNet and ProxylessNAS subnets are captured with no unknown op."""

import random
import warnings

import pytest

from hwnas.graph import CANONICAL_OPS, capture


@pytest.mark.slow
@pytest.mark.parametrize("space_name", ["ShuffleNetSpace", "ProxylessNAS"])
def test_nni_hub_frozen_subnets_capture(space_name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nni.nas.hub.pytorch as hub

    space = getattr(hub, space_name)()
    for seed in range(3):
        rng = random.Random(seed)
        sample = {k: rng.choice(list(v.values)) for k, v in space.simplify().items()}
        net = space.freeze(sample)
        g = capture(net, "torch", (1, 3, 224, 224))
        assert all(n.op in CANONICAL_OPS for n in g)
        assert g.nodes[-1].output_shape == (1, 1000)
