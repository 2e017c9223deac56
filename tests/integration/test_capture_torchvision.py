"""Every torchvision classification model is captured with no unknown op."""

import pytest
import torchvision

from hwnas.graph import CANONICAL_OPS, capture

MODELS = torchvision.models.list_models(module=torchvision.models)


def test_the_list_is_the_whole_zoo():
    assert len(MODELS) >= 80


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model_captures(name):
    model = torchvision.models.get_model(name, weights=None)
    shape = (1, 3, 299, 299) if name.startswith("inception") else (1, 3, 224, 224)
    g = capture(model, "torch", shape)
    assert len(g) > 10
    assert all(n.op in CANONICAL_OPS for n in g)
    assert g.nodes[-1].output_shape == (1, 1000)
