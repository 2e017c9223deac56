"""hwnas.export: TorchScript export with metadata and parity, weights, errors, report (fast tests).

Spaces are the small-input variants at width 0.25 with randomised BatchNorm and classifier weights, so outputs are
of order 0.1-1 and a parity figure means something. Each space is exported once per module (fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import search_spaces as ss
from hwnas.errors import ArchitectureError
from hwnas.export import (ExportError, ExportReport, export_subnet, export_torchscript, read_metadata,
                          subnet_with_weights)

CONFIG = {"input_size": 32, "num_classes": 10, "width_mult": 0.25}
SHAPE = (1, 3, 32, 32)


def randomize(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)


@pytest.fixture(scope="module")
def spaces():
    out = {}
    for k, name in enumerate(("spos", "proxyless")):
        space = ss.create_space(name, **CONFIG).eval()
        randomize(space, k)
        out[name] = space
    return out


@pytest.fixture(scope="module")
def exported(spaces, tmp_path_factory):
    """name -> (space, arch, report), one scripted export per space."""
    tmp = tmp_path_factory.mktemp("export")
    result = {}
    for name, space in spaces.items():
        arch = ss.random_arch(space, seed=7)
        report = export_subnet(space, arch, out=tmp / f"{name}.pt", measure=False)
        result[name] = (space, arch, report)
    return result


def _x(batch: int = 2, seed: int = 123) -> torch.Tensor:
    return torch.randn((batch, 3, 32, 32), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- scripted, parity
@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_subnet_is_scripted_and_loaded_file_matches_eager(exported, name):
    space, arch, report = exported[name]
    assert report.method == "script" and report.fallback_reason is None
    assert report.parity_max_abs_diff <= 1e-5 and report.parity_atol == 1e-5
    assert report.output_scale > 0.01          # the randomised weights give outputs far above the tolerance
    loaded = torch.jit.load(report.path)
    eager = ss.build_subnet(space, arch).eval()
    with torch.no_grad():
        assert (loaded(_x()) - eager(_x())).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["spos", "proxyless"])
def test_metadata_read_back(exported, name):
    space, arch, report = exported[name]
    meta = read_metadata(report.path)
    assert meta == report.metadata
    assert meta["schema"] == 1 and meta["arch"] == arch
    assert meta["space"]["name"] == name and meta["space"]["config"]["width_mult"] == 0.25
    assert meta["input_shape"] == list(SHAPE) and meta["method"] == "script"
    assert meta["params"] == ss.count_params(space, arch) == report.params
    assert meta["macs"] == ss.count_macs(space, arch) == report.macs == report.flops
    assert meta["predictor"] is None and meta["predicted_ms"] is None
    assert meta["versions"]["torch"] == torch.__version__
    # readable with plain torch too
    extra = {"hwnas.json": ""}
    torch.jit.load(report.path, _extra_files=extra)
    assert json.loads(extra["hwnas.json"]) == meta


def test_report_table_and_dict(exported):
    _, arch, report = exported["spos"]
    table = report.table()
    for row in ("parameters", "FLOPs (MACs)", "predicted ms", "measured ms", "parity"):
        assert row in table
    assert f"{report.params:,}" in table
    d = json.loads(json.dumps(report.to_dict()))
    assert d["arch"] == arch and d["input_shape"] == list(SHAPE) and d["measured_ms"] is None


def test_freeze_keeps_parity(spaces, tmp_path):
    space = spaces["proxyless"]
    arch = ss.random_arch(space, seed=3)
    report = export_subnet(space, arch, out=tmp_path / "f.pt", measure=False, freeze=True)
    assert report.frozen and read_metadata(report.path)["frozen"] is True
    loaded = torch.jit.load(report.path)
    assert not hasattr(loaded, "training") or not loaded.training
    eager = ss.build_subnet(space, arch).eval()
    with torch.no_grad():
        assert (loaded(_x()) - eager(_x())).abs().max().item() <= 1e-5


def test_model_argument_is_left_untouched(spaces, tmp_path):
    space = spaces["proxyless"]
    arch = ss.random_arch(space, seed=4)
    net = ss.build_subnet(space, arch).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_torchscript(net, tmp_path / "m.pt", SHAPE, arch=arch, space=space, measure=False)
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# ------------------------------------------------------------------------------------------- trace fallback
class Unscriptable(nn.Module):
    """``functools.reduce`` is a Python builtin TorchScript cannot compile; tracing records the ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        import functools
        import operator

        return functools.reduce(operator.add, [self.conv(x), x.mean(1, keepdim=True)])


