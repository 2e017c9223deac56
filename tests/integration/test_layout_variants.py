"""``hwnas build --layout-variants``'s stages on torchscript-cpu: plain-input kernels and layout conversions are
sampled from networks, measured, fitted and added to a predictor of this machine, which then prices them."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from hwnas.builder._protocol import QUICK_PROTOCOL
from hwnas.builder._sampler import PriorModel
from hwnas.builder._variants import STORE, add_variants, conversion_specs, measure_variants, variant_specs
from hwnas.device import fingerprint
from hwnas.kernels import TORCHSCRIPT_ONEDNN, FusionRules, LayoutRules
from hwnas.predictor import load_latency_predictor
from hwnas.predictor._format import write_predictor
from hwnas.predictor._regressors import LinearModel

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")]
LAYOUT = LayoutRules.from_dict(TORCHSCRIPT_ONEDNN)


class _Inception(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.a, self.b = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c // 2, 1)
        self.pool, self.conv = nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.conv(self.pool(torch.cat([self.a(y), self.b(y)], 1)))


def _models():
    return [PriorModel(f"inception{c}@{s}", "inception", lambda c=c: _Inception(c).eval(), (1, 3, s, s))
            for c, s in ((8, 16), (16, 12), (24, 20), (32, 8))]


def _base(path, fp):
    types = ["conv", "concat", "maxpool"]
    meta = {"name": "base", "version": "0", "backend": "torchscript-cpu", "device": {"description": "t",
                                                                                     "fingerprint": fp},
            "threads": 1, "batch_size": 1, "precision": "fp32", "units": "ms", "fusion_rules": [],
            "zero_cost_ops": [], "model_overhead_ms": 0.0,
            "kernels": {t: {"features": ["out_elems"], "target": "ms"} for t in types}}
    return write_predictor(path, meta, {t: LinearModel(np.array([1.0]), 0.01) for t in types})


def test_variants_and_conversions_are_measured_fitted_and_priced(tmp_path):
    specs = variant_specs(FusionRules([]), LAYOUT, _models(), progress=False)
    assert {s["type"] for s in specs} == {"maxpool@dense"} and len(specs) >= 4   # the pools of the concats
    shapes = conversion_specs(LAYOUT, _models(), progress=False)
    assert len(shapes) >= 3 and all(len(s["shape"]) == 4 for s in shapes)
    raw = tmp_path / "raw"
    assert measure_variants("torchscript-cpu", raw / f"{STORE}.jsonl", specs + shapes, QUICK_PROTOCOL,
                            progress=False) == len(specs) + len(shapes)
    assert measure_variants("torchscript-cpu", raw / f"{STORE}.jsonl", specs + shapes, QUICK_PROTOCOL,
                            progress=False) == 0   # resumed: nothing left
    res = add_variants(_base(tmp_path / "p", fingerprint()), raw, LAYOUT)
    assert set(res["variants"]) == {"maxpool@dense", "to_backend", "to_plain"}
    pred = load_latency_predictor(tmp_path / "p")
    assert pred.layout.variants == {"maxpool"} and pred.layout.conversions
    rows = pred.predict_kernels(_Inception(16).eval(), "torch", (1, 3, 12, 12))
    types = [r["type"] for r in rows]
    assert "maxpool@dense" in types and "to_backend" in types and "to_plain" in types
    assert all(r["ms"] > 0 for r in rows if r["type"] in ("maxpool@dense", "to_backend", "to_plain"))


def test_variants_of_another_machine_are_refused(tmp_path):
    specs = variant_specs(FusionRules([]), LAYOUT, _models()[:3], max_per_type=3, progress=False)
    raw = tmp_path / "raw"
    measure_variants("torchscript-cpu", raw / f"{STORE}.jsonl", specs, QUICK_PROTOCOL, progress=False)
    other = {**fingerprint(), "cpu_model": "Some Other CPU", "cpu_signature": "family 99 model 1"}
    with pytest.raises(ValueError, match="another machine"):
        add_variants(_base(tmp_path / "p", other), raw, LAYOUT)
