"""The predictor: loading, prediction = Σ kernels + overhead, explicit errors, caching, CLI."""

import json
import shutil

import numpy as np
import pytest
import torch.nn as nn

import hwnas
from hwnas.cli import main as cli
from hwnas.errors import PredictorFileError, UnknownKernelError
from hwnas.graph import capture
from hwnas.kernels import FusionRules, detect_kernels
from hwnas.predictor import LatencyPredictor, load_latency_predictor
from hwnas.predictor._format import write_predictor
from hwnas.predictor._regressors import LinearModel, TreeEnsemble

from tests.unit.test_graph import TinyNet

RULES = [["conv", "bn", "relu"], ["dwconv", "bn", "relu6"]]
TYPES = {"conv-bn-relu": ["macs"], "dwconv-bn-relu6": ["macs"], "add": ["out_elems"],
         "global_avgpool": ["in_elems"], "reshape": ["out_elems"], "fc": ["macs"]}


def _fit_tree(names, seed=0):
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2, size=(200, len(names)))
    y = 0.01 + x.sum(1)
    return TreeEnsemble.from_sklearn(RandomForestRegressor(n_estimators=5, random_state=seed).fit(x, y))


@pytest.fixture(scope="module")
def pred_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "tiny"
    regs = {t: (LinearModel(np.array([2.0] * len(f)), 0.01) if t != "conv-bn-relu" else _fit_tree(f))
            for t, f in TYPES.items()}
    meta = {"name": "tiny-test", "version": "0", "backend": "torchscript-cpu", "device": {"description": "test"},
            "threads": 1, "batch_size": 1, "precision": "fp32", "units": "ms", "fusion_rules": RULES,
            "zero_cost_ops": ["dropout", "identity"], "model_overhead_ms": 0.5,
            "kernels": {t: {"features": f, "target": "ms"} for t, f in TYPES.items()}}
    return write_predictor(path, meta, regs)


def test_prediction_is_the_sum_of_kernels_plus_overhead(pred_dir):
    p = load_latency_predictor(pred_dir)
    rows = p.predict_kernels(TinyNet(), "torch", (1, 3, 32, 32))
    # the file names its types before the batch-norm fold (conv-bn-relu): they price the folded kernels
    assert [r["type"] for r in rows] == ["conv-relu", "dwconv-relu6", "add", "global_avgpool", "reshape", "fc"]
    assert all(r["ms"] > 0 for r in rows)
    total = p.predict(TinyNet(), "torch", (1, 3, 32, 32))
    assert total == pytest.approx(sum(r["ms"] for r in rows) + 0.5)
    # linear kernels are exact: fc = 2 * macs(=80/1e6) + 0.01
    assert rows[-1]["ms"] == pytest.approx(2 * 80e-6 + 0.01)


def test_same_prediction_from_every_format(pred_dir, tmp_path):
    import torch

    p = load_latency_predictor(pred_dir)
    m = TinyNet().eval()
    ref = p.predict(m, "torch", (1, 3, 32, 32))
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(m), str(path))
    assert p.predict(str(path), "torchscript", (1, 3, 32, 32)) == pytest.approx(ref)
    g = capture(m, "torch", (1, 3, 32, 32))
    assert p.predict(g, "graph") == pytest.approx(ref)


def test_unknown_kernel_is_an_error_never_zero(pred_dir):
    p = load_latency_predictor(pred_dir)

    class WithSigmoid(nn.Module):
        def forward(self, x):
            return x.sigmoid()

    with pytest.raises(UnknownKernelError, match="tiny-test.*'sigmoid'.*0 ms"):
        p.predict(WithSigmoid(), "torch", (1, 3, 8, 8))


def test_zero_cost_ops_are_declared_not_assumed(pred_dir):
    p = load_latency_predictor(pred_dir)
    m = nn.Sequential(nn.Identity(), nn.Dropout())
    assert p.predict(m, "torch", (1, 3, 8, 8)) == pytest.approx(0.5)   # overhead only


def test_cache_returns_same_kernels_and_respects_shape(pred_dir):
    p = load_latency_predictor(pred_dir)
    m = TinyNet()
    k1 = p.kernels(m, "torch", (1, 3, 32, 32))
    assert p.kernels(m, "torch", (1, 3, 32, 32)) is k1
    assert p.kernels(m, "torch", (1, 3, 64, 64)) is not k1
    assert p.predict(m, "torch", (1, 3, 64, 64)) > p.predict(m, "torch", (1, 3, 32, 32))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_tampered_corrupt_future_and_missing_files(pred_dir, tmp_path):
    bad = _copy(pred_dir, tmp_path / "tampered")
    data = bytearray((bad / "regressors.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "regressors.npz").write_bytes(bytes(data))
    with pytest.raises(PredictorFileError, match="checksum mismatch"):
        load_latency_predictor(bad)

    future = _copy(pred_dir, tmp_path / "future")
    meta = json.loads((future / "predictor.json").read_text())
    meta["schema_version"] = 99
    (future / "predictor.json").write_text(json.dumps(meta))
    with pytest.raises(PredictorFileError, match="newer hwnas"):
        load_latency_predictor(future)

    corrupt = _copy(pred_dir, tmp_path / "corrupt")
    (corrupt / "predictor.json").write_text("{not json")
    with pytest.raises(PredictorFileError, match="not valid JSON"):
        load_latency_predictor(corrupt)

    with pytest.raises(PredictorFileError, match="no predictor named"):
        load_latency_predictor("no-such-predictor")


def test_zip_archive_loads(pred_dir, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "tiny"), "zip", pred_dir)
    p = load_latency_predictor(archive)
    assert p.predict(TinyNet(), "torch", (1, 3, 32, 32)) == pytest.approx(
        load_latency_predictor(pred_dir).predict(TinyNet(), "torch", (1, 3, 32, 32)))


def test_list_embedded_predictors_reports_required_fields():
    for meta in hwnas.list_latency_predictors():
        assert {"name", "backend", "device", "threads", "batch_size", "precision"} <= set(meta)


def test_cli_predict_and_list(pred_dir, capsys):
    assert cli(["predict", "--predictor", str(pred_dir), "--torchvision", "squeezenet1_1",
                "--input-shape", "1,3,64,64", "--json"]) == 2   # squeezenet has kernels tiny-test cannot price
    assert "no regressor for kernel type" in capsys.readouterr().err
    assert cli(["list-predictors", "--json"]) == 0
    json.loads(capsys.readouterr().out)


def test_cli_predict_onnx(pred_dir, tmp_path, capsys):
    import io
    import warnings

    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyNet().eval(), (torch.zeros(1, 3, 32, 32),), buf, dynamo=False,
                          do_constant_folding=False)
    f = tmp_path / "tiny.onnx"
    f.write_bytes(buf.getvalue())
    assert cli(["predict", "--predictor", str(pred_dir), "--onnx", str(f), "--input-shape", "1,3,32,32",
                "--per-kernel"]) == 0
    out = capsys.readouterr().out
    assert "conv-relu " in out and "ms predicted on tiny-test" in out


def test_predictor_rejects_unknown_feature_names():
    with pytest.raises(PredictorFileError, match="unknown features"):
        LatencyPredictor({"name": "x", "backend": "b", "kernels": {"fc": {"features": ["nope"]}}}, {})
