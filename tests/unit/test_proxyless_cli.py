"""experiments.proxyless_train command line: YAML defaults, command-line precedence, errors."""

from __future__ import annotations

import pytest

from experiments.proxyless_train import parse_args, split_train


def test_yaml_config_sets_defaults_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('loss: "add#linear"\ntarget-ms: 2.5\nepochs: 4\ndevices: 2\n')
    args = parse_args(["--config", str(cfg), "--epochs", "7"])
    assert (args.loss, args.target_ms, args.epochs, args.devices) == ("add#linear", 2.5, 7, 2)
    shipped = parse_args(["--config", "experiments/configs/proxyless.yaml"])
    assert shipped.loss == "mul#log" and shipped.arch_every == 5 and shipped.data == "digits"


def test_bad_config_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochz: 3\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(cfg)])
    assert "unknown option(s) ['epochz']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def test_split_train_is_seeded_and_disjoint():
    import torch
    from torch.utils.data import TensorDataset

    data = TensorDataset(torch.arange(50).float(), torch.arange(50))
    weight, arch = split_train(data, 0.2, seed=0)
    assert (len(weight), len(arch)) == (40, 10)
    ids = set(weight.tensors[1].tolist()) | set(arch.tensors[1].tolist())
    assert ids == set(range(50))
    assert torch.equal(split_train(data, 0.2, seed=0)[1].tensors[1], arch.tensors[1])
    with pytest.raises(SystemExit):
        split_train(data, 1.0, seed=0)
