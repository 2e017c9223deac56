"""Architecture files carry their settings: what the searches write, what ``hwnas export`` reads (issue 18).

A search writes ``arch.json`` with the space, the space's whole configuration, the input shape and the classes;
``hwnas export --arch`` rebuilds the network from it without ``--space`` / ``--width-mult`` / ``--input-size``;
a flag given on the command line wins, with a note when it disagrees; old files (architecture only) still read.
"""

from __future__ import annotations

import json

import pytest
import torch

import search_spaces as ss
from hwnas.cli import main
from hwnas.errors import HwnasError
from hwnas.export import read_metadata
from hwnas.export._arch_file import arch_document, read_arch_document

CONFIG = {"width_mult": 0.35, "input_size": 16, "num_classes": 10}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """An arch.json and state dict as a search leaves them (width 0.35: not the space's default width)."""
    tmp = tmp_path_factory.mktemp("searched")
    space = ss.create_space("proxyless", **CONFIG)
    arch = ss.random_arch(space, seed=3)
    torch.manual_seed(0)
    net = ss.build_subnet("proxyless", arch, config=CONFIG)
    torch.save(net.state_dict(), tmp / "state_dict.pt")
    (tmp / "arch.json").write_text(json.dumps(arch_document("proxyless", CONFIG, arch, record={"trial": 0})))
    return tmp, arch, net.eval()


def test_document_records_space_config_shape_and_classes():
    arch = ss.random_arch(ss.create_space("proxyless", **CONFIG), seed=1)
    doc = arch_document("proxyless", CONFIG, arch, budget={"max_ms": 2.0})
    assert doc["space"] == "proxyless" and doc["arch"] == arch and doc["budget"] == {"max_ms": 2.0}
    assert doc["input_shape"] == [1, 3, 16, 16] and doc["num_classes"] == 10
    # every config field, defaults filled in, JSON-safe: the network rebuilds even if the defaults change
    want = ss.create_space("proxyless", **CONFIG).config
    assert set(doc["space_config"]) == {f for f in want.__dataclass_fields__}
    json.dumps(doc)
    again = ss.create_space("proxyless", **doc["space_config"]).config
    assert again == want
    assert arch_document("spos", {}, arch, input_shape=(1, 3, 8, 8))["input_shape"] == [1, 3, 8, 8]


def test_old_files_still_read(tmp_path):
    arch = {"s1_b0": "k3e3"}
    (tmp_path / "plain.json").write_text(json.dumps(arch))
    (tmp_path / "wrapped.json").write_text(json.dumps({"arch": arch, "latency_ms": 1.0}))
    (tmp_path / "v1.json").write_text(json.dumps({"space": "spos", "space_config": {"width_mult": 0.5},
                                                  "arch": arch}))
    for name in ("plain", "wrapped"):
        doc = read_arch_document(tmp_path / f"{name}.json")
        assert doc.arch == arch and doc.space is None and doc.space_config is None and doc.input_shape is None
    doc = read_arch_document(tmp_path / "v1.json")
    assert doc.space == "spos" and doc.space_config == {"width_mult": 0.5} and doc.input_shape is None
    (tmp_path / "bad.json").write_text(json.dumps({"arch": arch, "input_shape": "32"}))
    with pytest.raises(HwnasError, match="input_shape"):
        read_arch_document(tmp_path / "bad.json")


@pytest.mark.slow
def test_export_reads_the_settings_of_the_file(searched, tmp_path, capsys):
    folder, arch, net = searched
    code = main(["export", "--arch", str(folder / "arch.json"), "--weights", str(folder / "state_dict.pt"),
                 "--out", str(tmp_path / "m.pt")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "note:" not in captured.err
    meta = read_metadata(tmp_path / "m.pt")
    assert meta["input_shape"] == [1, 3, 16, 16] and meta["arch"] == arch
    assert meta["space"]["name"] == "proxyless" and meta["space"]["config"]["width_mult"] == 0.35
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.pt"))(x), net(x))

    # the same values on the command line: no note
    code = main(["export", "--space", "proxyless", "--arch", str(folder / "arch.json"), "--weights",
                 str(folder / "state_dict.pt"), "--width-mult", "0.35", "--input-size", "16", "--num-classes", "10",
                 "--out", str(tmp_path / "same.pt")])
    assert code == 0 and "note:" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_flag_overrides_the_file_with_a_note(searched, tmp_path, capsys):
    folder, arch, _ = searched
    code = main(["export", "--arch", str(folder / "arch.json"), "--width-mult", "0.5", "--out", str(tmp_path / "w.pt")])
    err = capsys.readouterr().err
    assert code == 0 and "--width-mult 0.5 overrides width_mult=0.35 recorded in" in err
    assert read_metadata(tmp_path / "w.pt")["space"]["config"]["width_mult"] == 0.5

    code = main(["export", "--arch", str(folder / "arch.json"), "--input-shape", "1,3,24,24",
                 "--out", str(tmp_path / "s.pt")])
    err = capsys.readouterr().err
    assert code == 0 and "--input-shape 1,3,24,24 overrides the input shape 1,3,16,16" in err
    assert read_metadata(tmp_path / "s.pt")["input_shape"] == [1, 3, 24, 24]

    code = main(["export", "--arch", str(folder / "arch.json"), "--input-size", "32", "--out", str(tmp_path / "i.pt")])
    err = capsys.readouterr().err
    assert code == 0 and "--input-size 32 overrides input_size=16" in err
    assert read_metadata(tmp_path / "i.pt")["input_shape"] == [1, 3, 32, 32]


def test_an_old_file_needs_the_flags_as_before(tmp_path, capsys):
    arch = ss.random_arch(ss.create_space("proxyless", **CONFIG), seed=5)
    (tmp_path / "arch.json").write_text(json.dumps({"arch": arch}))
    code = main(["export", "--arch", str(tmp_path / "arch.json"), "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "records no search space: pass --space" in capsys.readouterr().err
    code = main(["export", "--space", "proxyless", "--arch", str(tmp_path / "arch.json"), "--width-mult", "0.35",
                 "--input-size", "16", "--num-classes", "10", "--out", str(tmp_path / "x.pt")])
    assert code == 0, capsys.readouterr().err
    meta = read_metadata(tmp_path / "x.pt")
    assert meta["input_shape"] == [1, 3, 16, 16] and meta["space"]["config"]["width_mult"] == 0.35
