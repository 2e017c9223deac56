"""Cold-weight timing (hwnas.builder.measure_cold) and the cache size it is sized from (issue 14)."""

from __future__ import annotations

import math

import pytest
import torch.nn as nn

from hwnas.builder import QUICK_PROTOCOL, ColdMeasurement, measure_cold, measure_cold_in_context
from hwnas.builder import _cold
from hwnas.device import _size_bytes, last_level_cache_bytes
from hwnas.errors import HwnasError


@pytest.mark.parametrize("text, n", [("32768K", 32 << 20), ("512K\n", 512 << 10), ("2 MiB", 2 << 20), ("64", 64),
                                     ("1G", 1 << 30)])
def test_cache_sizes_are_read_in_bytes(text, n):
    assert _size_bytes(text) == n


def test_an_unreadable_cache_size_is_an_error():
    with pytest.raises(ValueError, match="cache size"):
        _size_bytes("large")


def _cache_dir(root, entries):
    for i, (level, kind, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return str(root)


def test_the_last_level_data_cache_is_found(tmp_path):
    sysfs = _cache_dir(tmp_path, [(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "1024K"),
                                  (3, "Unified", "32768K"), (4, "Instruction", "64K")])
    assert last_level_cache_bytes(sysfs) == 32 << 20


def test_no_cache_description_is_an_error_not_a_guess(tmp_path):
    with pytest.raises(OSError, match="cannot be measured"):
        last_level_cache_bytes(str(tmp_path / "missing"))
    with pytest.raises(OSError):
        last_level_cache_bytes(_cache_dir(tmp_path / "icache", [(1, "Instruction", "32K")]))


def test_the_flush_touches_every_element():
    flush = _cold.CacheFlush(1000)
    assert flush.nbytes >= 1000
    flush()
    flush()
    assert (flush.buf == 3.0).all()
    with pytest.raises(ValueError, match="positive"):
        _cold.CacheFlush(0)


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "torchscript-cpu"])
def test_cold_and_hot_are_measured_side_by_side(backend):
    model = _tiny()
    m = measure_cold(model, backend, (1, 3, 16, 16), QUICK_PROTOCOL, cache_bytes=1 << 20, factor=2.0)
    assert isinstance(m, ColdMeasurement) and m.backend == backend
    assert math.isfinite(m.ms) and m.ms > 0 and math.isfinite(m.hot_ms) and m.hot_ms > 0
    assert m.flush_bytes >= 2 << 20 and m.cache_bytes == 1 << 20
    assert m.weight_bytes == sum(p.numel() * 4 for p in model.parameters())
    assert m.input_bytes == 3 * 16 * 16 * 4
    assert len(m.runs_ms) == len(m.hot_runs_ms) == QUICK_PROTOCOL.blocks
    assert all(len(b) == QUICK_PROTOCOL.runs_per_block for b in m.runs_ms)
    assert m.to_dict()["input_shape"] == [1, 3, 16, 16]


def test_every_cold_run_is_flush_then_input_then_run(monkeypatch):
    calls = []
    monkeypatch.setattr(_cold, "_parts", lambda be, model, shape, threads: (
        lambda: calls.append("run"), lambda: calls.append("input"), 12))
    monkeypatch.setattr(_cold.CacheFlush, "__call__", lambda self: calls.append("flush"))
    m = measure_cold(_tiny(), "onnxruntime-cpu", (1, 3, 8, 8), QUICK_PROTOCOL, cache_bytes=4096)
    p = QUICK_PROTOCOL
    hot = ["run"] * p.runs_per_block
    cold = ["flush", "input", "run"] * p.runs_per_block
    assert calls == ["run"] * p.warmup + (hot + cold) * p.blocks
    assert m.input_bytes == 12


def test_the_kernel_share_is_the_difference_of_its_two_timings():
    r = measure_cold_in_context(nn.ReLU(), "onnxruntime-cpu", (1, 8, 8, 8), QUICK_PROTOCOL, cache_bytes=1 << 20)
    assert r["cold_ms"] == pytest.approx(r["cold_total_ms"] - r["cold_base_ms"])
    assert r["hot_ms"] == pytest.approx(r["hot_total_ms"] - r["hot_base_ms"])
    assert all(math.isfinite(v) for v in r.values())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="factor"):
        measure_cold(_tiny(), "onnxruntime-cpu", (1, 3, 8, 8), QUICK_PROTOCOL, cache_bytes=4096, factor=0.5)
    with pytest.raises(HwnasError, match="torchscript-cuda"):
        measure_cold(_tiny(), "torchscript-cuda", (1, 3, 8, 8), QUICK_PROTOCOL, cache_bytes=4096)
