"""``hwnas export``: a search-space architecture to TorchScript (+ ONNX, Triton) (registered into :mod:`hwnas.cli`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from hwnas.errors import HwnasError


def read_arch_file(path: str) -> dict[str, str]:
    """An architecture from a JSON file: ``{label: choice}`` or ``{"arch": {label: choice}, ...}``."""
    try:
        data: Any = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HwnasError(f"architecture file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HwnasError(f"cannot read architecture file {path!r} as JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]
    if not (isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values())):
        raise HwnasError(f"architecture file {path!r} must hold a JSON object label -> choice name "
                         "(or {\"arch\": {...}})")
    return {str(k): v for k, v in data.items()}


def cmd_export(args: argparse.Namespace) -> int:
    from hwnas.export import export_subnet

    arch = read_arch_file(args.arch)
    config = {k: v for k, v in (("input_size", args.input_size), ("num_classes", args.num_classes),
                                ("width_mult", args.width_mult)) if v is not None}
    protocol = None
    if args.quick:
        from hwnas.builder import QUICK_PROTOCOL

        protocol = QUICK_PROTOCOL
    report = export_subnet(args.space, arch, out=args.out, weights=args.weights, config=config,
                           input_shape=args.input_shape, predictor=args.predictor, onnx=args.onnx,
                           triton_repo=args.triton_repo, triton_name=args.triton_name,
                           max_batch_size=args.max_batch_size, measure=args.measure, freeze=args.freeze,
                           protocol=protocol)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


def register(sub: argparse._SubParsersAction, handlers: dict[str, Callable]) -> None:
    from hwnas.cli import _shape

    p = sub.add_parser("export", help="export an architecture of a search space to TorchScript (+ ONNX, Triton)",
                       description="Build the subnet of ARCH, load weights, compile it with torch.jit.script, save "
                                   "it with hwnas metadata, check parity on the file as loaded back, and print a "
                                   "report (parameters, FLOPs, predicted and measured ms, parity).")
    p.add_argument("--space", required=True, help="registered search space name (spos, proxyless)")
    p.add_argument("--arch", required=True, metavar="ARCH.json",
                   help='JSON file: {"s1_b0": "shuffle3", ...} or {"arch": {...}} as written by the searches')
    p.add_argument("--weights", metavar="CKPT", default=None,
                   help="subnet or supernet state dict, or a (Lightning) checkpoint; random init when omitted")
    p.add_argument("--out", required=True, metavar="model.pt", help="TorchScript file to write")
    p.add_argument("--onnx", metavar="model.onnx", default=None, help="also export ONNX (checked with ONNX Runtime)")
    p.add_argument("--triton-repo", metavar="DIR", default=None, help="also write a Triton model repository entry")
    p.add_argument("--triton-name", default=None, help="Triton model name (default: from --out)")
    p.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size (0: no batching)")
    p.add_argument("--predictor", default=None, metavar="NAME",
                   help="latency predictor (embedded name or directory): stores the predicted ms in the file")
    p.add_argument("--measure", action="store_true", help="measure the file on the predictor's backend")
    p.add_argument("--quick", action="store_true", help="with --measure: the quick measurement protocol")
    p.add_argument("--freeze", action="store_true", help="torch.jit.freeze the module (inference only)")
    p.add_argument("--input-size", type=int, default=None, help="space config: input side in pixels")
    p.add_argument("--num-classes", type=int, default=None, help="space config: number of classes")
    p.add_argument("--width-mult", type=float, default=None, help="space config: width multiplier")
    p.add_argument("--input-shape", type=_shape, default=None,
                   help="export input shape, e.g. 1,3,32,32 (default: 1,3,input_size,input_size)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    handlers["export"] = cmd_export
