"""``hwnas export``: a search-space architecture to TorchScript (+ ONNX, Triton) (registered into :mod:`hwnas.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from hwnas.errors import HwnasError


def read_arch_file(path: str) -> dict[str, str]:
    """An architecture from a JSON file: ``{label: choice}`` or ``{"arch": {label: choice}, ...}``."""
    from hwnas.export._arch_file import read_arch_document

    return read_arch_document(path).arch


def _note(text: str) -> None:
    print(f"hwnas export: note: {text}", file=sys.stderr)


def resolve_settings(args: argparse.Namespace) -> tuple[str, dict[str, str], dict[str, Any], Any]:
    """(space, arch, config, input shape or None) from the architecture file, the command line overriding.

    A flag that disagrees with what the file records wins, with a note on stderr; a file without settings (an
    older ``arch.json``) leaves them to the flags, as before.
    """
    from hwnas.export._arch_file import read_arch_document

    doc = read_arch_document(args.arch)
    space, config = doc.space, dict(doc.space_config or {})
    if args.space is not None:
        if space is not None and args.space != space:
            _note(f"--space {args.space} overrides the space {space!r} recorded in {args.arch}; its recorded "
                  "configuration is not used")
            config = {}
        space = args.space
    if space is None:
        raise HwnasError(f"{args.arch} records no search space: pass --space (spos, proxyless)")
    for flag, key in (("--input-size", "input_size"), ("--num-classes", "num_classes"), ("--width-mult", "width_mult")):
        value = getattr(args, key)
        if value is None:
            continue
        if key in config and config[key] != value:
            _note(f"{flag} {value} overrides {key}={config[key]} recorded in {args.arch}")
        config[key] = value
    shape = tuple(args.input_shape) if args.input_shape is not None else None
    if shape is not None:
        if doc.input_shape is not None and shape != doc.input_shape:
            _note(f"--input-shape {','.join(map(str, shape))} overrides the input shape "
                  f"{','.join(map(str, doc.input_shape))} recorded in {args.arch}")
    elif doc.input_shape is not None and (args.input_size is None or (
            len(doc.input_shape) == 4 and doc.input_shape[2:] == (args.input_size, args.input_size))):
        shape = doc.input_shape   # unless --input-size changed the side: then 1,3,side,side as before
    return space, doc.arch, config, shape


def cmd_export(args: argparse.Namespace) -> int:
    from hwnas.export import export_subnet

    space, arch, config, input_shape = resolve_settings(args)
    # the command creates the folders it is told to write into (runs/export/...); the library refuses missing ones
    for target in (args.out, args.onnx, args.triton_repo):
        if target:
            Path(target).expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
    protocol = None
    if args.quick:
        from hwnas.builder import QUICK_PROTOCOL

        protocol = QUICK_PROTOCOL
    report = export_subnet(space, arch, out=args.out, weights=args.weights, config=config,
                           input_shape=input_shape, predictor=args.predictor, onnx=args.onnx,
                           triton_repo=args.triton_repo, triton_name=args.triton_name,
                           max_batch_size=args.max_batch_size, measure=args.measure, freeze=args.freeze,
                           protocol=protocol)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


def register_commands(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    """Add ``hwnas export`` to the ``hwnas`` parser.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The ``hwnas`` parser's subcommands.
    handlers : dict
        Command name -> function of the parsed arguments returning the exit code; filled in here.
    """
    from hwnas.cli import parse_input_shape

    p = sub.add_parser("export", help="export an architecture of a search space to TorchScript (+ ONNX, Triton)",
                       description="Build the subnet of ARCH, load weights, compile it with torch.jit.script, save "
                                   "it with hwnas metadata, check parity on the file as loaded back, and print a "
                                   "report (parameters, FLOPs, predicted and measured ms, parity).")
    p.add_argument("--space", default=None,
                   help="registered search space name (spos, proxyless); default: the one ARCH.json records")
    p.add_argument("--arch", required=True, metavar="ARCH.json",
                   help='JSON file as written by the searches (architecture, space, its configuration, input '
                        'shape), or just {"s1_b0": "shuffle3", ...}')
    p.add_argument("--weights", metavar="CKPT", default=None,
                   help="subnet or supernet state dict, or a (Lightning) checkpoint; random init when omitted")
    p.add_argument("--out", required=True, metavar="model.pt", help="TorchScript file to write")
    p.add_argument("--onnx", metavar="model.onnx", default=None, help="also export ONNX (checked with ONNX Runtime)")
    p.add_argument("--triton-repo", metavar="DIR", default=None, help="also write a Triton model repository entry")
    p.add_argument("--triton-name", default=None, help="Triton model name (default: from --out)")
    p.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size (0: no batching)")
    p.add_argument("--predictor", default="auto", metavar="NAME",
                   help="latency predictor: auto (the one of this machine), auto:BACKEND, a name or a directory; "
                        "stores the predicted ms in the file (%(default)s)")
    p.add_argument("--measure", action="store_true", help="measure the file on the predictor's backend")
    p.add_argument("--quick", action="store_true", help="with --measure: the quick measurement protocol")
    p.add_argument("--freeze", action="store_true", help="torch.jit.freeze the module (inference only)")
    p.add_argument("--input-size", type=int, default=None,
                   help="space config: input side in pixels (default: recorded in ARCH.json)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="space config: number of classes (default: recorded in ARCH.json)")
    p.add_argument("--width-mult", type=float, default=None,
                   help="space config: width multiplier (default: recorded in ARCH.json)")
    p.add_argument("--input-shape", type=parse_input_shape, default=None,
                   help="export input shape, e.g. 1,3,32,32 (default: recorded in ARCH.json, else "
                        "1,3,input_size,input_size)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    handlers["export"] = cmd_export
