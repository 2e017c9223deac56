"""Each embedded predictor loads, lists its metadata, and prices every torchvision classification model (every
family is in the builds' sampling prior); a model it could not price must fail with UnknownKernelError."""

import functools
import math

import pytest
import torchvision

import hwnas
from hwnas.errors import UnknownKernelError
from hwnas.graph import capture

PREDICTORS = [p["name"] for p in hwnas.list_latency_predictors()]
MODELS = torchvision.models.list_models(module=torchvision.models)


@functools.cache
def _graph(model_name):
    """The model's op graph, captured once for every predictor (what ``predict(model, "torch")`` prices)."""
    shape = (1, 3, 299, 299) if model_name.startswith("inception") else (1, 3, 224, 224)
    return capture(torchvision.models.get_model(model_name, weights=None), "torch", shape)


def test_at_least_one_embedded_predictor_per_cpu_backend_listed():
    backends = {p["backend"] for p in hwnas.list_latency_predictors()}
    assert {"torchscript-cpu", "onnxruntime-cpu"} <= backends
    for p in hwnas.list_latency_predictors():
        assert {"name", "backend", "device", "threads", "batch_size", "precision"} <= set(p)
        assert p["threads"] == 1 and p["batch_size"] == 1 and p["precision"] == "fp32"


@pytest.mark.slow
@pytest.mark.parametrize("name", PREDICTORS)
def test_embedded_predictor_prices_or_refuses_every_torchvision_model(name):
    pred = hwnas.load_latency_predictor(name)
    assert pred.metadata["units"] == "ms" and pred.metadata["kernels"]
    # Kernel types the backend itself cannot run (declared, with the reason, in the predictor's metadata) are
    # the only acceptable refusals.
    unsupported = set(pred.metadata.get("unsupported_kernel_types", {}))
    refused, declined = [], []
    for model_name in MODELS:
        try:
            ms = pred.predict(_graph(model_name), "graph")
        except UnknownKernelError as e:   # explicit, names the kernel: never a silent 0 ms
            assert e.kernel_type in str(e)
            (declined if e.kernel_type in unsupported else refused).append(model_name)
            continue
        assert math.isfinite(ms) and ms > 0, model_name
    assert not refused, refused
    print(f"{name}: priced {len(MODELS) - len(declined)} of {len(MODELS)}; refused for a declared unsupported "
          f"kernel type: {declined}")
