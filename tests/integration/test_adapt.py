"""``hwnas adapt`` on a fake backend whose latencies are a known per-kernel-type distortion of a source predictor.

The fake backend prices a model with the source's own regressors (no calibration), times a factor per kernel type,
plus a fixed per-call overhead: an exact, noise-free machine, so the adaptation must recover the factors.
"""

import contextlib
import json
import math
import warnings

import pytest

from hwnas.builder import Measurement, MeasureProtocol
from hwnas.builder._adapt import AdaptConfig, AdaptError, adapt, probe_networks
from hwnas.graph import capture
from hwnas.predictor import find_predictors, load_latency_predictor, lookup

pytestmark = pytest.mark.slow

SOURCE = "onnxruntime-cpu-amd-epyc-avx512"
FAMILIES = ("mobilenet_v2", "resnet")
SMALL = ("mobilenet_v2",)   # 8 probe networks: enough to exercise resume and budgets, quicker
OVERHEAD_MS = 0.05


def _factor(ktype: str) -> float:
    main = ktype.split("-")[0]
    return {"conv": 3.0, "dwconv": 2.0, "fc": 4.0}.get(main, 1.5)


class FakeBackend:
    """A machine whose kernels run ``_factor(type)`` times slower than the source predictor says."""

    name = "onnxruntime-cpu"

    def __init__(self, fail_after: int | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.source = load_latency_predictor(SOURCE)
        meta = {k: v for k, v in self.source.metadata.items() if k != "calibration"}
        self.bare = type(self.source)(meta, self.source.regressors)
        self.bare._device_checked = True
        self.calls = self.network_calls = 0
        self.fail_after = fail_after

    def available(self):
        return True

    @contextlib.contextmanager
    def runtime(self, threads=1):
        yield

    def prepare(self, model, input_shape, *, threads=1):
        return lambda: None

    def true_ms(self, model, input_shape):
        kernels = self.bare.graph_kernels(capture(model, "torch", tuple(input_shape)))
        ms = self.bare.kernel_latencies(kernels)
        return float(sum(m * _factor(k.type) for k, m in zip(kernels, ms))) + OVERHEAD_MS

    def measure(self, model, input_shape, protocol=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        if type(model).__module__.startswith("torchvision"):
            self.network_calls += 1
        ms = self.true_ms(model, input_shape)
        protocol = protocol or MeasureProtocol()
        return Measurement(ms=ms, runs_ms=((ms,),), backend=self.name, input_shape=tuple(input_shape),
                           protocol=protocol)


def test_adapt_recovers_a_known_distortion(tmp_path):
    be = FakeBackend()
    rep = adapt(AdaptConfig(backend=be, out=tmp_path / "a", source=SOURCE, time_budget_min=30, families=FAMILIES),
                progress=False, log=None)
    assert rep["source"] == SOURCE
    # the kernel-level transfer recovers the factor of every type the probe measured well; a type with few probe
    # kernels (after dropping those too short to time) is pulled towards the global pair, by design
    kt = rep["kernel_transfer"]
    well = [t for t, n in kt["n_kernels"].items() if n >= 12 and t in kt["kernel_types"]]
    assert {"conv-relu", "conv"} <= set(well)   # mobilenet_v2 and resnet convolutions, batch norms folded
    for ktype in well:
        a, b = kt["kernel_types"][ktype]
        assert b == pytest.approx(1.0, abs=0.05)
        assert math.exp(a) == pytest.approx(_factor(ktype), rel=0.06), ktype   # the pull: 2 of n >= 12
    for ktype, (a, b) in kt["kernel_types"].items():
        assert math.exp(a) == pytest.approx(_factor(ktype), rel=0.25), ktype
    assert rep["form"] in ("kernels+refit", "global+refit")   # the shipped forms
    meta = json.loads((tmp_path / "a" / "predictor" / "predictor.json").read_text())
    assert meta["transfer"]["form"] == rep["form"] and meta["transfer"]["source"] == SOURCE
    # the adapted predictor prices networks that were not probed
    pred = load_latency_predictor(rep["predictor"])
    assert pred.metadata["device"]["fingerprint"]["device_id"]
    import torchvision

    for name in ("mobilenet_v2", "resnet34"):   # probed families, at a resolution the probe never used
        net = torchvision.models.get_model(name, weights=None).eval()
        truth = be.true_ms(net, (1, 3, 224, 224))
        assert pred.predict(net, "torch", (1, 3, 224, 224)) == pytest.approx(truth, rel=0.10), name
    assert rep["heldout"]["adapted"]["within_10pct"] == 1.0
    # registered for 'auto' in the user's folder, under a name no embedded predictor has
    assert lookup(rep["name"]).source == "user"
    assert rep["name"] not in {e.name for e in find_predictors() if e.source == "embedded"}


def test_adapt_resumes_after_an_interruption(tmp_path):
    n_nets = len(probe_networks(SMALL))
    be = FakeBackend(fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        adapt(AdaptConfig(backend=be, out=tmp_path / "r", source=SOURCE, time_budget_min=30, families=SMALL,
                          register=False), progress=False, log=None)
    again = FakeBackend()
    rep = adapt(AdaptConfig(backend=again, out=tmp_path / "r", source=SOURCE, time_budget_min=30, families=SMALL,
                            register=False), progress=False, log=None)
    assert rep["n_networks"] == n_nets
    # the five networks measured before the interruption are not measured again
    assert be.network_calls == 5
    assert again.network_calls == n_nets - 5


def test_a_tiny_budget_says_it_had_too_few_measurements(tmp_path):
    with pytest.raises(AdaptError, match="no probe network could be measured within"):
        adapt(AdaptConfig(backend=FakeBackend(), out=tmp_path / "t", source=SOURCE, time_budget_min=1e-5,
                          families=SMALL, register=False), progress=False, log=None)


def test_the_budget_stops_measuring_and_still_writes_a_predictor(tmp_path, monkeypatch):
    import hwnas.builder._adapt as ad

    # the kernel deadline is the start: none measured
    monkeypatch.setattr(ad, "KERNEL_SHARE", -(ad.NETWORK_SHARE + ad.LAYOUT_SHARE))
    be = FakeBackend()
    rep = adapt(AdaptConfig(backend=be, out=tmp_path / "b", source=SOURCE, time_budget_min=30, families=SMALL,
                            register=False), progress=False, log=None)
    assert rep["n_kernels"] == 0
    meta = json.loads((tmp_path / "b" / "predictor" / "predictor.json").read_text())
    assert meta["transfer"]["kernel_types"] == {}
    pred = load_latency_predictor(rep["predictor"])
    m = probe_networks(SMALL)[0]
    assert pred.predict(m.build(), "torch", m.input_shape) > 0
