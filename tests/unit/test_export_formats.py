"""hwnas.export: ONNX export and the Triton model repository (fast tests)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from torch import nn

import search_spaces as ss
from hwnas.export import (ExportError, TritonConfig, TritonTensor, export_onnx, export_torchscript,
                          validate_triton_config, write_triton_repo)

needs_tritonclient = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                        reason="Triton's model-config schema ships with tritonclient "
                                               "(pip install tritonclient)")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    m = Tiny().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.2, 0.2)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m


# ------------------------------------------------------------------------------------------------- ONNX
def test_onnx_export_checks_and_matches_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort

    model = _tiny()
    result = export_onnx(model, tmp_path / "t.onnx", (1, 3, 16, 16), metadata={"arch": {"a": "b"}})
    assert result.parity_max_abs_diff <= result.parity_atol == 1e-4
    proto = onnx.load(result.path)
    onnx.checker.check_model(proto)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["hwnas"]) == {"arch": {"a": "b"}}
    sess = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 16, 16)             # dynamic batch
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    assert abs(got - want).max() <= 1e-4


def test_subnet_onnx_parity_through_export_torchscript(tmp_path):
    space = ss.create_space("proxyless", input_size=32, num_classes=10, width_mult=0.25)
    arch = ss.random_arch(space, seed=5)
    net = ss.build_subnet(space, arch).eval()
    report = export_torchscript(net, tmp_path / "p.pt", (1, 3, 32, 32), arch=arch, space=space, measure=False,
                                onnx=tmp_path / "p.onnx")
    assert report.onnx_path == str(tmp_path / "p.onnx")
    assert report.onnx_parity_max_abs_diff is not None and report.onnx_parity_max_abs_diff <= 1e-4
    assert "onnx" in report.table()


def test_onnx_parity_failure_leaves_no_file(tmp_path):
    with pytest.raises(ExportError, match="ONNX parity check failed"):
        export_onnx(_FlakyOnnx(), tmp_path / "t.onnx", (1, 3, 8, 8))
    assert not list(tmp_path.iterdir())


class _FlakyOnnx(nn.Module):
    """Exports a different function than it runs eagerly (an export-time branch), so ORT disagrees."""

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return x * 2.0
        return x * 3.0


# ------------------------------------------------------------------------------------------------- Triton
@pytest.fixture()
def scripted_file(tmp_path):
    report = export_torchscript(_tiny(), tmp_path / "tiny.pt", (1, 3, 16, 16), measure=False)
    return report.path


@needs_tritonclient
def test_triton_repository_layout_and_config(scripted_file, tmp_path):
    model_dir = write_triton_repo(scripted_file, tmp_path / "repo", "tiny_net", (1, 3, 16, 16), max_batch_size=4)
    assert model_dir == tmp_path / "repo" / "tiny_net"
    assert (model_dir / "1" / "model.pt").read_bytes() == open(scripted_file, "rb").read()
    config = validate_triton_config((model_dir / "config.pbtxt").read_text(), name="tiny_net")
    assert config.platform == "pytorch_libtorch" and config.max_batch_size == 4
    assert [i.name for i in config.input] == ["INPUT__0"] and list(config.input[0].dims) == [3, 16, 16]
    assert [o.name for o in config.output] == ["OUTPUT__0"] and list(config.output[0].dims) == [5]
    from google.protobuf import text_format

    for tensor in (config.input[0], config.output[0]):
        assert "data_type: TYPE_FP32" in text_format.MessageToString(tensor)


@needs_tritonclient
def test_triton_without_batching_keeps_batch_in_dims(scripted_file, tmp_path):
    model_dir = write_triton_repo(scripted_file, tmp_path / "repo", "nb", (2, 3, 16, 16), max_batch_size=0,
                                  instance_kind="KIND_CPU", version=3)
    config = validate_triton_config((model_dir / "config.pbtxt").read_text())
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [2, 3, 16, 16] and list(config.output[0].dims) == [2, 5]
    assert len(config.instance_group) == 1 and (model_dir / "3" / "model.pt").is_file()


@needs_tritonclient
def test_triton_through_export_torchscript(tmp_path):
    report = export_torchscript(_tiny(), tmp_path / "m.pt", (1, 3, 16, 16), measure=False,
                                triton_repo=tmp_path / "repo", triton_name="winner")
    assert report.triton_path == str(tmp_path / "repo" / "winner")
    validate_triton_config((tmp_path / "repo" / "winner" / "config.pbtxt").read_text(), name="winner")


@needs_tritonclient
def test_triton_config_schema_rejects_bad_text():
    good = TritonConfig("m", (TritonTensor("INPUT__0", "TYPE_FP32", (3, 8, 8)),),
                        (TritonTensor("OUTPUT__0", "TYPE_FP32", (5,)),)).to_pbtxt()
    validate_triton_config(good, name="m")
    with pytest.raises(ExportError, match="does not parse"):
        validate_triton_config(good + "no_such_field: 1\n")
    with pytest.raises(ExportError, match="does not parse"):
        validate_triton_config(good.replace("TYPE_FP32", "TYPE_FLOAT32"))
    with pytest.raises(ExportError, match="platform"):
        validate_triton_config(good.replace("pytorch_libtorch", "onnxruntime_onnx"))
    with pytest.raises(ExportError, match="directory is 'other'"):
        validate_triton_config(good, name="other")
    with pytest.raises(ExportError, match="convention"):
        validate_triton_config(good.replace("INPUT__0", "input"))
    with pytest.raises(ExportError, match="dims"):
        validate_triton_config(good.replace("dims: [ 5 ]", "dims: [ 0 ]"))


@needs_tritonclient
def test_triton_bad_arguments(scripted_file, tmp_path):
    with pytest.raises(ExportError, match="model name"):
        write_triton_repo(scripted_file, tmp_path / "repo", "../escape", (1, 3, 16, 16))
    with pytest.raises(ExportError, match="does not exist"):
        write_triton_repo(scripted_file, tmp_path / "no" / "repo", "m", (1, 3, 16, 16))
    with pytest.raises(ExportError, match="does not run"):
        write_triton_repo(scripted_file, tmp_path / "repo", "m", (1, 4, 16, 16))
    with pytest.raises(TypeError, match="export_torchscript"):
        write_triton_repo(_tiny(), tmp_path / "repo", "m", (1, 3, 16, 16))


def test_missing_tritonclient_is_a_clear_error(monkeypatch):
    from hwnas.export import _triton

    good = TritonConfig("m", (TritonTensor("INPUT__0", "TYPE_FP32", (3, 8, 8)),),
                        (TritonTensor("OUTPUT__0", "TYPE_FP32", (5,)),)).to_pbtxt()
    _triton._model_config_pb2.cache_clear()
    try:
        for mod in [m for m in sys.modules if m == "tritonclient" or m.startswith("tritonclient.")]:
            monkeypatch.delitem(sys.modules, mod)
        monkeypatch.setitem(sys.modules, "tritonclient", None)     # as if not installed
        with pytest.raises(ExportError, match="pip install tritonclient"):
            validate_triton_config(good)
    finally:
        _triton._model_config_pb2.cache_clear()
