"""``hwnas predict``: the input shape comes from the file, never from a silent 224 px guess (issue 18, item 2).

A TorchScript or ONNX file written by hwnas records its input shape in its metadata; an ONNX file may also fix
its input dims. Without either, ``--input-shape`` is required, and a flag that disagrees with the recorded shape wins
with a note.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from hwnas.cli import main
from hwnas.export import export_torchscript


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def _predict(capsys, *argv):
    code = main(["predict", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict_shape")
    net = _net()
    export_torchscript(net, tmp / "hwnas.pt", (1, 3, 20, 20), measure=False, onnx=tmp / "hwnas.onnx")
    torch.jit.save(torch.jit.script(net), str(tmp / "plain.pt"))
    x = torch.zeros(1, 3, 20, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(tmp / "static.onnx"), dynamo=False, input_names=["x"])
        torch.onnx.export(net, (x,), str(tmp / "dynamic.onnx"), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}})
    return tmp


def test_torchscript_uses_the_recorded_input_shape(files, capsys):
    code, out, err = _predict(capsys, "--torchscript", str(files / "hwnas.pt"))
    assert code == 0, err
    assert out["input_shape"] == [1, 3, 20, 20]
    code, again, err = _predict(capsys, "--torchscript", str(files / "hwnas.pt"), "--input-shape", "1,3,20,20")
    assert code == 0 and "note:" not in err and again["latency_ms"] == out["latency_ms"]


def test_a_disagreeing_flag_wins_with_a_note(files, capsys):
    code, out, err = _predict(capsys, "--torchscript", str(files / "hwnas.pt"), "--input-shape", "1,3,40,40")
    assert code == 0 and out["input_shape"] == [1, 3, 40, 40]
    assert "--input-shape 1,3,40,40 overrides the input shape 1,3,20,20 recorded in" in err


def test_torchscript_without_metadata_needs_the_shape(files, capsys):
    code, _, err = _predict(capsys, "--torchscript", str(files / "plain.pt"))
    assert code == 2 and "records no input shape" in err and "--input-shape" in err
    code, out, err = _predict(capsys, "--torchscript", str(files / "plain.pt"), "--input-shape", "1,3,20,20")
    assert code == 0 and out["input_shape"] == [1, 3, 20, 20]


def test_onnx_static_dims_are_used_dynamic_ones_need_the_shape(files, capsys):
    code, out, err = _predict(capsys, "--onnx", str(files / "static.onnx"))
    assert code == 0 and out["input_shape"] == [1, 3, 20, 20]
    code, _, err = _predict(capsys, "--onnx", str(files / "dynamic.onnx"))
    assert code == 2 and "dynamic dimensions" in err and "--input-shape" in err
    code, dyn, err = _predict(capsys, "--onnx", str(files / "dynamic.onnx"), "--input-shape", "1,3,20,20")
    assert code == 0 and dyn["input_shape"] == [1, 3, 20, 20] and dyn["latency_ms"] == out["latency_ms"]
    code, _, err = _predict(capsys, "--onnx", str(files / "missing.onnx"))
    assert code == 2 and "not found" in err


def test_onnx_written_by_hwnas_uses_its_recorded_shape(files, capsys):
    import onnx

    batch = onnx.load(str(files / "hwnas.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value                      # a dynamic batch, for Triton
    code, out, err = _predict(capsys, "--onnx", str(files / "hwnas.onnx"))
    assert code == 0, err
    assert out["input_shape"] == [1, 3, 20, 20]
    code, out, err = _predict(capsys, "--onnx", str(files / "hwnas.onnx"), "--input-shape", "2,3,20,20")
    assert code == 0 and out["input_shape"] == [2, 3, 20, 20] and "overrides the input shape 1,3,20,20" in err


def test_torchvision_keeps_its_224_default(capsys):
    code, out, err = _predict(capsys, "--torchvision", "resnet18")
    assert code == 0, err
    assert out["input_shape"] == [1, 3, 224, 224]


def test_the_python_api_reads_the_shape_from_the_file_too(files):
    from hwnas import load_latency_predictor
    from hwnas.errors import CaptureError, InputShapeError

    p = load_latency_predictor("auto")
    at20 = (1, 3, 20, 20)
    assert p.predict(str(files / "hwnas.pt"), "torchscript") == p.predict(str(files / "hwnas.pt"), "torchscript", at20)
    assert p.predict(str(files / "hwnas.onnx"), "onnx") == p.predict(str(files / "hwnas.onnx"), "onnx", at20)
    assert p.predict(str(files / "static.onnx"), "onnx") == p.predict(str(files / "static.onnx"), "onnx", at20)
    rows = p.predict_kernels(str(files / "hwnas.pt"), "torchscript")
    assert sum(r["ms"] for r in rows) + p.overhead_ms == pytest.approx(p.predict(str(files / "hwnas.pt"), "torchscript"))
    with pytest.raises(InputShapeError, match="records no input shape"):   # not a 224 px guess
        p.predict(str(files / "plain.pt"), "torchscript")
    with pytest.raises(CaptureError, match="no static shape"):
        p.predict(str(files / "dynamic.onnx"), "onnx")
    assert p.predict(_net(), "torch") == p.predict(_net(), "torch", (1, 3, 224, 224))   # a module keeps its default
