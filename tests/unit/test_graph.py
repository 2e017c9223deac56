"""Graph capture: canonical ops, shapes and attributes, the three front-ends, and errors."""

import io
import warnings

import pytest
import torch
import torch.nn as nn

from hwnas.errors import CaptureError, InputShapeError, UnsupportedOpError
from hwnas.graph import CANONICAL_OPS, OpGraph, capture


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.relu(self.bn(self.conv(x)))
        z = self.act(self.bn2(self.dw(y)))
        z = z + y
        return self.fc(torch.flatten(self.pool(z), 1))


class Shuffle(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, torch.sigmoid(b) * b], 1)
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def test_tiny_net_ops_shapes_attrs():
    g = capture(TinyNet(), "torch", (1, 3, 32, 32))
    ops = [n.op for n in g]
    # each bn reads a convolution nothing else reads: folded into it, as the backends do (the conv gains a bias)
    assert ops == ["conv", "relu", "dwconv", "relu6", "add", "global_avgpool", "reshape", "fc"]
    conv, dw = g.nodes[0], g.nodes[2]
    assert conv.attrs["bias"] and dw.attrs["bias"]
    assert conv.input_shapes == [(1, 3, 32, 32)] and conv.output_shape == (1, 8, 16, 16)
    assert conv.attrs["kernel"] == (3, 3) and conv.attrs["stride"] == (2, 2) and conv.attrs["groups"] == 1
    assert dw.attrs["groups"] == 8 and dw.attrs["kernel"] == (5, 5)
    add = g.nodes[4]
    assert sorted(add.inputs) == sorted([g.nodes[1].name, g.nodes[3].name])
    assert g.nodes[-1].output_shape == (1, 10)
    assert all(n.op in CANONICAL_OPS for n in g)


def test_capture_restores_training_mode():
    m = TinyNet().train()
    capture(m, "torch", (1, 3, 32, 32))
    assert m.training


def test_channel_shuffle_split_and_silu_are_folded():
    g = capture(Shuffle(), "torch", (1, 8, 4, 4))
    assert [n.op for n in g] == ["split", "silu", "concat", "channel_shuffle"]
    assert g.nodes[-1].attrs["groups"] == 2



class SposShuffleSplit(nn.Module):
    """SPOS's shuffle-and-split (even channels, odd channels) feeding a conv and a concat, as in a SPOS block."""

    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(channels // 2, channels // 2, 1)

    def forward(self, x):
        n, c, h, w = x.size()
        x = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
        return torch.cat([x[0], self.conv(x[1])], 1)


@pytest.mark.parametrize("batch", [1, 3])
def test_spos_shuffle_and_split_is_a_channel_shuffle_and_a_split(batch):
    shape = (batch, 8, 4, 4)
    m = SposShuffleSplit().eval()
    graphs = {"torch": capture(m, "torch", shape),
              "torchscript": capture(torch.jit.trace(m, torch.zeros(shape)), "torchscript", shape)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(shape),), buf, dynamo=False)
    graphs["onnx"] = capture(buf.getvalue(), "onnx", shape)
    for route, g in graphs.items():
        assert [n.op for n in g] == ["channel_shuffle", "split", "conv", "concat"], route
        shuffle, split, conv, cat = g.nodes
        assert shuffle.attrs["groups"] == 2 and tuple(shuffle.output_shape) == shape, route
        assert tuple(split.output_shape) == (batch, 4, 4, 4) and split.inputs == [shuffle.name], route
        assert conv.inputs == [split.name] and cat.inputs == [split.name, conv.name], route


def test_a_reshape_permute_reshape_read_whole_is_left_alone():
    class ReadWhole(nn.Module):
        def forward(self, x):   # the same chain, but the 5-d tensor is read whole, not split into its parts
            n, c, h, w = x.size()
            return x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w) * 2.0

    g = capture(ReadWhole(), "torch", (1, 8, 4, 4))
    assert [n.op for n in g] == ["reshape", "permute", "reshape", "mul"]


def test_torchscript_and_onnx_give_the_same_graph_as_torch():
    m = TinyNet().eval()
    ref = [n.op for n in capture(m, "torch", (1, 3, 32, 32))]
    ts = capture(torch.jit.script(m), "torchscript", (1, 3, 32, 32))
    assert [n.op for n in ts] == ref
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(1, 3, 32, 32),), buf, dynamo=False, do_constant_folding=False)
    ox = capture(buf.getvalue(), "onnx", (1, 3, 32, 32))
    assert [n.op for n in ox] == ref
    assert [n.output_shape for n in ox] == [n.output_shape for n in capture(m, "torch", (1, 3, 32, 32))]


def test_scripted_chunk_becomes_split():
    g = capture(torch.jit.script(Shuffle()), "torchscript", (1, 8, 4, 4))
    assert [n.op for n in g] == ["split", "silu", "concat", "channel_shuffle"]


def test_graph_json_round_trip(tmp_path):
    g = capture(TinyNet(), "torch", (1, 3, 32, 32))
    path = tmp_path / "g.json"
    path.write_text(g.to_json())
    g2 = capture(str(path), "graph")
    assert [(n.name, n.op, n.output_shape, n.attrs) for n in g2] == [(n.name, n.op, n.output_shape, n.attrs) for n in g]


class Weird(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)


def test_unsupported_op_names_op_and_position():
    with pytest.raises(UnsupportedOpError) as e:
        capture(Weird(), "torch", (1, 3, 8, 8))
    assert "cumsum" in str(e.value) and "position 0" in str(e.value)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_untraceable_model_is_a_capture_error():
    with pytest.raises(CaptureError, match="torch.fx could not trace"):
        capture(DataDependent(), "torch", (1, 3, 8, 8))


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (1, 3), (0, 3, 8, 8), "abc"])
def test_wrong_input_shape(shape):
    with pytest.raises((InputShapeError, CaptureError)):
        capture(TinyNet(), "torch", shape)


def test_missing_files_and_bad_types(tmp_path):
    with pytest.raises(CaptureError, match="not found"):
        capture(str(tmp_path / "nope.onnx"), "onnx", (1, 3, 8, 8))
    with pytest.raises(CaptureError, match="not found"):
        capture(str(tmp_path / "nope.pt"), "torchscript", (1, 3, 8, 8))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(CaptureError, match="cannot read ONNX"):
        capture(str(bad), "onnx", (1, 3, 8, 8))
    with pytest.raises(CaptureError, match="unknown model_type"):
        capture(TinyNet(), "keras", (1, 3, 8, 8))
    with pytest.raises(CaptureError, match="model_type='torchscript'"):
        capture(torch.jit.script(TinyNet()), "torch", (1, 3, 32, 32))


def test_opgraph_rejects_duplicate_names():
    g = capture(TinyNet(), "torch", (1, 3, 32, 32))
    with pytest.raises(ValueError):
        OpGraph(g.nodes + g.nodes[:1])
