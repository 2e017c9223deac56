"""The wheels carried for the GPU machine (experiments/gpu/wheels, made by experiments/gpu/pack_wheels.py): pure
Python, NNI without its experiment manager, every file listed in RECORD with its hash, all under 64 MiB together."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from experiments.gpu.pack_wheels import PACKAGES

WHEELS = Path(__file__).resolve().parents[2] / "experiments" / "gpu" / "wheels"
FILES = sorted(WHEELS.glob("*.whl"))


def test_one_wheel_per_package_and_small():
    names = {f.name.split("-")[0].lower().replace("_", "-") for f in FILES}
    assert names == {p.lower().replace("_", "-") for p in PACKAGES}
    assert sum(f.stat().st_size for f in FILES) < 4 << 20   # the device tool carries 64 MiB in all


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_wheel_is_pure_and_its_record_matches(path):
    assert path.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        wheel = next(n for n in names if n.endswith(".dist-info/WHEEL"))
        assert "Tag: py3-none-any" in whl.read(wheel).decode()
        assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))]
        assert not [n for n in names if n.startswith("nni_node")]
        rows = {r[0]: r for r in csv.reader(io.StringIO(whl.read(record).decode())) if r}
        assert set(rows) == set(names)
        for name in names:
            if name == record:
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(whl.read(name)).digest()).rstrip(b"=").decode()
            assert rows[name][1] == f"sha256={digest}", name
