"""One option name per concept across the entry points (issue 18, item 6): the results folder is ``--out-dir``
everywhere, defaulting under ``runs/``; the old ``--out`` still works for one release, with a deprecation note."""

from __future__ import annotations

import pytest

from experiments import nni_search, proxyless_train, random_search, spos_search

SCRIPTS = {"random_search": (random_search.parse_args, "runs/random_search"),
           "proxyless_train": (proxyless_train.parse_args, "runs/proxyless"),
           "spos_search": (spos_search.parse_args, "runs/spos"),
           "nni_search": (lambda argv: nni_search.build_parser().parse_args(argv), None)}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_out_dir_is_the_name_and_out_a_deprecated_alias(name, capsys, tmp_path):
    parse, default = SCRIPTS[name]
    assert parse([]).out_dir == default
    if default is not None:
        assert default.startswith("runs/")
    assert parse(["--out-dir", str(tmp_path / "a")]).out_dir == str(tmp_path / "a")
    assert "deprecated" not in capsys.readouterr().err
    assert parse(["--out", str(tmp_path / "b")]).out_dir == str(tmp_path / "b")
    err = capsys.readouterr().err
    assert err.count("note: --out is deprecated") == 1 and "use --out-dir" in err


def test_yaml_configs_use_out_dir_and_the_old_key_still_reads(tmp_path, capsys):
    assert proxyless_train.parse_args(["--config", "experiments/configs/proxyless.yaml"]).out_dir == "runs/proxyless"
    assert spos_search.parse_args(["--config", "experiments/configs/spos.yaml"]).out_dir == "runs/spos"
    old = tmp_path / "old.yaml"
    old.write_text("out: runs/old\n")
    assert spos_search.parse_args(["--config", str(old)]).out_dir == "runs/old"   # YAML keys follow the options

    assert nni_search.load_config(nni_search.DEFAULT_CONFIG).out_dir == "runs/nni_search"
    assert "deprecated" not in capsys.readouterr().err
    assert nni_search.config_from_dict({"out": "runs/x"}).out_dir == "runs/x"
    assert "config key 'out' is deprecated" in capsys.readouterr().err
    with pytest.raises(ValueError, match="both out and out_dir"):
        nni_search.config_from_dict({"out": "a", "out_dir": "b"})


def test_build_and_adapt_take_out_dir_and_the_old_out_with_a_note(capsys):
    import argparse

    from hwnas.builder import register_commands

    parser = argparse.ArgumentParser()
    handlers: dict = {}
    register_commands(parser.add_subparsers(dest="command"), handlers)
    assert {"build", "adapt"} <= set(handlers)
    for sub in ("build", "adapt"):
        assert parser.parse_args([sub, "--out-dir", "runs/x"]).out == "runs/x"
        assert "deprecated" not in capsys.readouterr().err
        assert parser.parse_args([sub, "--out", "runs/y"]).out == "runs/y"
        assert "--out is deprecated" in capsys.readouterr().err
        with pytest.raises(SystemExit):   # one of them is required
            parser.parse_args([sub])


def test_a_benchmark_ends_a_user_error_with_one_error_line_and_status_2(capsys):
    from experiments._cli import fail
    from hwnas.errors import EXIT_ERROR

    with pytest.raises(SystemExit) as e:
        fail("--data x has 3 images: too few for batch size 64")
    assert e.value.code == EXIT_ERROR == 2
    assert capsys.readouterr().err == "error: --data x has 3 images: too few for batch size 64\n"
