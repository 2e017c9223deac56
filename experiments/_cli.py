"""Command-line pieces shared by the entry points: YAML option defaults and the data options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from hwnas.cli import DeprecatedAlias

__all__ = ["DeprecatedAlias", "add_data_args", "add_out_dir_arg", "parse_with_config", "yaml_defaults"]


def add_out_dir_arg(parser: argparse.ArgumentParser, default: str | None, help: str) -> argparse.Action:
    """``--out-dir DIR`` (dest ``out_dir``), the one name of the results folder of every entry point, and the old
    ``--out`` as a deprecated alias."""
    action = parser.add_argument("--out-dir", metavar="DIR", default=default, help=help)
    parser.add_argument("--out", dest="out_dir", metavar="DIR", action=DeprecatedAlias, new="--out-dir",
                        help=argparse.SUPPRESS)
    return action


def yaml_defaults(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The option defaults of a YAML file, keyed by ``dest``; a missing file, invalid YAML or unknown keys end
    the program with a usage error naming them (keys may be spelled ``batch-size`` or ``batch_size``)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        parser.error(f"--config: {file} does not exist")
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        parser.error(f"--config: {file} is not valid YAML: {err}")
    if not isinstance(doc, dict):
        parser.error(f"--config: {file} must hold a mapping of option names to values")
    dests = {a.dest for a in parser._actions} - {"help", "config"}
    flags = {s.lstrip("-").replace("-", "_"): a.dest for a in parser._actions for s in a.option_strings}
    out, unknown = {}, []
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        dest = flags.get(name, name)
        if dest not in dests:
            unknown.append(str(key))
        else:
            out[dest] = value
    if unknown:
        parser.error(f"--config: unknown option(s) {unknown} in {file}; valid keys: "
                     f"{sorted(k for k in flags if flags[k] in dests)}")
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; a ``--config YAML`` supplies defaults that the other options override."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        parser.set_defaults(**yaml_defaults(pre.config, parser))
    return parser.parse_args(argv)


def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The ``data`` option group: ``--data``, ``--data-root``, ``--image-size``, ``--workers``."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", default="digits", choices=("digits", "cifar10", "imagefolder"),
                   help="digits (ships with scikit-learn), cifar10 or imagefolder (%(default)s)")
    g.add_argument("--data-root", metavar="DIR", default=None,
                   help="directory of CIFAR-10 (cifar-10-batches-py) or an image folder "
                        "(train/<class>/..., val/<class>/...); never downloaded")
    g.add_argument("--image-size", metavar="PX", type=int, default=32,
                   help="input side in pixels, also the space's (%(default)s)")
    g.add_argument("--workers", metavar="N", type=int, default=0, help="DataLoader worker processes (%(default)s)")
    return g
