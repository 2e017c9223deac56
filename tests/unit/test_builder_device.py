"""Device fingerprint and comparison."""

import json

from hwnas.device import (DEVICE_KEYS, device_differences, device_id, describe, fingerprint, fingerprint_id,
                                   relevant_flags, same_device, same_runtime)


def test_fingerprint_fields_and_json():
    fp = fingerprint()
    for k in ("cpu_model", "kernel_flags", "logical_cores", "arch", "os", "runtimes", "device_id",
              "fingerprint_id"):
        assert k in fp
    assert set(fp["runtimes"]) == {"torch", "onnxruntime", "numpy"}
    assert fp["runtimes"]["torch"]
    assert json.loads(json.dumps(fp)) == fp
    assert fp["kernel_flags"] == sorted(fp["kernel_flags"])
    assert isinstance(describe(fp), str)
    assert fingerprint()["fingerprint_id"] == fp["fingerprint_id"]  # stable across calls


def test_relevant_flags_filter():
    flags = "fpu vme sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile hypervisor rdrand asimd sve"
    assert relevant_flags(flags) == ["amx_tile", "asimd", "avx", "avx2", "avx512_vnni", "avx512f", "fma",
                                     "sse4_2", "sve"]


def test_same_device_compares_what_matters():
    fp = fingerprint()
    assert same_device(fp, dict(fp))
    assert same_device(fp, dict(fp, os="Other 1.0", logical_cores=64, runtimes={"torch": "0.0"}))
    assert not same_device(fp, dict(fp, cpu_model="AMD EPYC 7B13"))
    assert not same_device(fp, dict(fp, arch="aarch64"))
    other = dict(fp, kernel_flags=[f for f in fp["kernel_flags"] if f != "avx2"] + ["amx_bf16"])
    assert not same_device(fp, other)
    assert set(device_differences(fp, other)) == {"kernel_flags"}
    assert set(DEVICE_KEYS) == {"cpu_model", "kernel_flags", "arch"}


def test_the_cpu_signature_is_in_the_ids_when_a_fingerprint_has_one():
    fp = fingerprint()
    zen1 = dict(fp, cpu_signature="family 23 model 1")
    zen3 = dict(fp, cpu_signature="family 25 model 1")
    assert device_id(zen1) != device_id(zen3) and fingerprint_id(zen1) != fingerprint_id(zen3)
    old = {k: v for k, v in fp.items() if k != "cpu_signature"}   # written before the key existed: id unchanged
    assert device_id(old) == device_id(dict(old, cpu_signature=None))


def test_runtime_versions_in_fingerprint_id():
    fp = fingerprint()
    changed = dict(fp, runtimes=dict(fp["runtimes"], torch="9.9.9"))
    assert not same_runtime(fp, changed)
    assert fingerprint_id(changed) != fingerprint_id(fp)