def test_unscriptable_model_falls_back_to_trace_with_reason(tmp_path):
    report = export_torchscript(Unscriptable(), tmp_path / "t.pt", (1, 3, 8, 8), measure=False)
    assert report.method == "trace"
    assert "torch.jit.script failed" in report.fallback_reason
    with pytest.raises(Exception) as info:
        torch.jit.script(Unscriptable())
    first = [ln.strip() for ln in str(info.value).splitlines() if ln.strip()][0]
    assert first in report.fallback_reason
    assert read_metadata(report.path)["fallback_reason"] == report.fallback_reason
    assert report.parity_max_abs_diff <= 1e-5


def test_script_only_refuses_fallback(tmp_path):
    with pytest.raises(ExportError, match="no fallback"):
        export_torchscript(Unscriptable(), tmp_path / "t.pt", (1, 3, 8, 8), method="script", measure=False)
    assert not (tmp_path / "t.pt").exists()


def test_parity_failure_writes_nothing(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            # Python-level control flow on a value: the trace freezes one branch, script would keep both.
            import functools

            sign = functools.reduce(lambda a, b: a, [float(x.sum())])
            return x * 2 if sign > 0 else x * -3

    with pytest.raises(ExportError, match="parity check failed"):
        export_torchscript(DataDependent(), tmp_path / "d.pt", (1, 3, 4, 4), method="trace", measure=False,
                           parity_inputs=6)
    assert not (tmp_path / "d.pt").exists()
    assert not [p for p in os.listdir(tmp_path)]       # no temporary file left either


# ------------------------------------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def reference(spaces):
    space = spaces["spos"]
    arch = ss.random_arch(space, seed=11)
    net = ss.build_subnet(space, arch).eval()
    with torch.no_grad():
        return space, arch, net, net(_x())


def _out(net):
    with torch.no_grad():
        return net.eval()(_x())


def test_weights_from_subnet_state_dict(reference):
    space, arch, net, want = reference
    got, _ = subnet_with_weights("spos", arch, net.state_dict(), CONFIG)
    assert torch.equal(_out(got), want)


def test_weights_from_supernet_state_dict_and_module(reference):
    space, arch, _, want = reference
    got, _ = subnet_with_weights("spos", arch, space.state_dict(), CONFIG)
    assert torch.equal(_out(got), want)
    got, _ = subnet_with_weights("spos", arch, space, CONFIG)
    assert torch.equal(_out(got), want)


def test_weights_from_lightning_style_checkpoint_file(reference, tmp_path):
    space, arch, _, want = reference
    ckpt = {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in space.state_dict().items()}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    got, _ = subnet_with_weights("spos", arch, str(tmp_path / "last.ckpt"), CONFIG)
    assert torch.equal(_out(got), want)


def test_mismatched_architecture_and_subnet_weights(reference):
    space, arch, net, _ = reference
    other = dict(arch)
    label = next(iter(other))
    other[label] = next(c for c in ss.choices(space)[label] if c != arch[label])
    with pytest.raises(ArchitectureError, match=rf"blocks\.{label}\."):
        subnet_with_weights("spos", other, net.state_dict(), CONFIG)


def test_supernet_weights_of_another_width_are_refused(reference):
    _, arch, _, _ = reference
    wide = ss.create_space("spos", input_size=32, num_classes=10, width_mult=0.5)
    with pytest.raises(ArchitectureError, match="shape mismatch"):
        subnet_with_weights("spos", arch, wide.state_dict(), CONFIG)
    with pytest.raises(ArchitectureError, match="SposSpace"):
        subnet_with_weights("spos", arch, wide, CONFIG)


def test_weights_of_another_space_name_missing_keys(reference, spaces):
    _, arch, _, _ = reference
    with pytest.raises(ArchitectureError, match="missing key"):
        subnet_with_weights("spos", arch, spaces["proxyless"].state_dict(), CONFIG)


def test_model_not_fitting_arch_is_refused_by_export_torchscript(reference, tmp_path):
    space, arch, net, _ = reference
    other = {k: ("xception" if v != "xception" else "shuffle3") for k, v in arch.items()}
    with pytest.raises(ArchitectureError, match="does not fit"):
        export_torchscript(net, tmp_path / "x.pt", SHAPE, arch=other, space=space, measure=False)
    assert not (tmp_path / "x.pt").exists()


def test_invalid_arch_is_an_architecture_error(tmp_path):
    arch = dict(ss.random_arch("proxyless", 0), s1_b0="k9e9")
    with pytest.raises(ArchitectureError, match="label 's1_b0' has no choice 'k9e9'"):
        export_subnet("proxyless", arch, out=tmp_path / "a.pt", config=CONFIG, measure=False)
    with pytest.raises(ArchitectureError, match="missing label"):
        export_subnet("proxyless", {"s1_b0": "k3e3"}, out=tmp_path / "a.pt", config=CONFIG, measure=False)


def test_unreadable_weights_file(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="weights_only"):
        subnet_with_weights("spos", ss.random_arch("spos", 0), str(tmp_path / "w.pt"), CONFIG)
    with pytest.raises(ExportError, match="does not exist"):
        subnet_with_weights("spos", ss.random_arch("spos", 0), str(tmp_path / "none.pt"), CONFIG)


# ------------------------------------------------------------------------------------------- paths and files
def test_unwritable_paths_fail_before_any_work(tmp_path, monkeypatch):
    import hwnas.export._subnet as sub

    def boom(*a, **k):
        raise AssertionError("work started before the path was checked")

    monkeypatch.setattr(sub, "subnet_with_weights", boom)
    arch = ss.random_arch("spos", 0)
    with pytest.raises(ExportError, match="does not exist"):
        export_subnet("spos", arch, out=tmp_path / "no" / "such" / "m.pt", config=CONFIG)
    with pytest.raises(ExportError, match="is a directory"):
        export_subnet("spos", arch, out=tmp_path, config=CONFIG)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_subnet("spos", arch, out=tmp_path / "file" / "m.pt", config=CONFIG)


def test_unwritable_onnx_path_fails_before_compiling(tmp_path):
    with pytest.raises(ExportError, match="ONNX file"):
        export_torchscript(Unscriptable(), tmp_path / "t.pt", (1, 3, 8, 8), onnx=tmp_path / "no" / "t.onnx")
    assert not (tmp_path / "t.pt").exists()


def test_read_metadata_errors(tmp_path):
    with pytest.raises(ExportError, match="no TorchScript file"):
        read_metadata(tmp_path / "missing.pt")
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "plain.pt"))
    with pytest.raises(ExportError, match="not exported by hwnas"):
        read_metadata(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ExportError, match="cannot load"):
        read_metadata(tmp_path / "junk.pt")
    future = json.dumps({"schema": 99})
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "future.pt"), _extra_files={"hwnas.json": future})
    with pytest.raises(ExportError, match="schema 99"):
        read_metadata(tmp_path / "future.pt")


def test_non_fp32_model_is_refused(tmp_path):
    with pytest.raises(ExportError, match="fp32"):
        export_torchscript(nn.Linear(4, 2).double(), tmp_path / "d.pt", (1, 4), measure=False)


def test_report_is_exported_and_import_is_lazy():
    code = ("import sys, hwnas.export as e; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'export_subnet' in dir(e)")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert ExportReport.__name__ == "ExportReport"


def test_read_metadata_of_a_file_written_before_the_macs_rename(tmp_path):
    import json

    import torch

    from hwnas.export import read_metadata

    path = tmp_path / "old.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path),
                   _extra_files={"hwnas.json": json.dumps({"schema": 1, "flops": 1234, "params": 5})})
    meta = read_metadata(path)
    assert meta["macs"] == 1234 and "flops" not in meta and meta["params"] == 5
