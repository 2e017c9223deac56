"""One network, one price: a torchvision model priced as a module, as TorchScript and as an ONNX file exported the
ordinary way (eval mode, BatchNorm folded into the convolutions by the exporter) gets the same kernels and the
same milliseconds (issue 14, item 0).

Every torchvision classification model runs through the module, TorchScript (traced) and legacy-ONNX routes;
the dynamo exporter (torch's default) is covered for one model per family here and with trained-looking
BatchNorm statistics in ``test_onnx_exporters.py``. Models are priced at 64 px (inception at 96; MaxViT, AlexNet
and VGG at 224, where a fixed size or an adaptive pool needs it) to keep the test short; the kernel model does
not depend on the resolution. Files over ONNX's 2 GB protobuf limit cannot be written as one file and are skipped
with that reason. The vision transformers and Swin are skipped, a known gap (:data:`KNOWN_GAPS`): their attention
is one ``mha`` op from a module and its parts from a file.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
import torchvision

import hwnas
from hwnas.errors import UnknownKernelError

pytestmark = pytest.mark.slow

MODELS = torchvision.models.list_models(module=torchvision.models)
DYNAMO = ["resnet50", "mobilenet_v2", "densenet121", "googlenet", "efficientnet_b0", "shufflenet_v2_x1_0",
          "regnet_y_400mf", "mnasnet1_0", "squeezenet1_1", "convnext_tiny", "mobilenet_v3_small", "swin_t"]
PREDICTOR = "torchscript-cpu-amd-epyc-avx512"   # prices every kernel type these models have (mha included)
ONNX_LIMIT_PARAMS = 400e6                       # 4 bytes each: over the 2 GB limit of one protobuf file


def _side(name: str) -> int:
    if name.startswith("inception"):
        return 96
    if name.startswith(("vit", "maxvit", "alexnet", "vgg")):
        return 224   # a fixed position embedding, or an adaptive pool whose output must divide its input
    return 64


def _random_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so folded biases are not all zero (an exporter may drop zero biases)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def predictor():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # another machine's predictor: the device notice is not the subject
        p = hwnas.load_latency_predictor(PREDICTOR, warn=False)
        yield p


def _rows(predictor, obj, kind, shape):
    kernels = predictor.kernels(obj, kind, shape)
    keys = [(k.type, tuple(round(v, 9) for v in k.vector(sorted(k.features)))) for k in kernels
            if k.type not in ("identity", "dropout")]   # inference no-ops that an exporter removes
    try:
        ms = float(predictor.kernel_latencies(kernels).sum())
    except UnknownKernelError:
        ms = None
    return keys, ms


def _export(model, x, path, **kwargs):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), **kwargs)


def _cases():
    for name in MODELS:
        routes = ["torchscript", "onnx-legacy"] + (["onnx-dynamo"] if name in DYNAMO else [])
        for route in routes:
            marks = []
            if name.startswith("swin_v2") and route.startswith("onnx"):
                marks.append(pytest.mark.skip(reason=KNOWN_GAPS["reduce-l2"]))
            elif name.startswith(("vit_", "swin")):
                marks.append(pytest.mark.skip(reason=KNOWN_GAPS["attention"]))
            yield pytest.param(name, route, marks=marks, id=f"{name}-{route}")


KNOWN_GAPS = {
    "attention": "the torch route keeps nn.MultiheadAttention / Swin's window attention as one 'mha' op; an ONNX "
                 "file (and TorchScript, read through an ONNX export, which fails on a traced "
                 "nn.MultiheadAttention) has it as its parts, which hwnas does not reassemble",
    "reduce-l2": "Swin V2's cosine attention exports as ReduceL2, not in hwnas's ONNX vocabulary",
}


@pytest.mark.parametrize(("name", "route"), list(_cases()))
def test_module_torchscript_and_onnx_price_alike(name, route, predictor, tmp_path):
    model = _random_bn(torchvision.models.get_model(name, weights=None).eval())
    side = _side(name)
    shape, x = (1, 3, side, side), torch.randn(1, 3, side, side)
    want, want_ms = _rows(predictor, model, "torch", shape)
    if route == "torchscript":
        path, kind = tmp_path / "m.pt", "torchscript"
        with warnings.catch_warnings():   # traced with autograd on: no_grad records the fused attention fast path
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(model, x, check_trace=False), str(path))
    else:
        if sum(p.numel() for p in model.parameters()) >= ONNX_LIMIT_PARAMS:
            pytest.skip("over ONNX's 2 GB limit of one protobuf file")
        path, kind = tmp_path / "m.onnx", "onnx"
        if route == "onnx-dynamo":
            pytest.importorskip("onnxscript")
            _export(model, x, path, dynamo=True)
        else:
            _export(model, x, path, dynamo=False, do_constant_folding=True)
    got, got_ms = _rows(predictor, str(path), kind, shape)
    # the same kernels; their order may differ (exporters order independent branches differently)
    assert sorted(got) == sorted(want)
    if want_ms is not None:
        assert got_ms == pytest.approx(want_ms, rel=0.01)
