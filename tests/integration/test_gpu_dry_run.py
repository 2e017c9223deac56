"""``experiments/gpu/run.sh --dry-run``: the device run's steps on CPU at a tiny size, so the GPU run's first try
is not its first run. Checks that every step ran (or says why not) and that the figures are in the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_runs_every_step_and_writes_json(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(ROOT / "experiments/gpu/run.sh"), "--dry-run", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    steps = results["steps"]
    assert {k: v["status"] for k, v in steps.items()} == {"env": "ok", "throughput": "ok", "build": "ok",
                                                          "zoo": "ok", "throughput_compiled": "ok"}
    env_ = steps["env"]["result"]
    assert {b["name"]: b["available"] for b in env_["backends"]}["torchscript-cpu"] is True
    rows = steps["throughput"]["result"]["rows"] + steps["throughput_compiled"]["result"]["rows"]
    if env_["nni"]:
        ours = [r for r in rows if r["pipeline"] == "hwnas"]
        settings = {(r["method"], r["precision"], r["channels_last"], r["compile"]) for r in ours}
        assert settings == {(m, p, c, k) for m in ("spos", "proxyless")
                            for p, c, k in (("32-true", False, "off"), ("bf16-mixed", True, "eager"))}
        assert {r["method"] for r in rows if r["pipeline"] == "NNI 3.0 stock"} == {"spos", "proxyless"}
        assert all(r["ms_per_step"] > 0 and r["train_images_per_s"] > 0 for r in rows)
        # the first SPOS configuration also timed its paths (and NNI's) as plain modules
        assert {r["pipeline"] for r in rows if r["method"] == "spos"} == {"hwnas", "NNI 3.0 stock", "plain path",
                                                                          "plain path/NNI"}
        (ratios,) = steps["throughput"]["result"]["spos_plain_ratios"]
        assert ratios["spos_step_over_plain"] > 0 and ratios["nni_step_over_plain"] > 0 and ratios["limit"] == 1.15
    else:
        assert rows == [] and "nni is not importable" in steps["throughput"]["result"]["skipped"]
    assert steps["throughput"]["result"]["errors"] == [] == steps["throughput_compiled"]["result"]["errors"]
    built = steps["build"]["result"]
    assert built["compile_workers"] == 2
    for batch in (1, 4):   # one predictor per batch: latency at batch 1 and at the zoo's batch
        b = built[f"b{batch}"]
        assert (tmp_path / f"predictor-b{batch}.tar.gz").is_file() and b["raw_records"] > 0
        # kernels traced and frozen by 2 compile workers, finished and timed in the main process (as on the GPU)
        assert b["kernels"] > 0 and b["compiled_in_worker"] > 0
        meta = json.loads(Path(b["predictor"], "predictor.json").read_text())
        assert meta["batch_size"] == batch
    zoo = steps["zoo"]["result"]["rows"]
    assert [r["model"] for r in zoo] == ["mobilenet_v3_small", "resnet18"]
    for r in zoo:
        assert r["measured_ms_b1"] > 0 and r["measured_ms_b4"] > 0
        assert "predicted_ms_b1" in r or "predict_error_b1" in r
        assert "predicted_ms_b4" in r or "predict_error_b4" in r
