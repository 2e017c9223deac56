"""A build at another batch than 1 (issue 17: the torchscript-cuda predictor at batch 1 and at a larger batch)."""

import pytest
import torch
import torch.nn as nn

from hwnas.builder._build import with_batch
from hwnas.builder._config import BuildConfig
from hwnas.builder._kernel_modules import kernel_module, kernel_spec
from hwnas.graph import capture
from hwnas.kernels import FusionRules, detect_kernels


def test_a_spec_at_another_batch_builds_a_module_of_that_batch():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5)).eval()
    for k in detect_kernels(capture(net, "torch", (1, 3, 8, 8)), FusionRules([["conv", "relu"]])):
        spec = with_batch(kernel_spec(k), 4)
        assert all(s[0] == 4 for o in spec["ops"] for s in [*o["input_shapes"], o["output_shape"]])
        m = kernel_module(spec)
        with torch.no_grad():
            out = m(torch.randn(m.input_shape))
        assert m.input_shape[0] == 4 and list(out.shape) == spec["ops"][-1]["output_shape"]


def test_a_batch_build_refuses_a_calibration_at_batch_one():
    with pytest.raises(ValueError, match="cannot be calibrated"):
        BuildConfig(batch_size=8)
    assert BuildConfig(batch_size=8, calibrate=False).batch_size == 8
    with pytest.raises(ValueError, match="batch_size"):
        BuildConfig(batch_size=0, calibrate=False)


def test_the_build_command_names_a_bad_batch_and_a_backend_without_layout_rules(tmp_path, capsys):
    from hwnas.cli import main

    assert main(["build", "--out-dir", str(tmp_path), "--batch-size", "0"]) == 2
    assert "batch_size must be an int >= 1" in capsys.readouterr().err
    assert main(["build", "--backend", "onnxruntime-cpu", "--out-dir", str(tmp_path), "--layout-variants"]) == 2
    assert "has no layout rules" in capsys.readouterr().err
