"""ONNX files from both of torch's exporters are captured and priced alike (issue 18, item 7).

``torch.onnx.export(model, x, path)`` uses the dynamo exporter by default since torch 2.9 (it needs ``onnxscript``,
a dependency of hwnas); ``dynamo=False`` is the legacy TorchScript-based one that hwnas's own export uses. A
torchvision ResNet-18 with random weights (never downloaded) and non-trivial BatchNorm statistics, exported by
both, gives the same kernels, features and milliseconds on every embedded predictor. (With default-initialised
BatchNorm the folded convolution biases are all zero and the dynamo exporter's optimiser drops them: the kernels
then differ by their bias parameters, which is the file's content, not the capture's.)
"""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx
import pytest
import torch

import hwnas

pytestmark = pytest.mark.slow


def _resnet18() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.3, 0.3)
    return model


def _export(model, path, **kwargs) -> onnx.ModelProto:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):   # the dynamo exporter's progress
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), **kwargs)
    return onnx.load(str(path))


def _kernels(predictor, path, shape=(1, 3, 224, 224)):
    rows = predictor.predict_kernels(str(path), "onnx", shape)
    return [(r["type"], r["features"]) for r in rows], sum(r["ms"] for r in rows)


def test_legacy_and_dynamo_exports_price_alike(tmp_path):
    pytest.importorskip("onnxscript")
    model = _resnet18()
    legacy = _export(model, tmp_path / "legacy.onnx", dynamo=False)
    standard = _export(model, tmp_path / "dynamo.onnx")                      # torch's default: the dynamo exporter
    assert legacy.graph.input[0].name == "input.1" and standard.graph.input[0].name == "x"   # two exporters
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = _export(model, tmp_path / "dynamic.onnx", dynamo=True, dynamic_shapes={"x": {0: batch}})
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param               # a symbolic batch

    names = [p["name"] for p in hwnas.list_latency_predictors()]
    assert names
    for name in names:
        predictor = hwnas.load_latency_predictor(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # another machine's predictor: the device notice is not the subject
            want, want_ms = _kernels(predictor, tmp_path / "legacy.onnx")
            for file in ("dynamo.onnx", "dynamic.onnx"):
                got, got_ms = _kernels(predictor, tmp_path / file)
                assert got == want, (name, file)
                assert got_ms == pytest.approx(want_ms, rel=1e-12), (name, file)
            # a static file needs no input shape
            assert predictor.predict(str(tmp_path / "dynamo.onnx"), "onnx", None) == pytest.approx(
                predictor.predict(str(tmp_path / "legacy.onnx"), "onnx", None), rel=1e-12)


def test_hwnas_onnx_export_prices_like_the_network(tmp_path):
    """``hwnas export --onnx`` (BatchNorm kept as a node) prices with the module's own kernels, the batch norms
    folded into their convolutions on both routes."""
    import search_spaces as ss
    from hwnas.export import export_onnx

    config = {"width_mult": 0.25, "input_size": 16, "num_classes": 10}
    net = ss.build_subnet("proxyless", ss.random_arch(ss.create_space("proxyless", **config), seed=2), config=config)
    net.eval()
    export_onnx(net, tmp_path / "net.onnx", (1, 3, 16, 16))
    for name in [p["name"] for p in hwnas.list_latency_predictors()]:
        predictor = hwnas.load_latency_predictor(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = [(r["type"], r["features"]) for r in predictor.predict_kernels(net, "torch", (1, 3, 16, 16))
                      if r["type"] not in ("identity", "dropout")]   # inference no-ops the ONNX exporter removes
            file, _ = _kernels(predictor, tmp_path / "net.onnx", (1, 3, 16, 16))
        assert file == module, name
        assert not any("bn" in t.split("-") for t, _ in file)   # every BatchNorm follows a conv: folded
