"""Command-line pieces shared by the entry points: reading configurations, the data and output options.

Configuration is read here and nowhere else (the library takes dataclasses, never YAML or argparse): a YAML file
(:func:`read_yaml`) either supplies option defaults (:func:`parse_with_config`: keys are the option names, the
command line wins; ``random_search``, ``spos_search``, ``proxyless_train``) or holds sections of dataclasses
(:func:`load_sections`: ``section.key=value`` overrides parsed as YAML; ``nni_search``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

from hwnas.cli import DeprecatedAlias

__all__ = ["DeprecatedAlias", "add_data_args", "add_out_dir_arg", "apply_override", "load_sections",
           "parse_with_config", "read_yaml", "yaml_defaults"]


def fail(message: str) -> NoReturn:
    """End a command-line program on a user error: one ``error:`` line on stderr, exit status
    :data:`hwnas.errors.EXIT_ERROR` (the policy of every entry point and benchmark)."""
    from hwnas.errors import EXIT_ERROR

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_ERROR)


def add_out_dir_arg(parser: argparse.ArgumentParser, default: str | None, help: str) -> argparse.Action:
    """``--out-dir DIR`` (dest ``out_dir``), the one name of the results folder of every entry point, and the old
    ``--out`` as a deprecated alias."""
    action = parser.add_argument("--out-dir", metavar="DIR", default=default, help=help)
    parser.add_argument("--out", dest="out_dir", metavar="DIR", action=DeprecatedAlias, new="--out-dir",
                        help=argparse.SUPPRESS)
    return action


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping of a YAML file (empty file: ``{}``).

    Raises
    ------
    ValueError
        The file is missing, is not valid YAML or holds no mapping (the message names the file; ``what`` says
        what the mapping should hold).
    """
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{file} does not exist")
    try:
        doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{file} is not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{file} must hold a mapping of {what}")
    return doc


def yaml_defaults(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The option defaults of a YAML file, keyed by ``dest``; a missing file, invalid YAML or unknown keys end
    the program with a usage error naming them (keys may be spelled ``batch-size`` or ``batch_size``)."""
    try:
        doc = read_yaml(path, "option names to values")
    except ValueError as err:
        parser.error(f"--config: {err}")
    file = Path(path).expanduser()
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


def apply_override(doc: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (the value parsed as YAML) to a nested config document in place."""
    import yaml

    if "=" not in assignment:
        raise ValueError(f"--set needs KEY=VALUE, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ValueError(f"--set: empty key in {assignment!r}")
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {part!r} is not a section")
    node[parts[-1]] = value


def load_sections(cls: type, sections: Mapping[str, type], doc: Mapping[str, Any]) -> Any:
    """``cls(**doc)`` with each key of ``sections`` built as its dataclass; unknown keys are an error naming them.

    Parameters
    ----------
    cls : dataclass type
        The whole configuration.
    sections : mapping
        Key of ``doc`` -> the dataclass its mapping becomes (other keys are passed as they are).
    doc : mapping
        A nested document (a YAML file after :func:`apply_override`).

    Raises
    ------
    ValueError
        A key ``cls`` or a section does not have (the message lists the valid ones).
    """
    top = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - top)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid: {sorted(top)}")
    kwargs: dict[str, Any] = {}
    for key, value in doc.items():
        section = sections.get(key)
        if section is None:
            kwargs[key] = value
            continue
        value = dict(value or {})
        names = {f.name for f in dataclasses.fields(section)}
        bad = sorted(set(value) - names)
        if bad:
            raise ValueError(f"unknown key(s) {bad} in section {key!r}; valid: {sorted(names)}")
        kwargs[key] = section(**value)
    return cls(**kwargs)
