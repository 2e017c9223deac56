"""The ``hwnas`` command line: ``hwnas list-predictors | predict | build | adapt | export | ...``.

The parser is built here; the builder's and the exporter's subcommands add their own options
(:func:`hwnas.builder.register_commands`, :func:`hwnas.export.register_commands`). Parsing stays at this edge:
each command turns its arguments into library calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

from hwnas.errors import EXIT_ERROR, HwnasError


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option, kept for one release: stores like the new one and prints a note once."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        noted = getattr(parser, "_hwnas_noted", set())
        if option_string not in noted:   # a parser that parses twice: one note
            print(f"note: {option_string} is deprecated and will be removed in the next release; use {self.new}",
                  file=sys.stderr)
            noted.add(option_string)
            parser._hwnas_noted = noted   # type: ignore[attr-defined]


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``--input-shape`` of the command line: ``"1,3,224,224"`` (or ``1x3x224x224``) to a tuple of positive ints.

    Raises
    ------
    argparse.ArgumentTypeError
        If the text is not such a list (argparse prints it as the option's error).
    """
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must look like 1,3,224,224, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"input shape must have positive sizes, got {text!r}")
    return shape


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(list(columns)), line(["-" * w for w in widths])] + [line(r) for r in cells])


def cmd_list_predictors(args: argparse.Namespace) -> int:
    from hwnas.predictor import list_latency_predictors

    from hwnas.predictor import adapt_command, user_dir

    preds = list_latency_predictors()
    if args.json:
        print(json.dumps(preds, indent=2))
        return 0
    if not preds:
        print(f"no predictors installed (embedded or in {user_dir()})")
        return 0
    rows = [dict(p, this_machine="yes" if p["matches_this_machine"] else "no",
                 device=str(p["device"]).split(";")[0]) for p in preds]
    print(_table(rows, ["name", "backend", "this_machine", "isa", "source", "version", "device"]))
    for backend in sorted({str(p["backend"]) for p in preds}):
        if not any(p["matches_this_machine"] for p in preds if p["backend"] == backend):
            print(f"\nno {backend} predictor matches this machine; 'auto' uses the closest one. Make one for this "
                  f"machine with: {adapt_command(backend)}")
    print(f"\nuser predictors: {user_dir()} (set HWNAS_PREDICTORS to use another folder)")
    return 0


def _input_shape(args: argparse.Namespace, model_type: str, source: str) -> tuple[int, ...]:
    """The input shape to price at: ``--input-shape``, else what the file records, never a silent guess.

    A torchvision model defaults to 1,3,224,224; a TorchScript or ONNX file to the input shape in its hwnas
    metadata (``hwnas export``), with a note when ``--input-shape`` disagrees with it; an ONNX file without it to
    its input's static dims. Without either, ``--input-shape`` is required.
    """
    shape = tuple(args.input_shape) if args.input_shape is not None else None
    text = lambda s: ",".join(map(str, s))  # noqa: E731
    if model_type == "torch":
        return shape or (1, 3, 224, 224)
    if not os.path.isfile(source):
        raise HwnasError(f"{'TorchScript' if model_type == 'torchscript' else 'ONNX'} file not found: {source}")
    static = None
    if model_type == "torchscript":
        from hwnas.export import ExportError, read_metadata

        try:
            recorded = read_metadata(source).get("input_shape")
        except ExportError:   # not written by hwnas export (or unreadable: the capture says why)
            recorded = None
        recorded = tuple(int(s) for s in recorded) if recorded else None
    else:
        from hwnas.graph import onnx_input_shapes

        static, recorded = onnx_input_shapes(source)
    if shape is not None:
        if recorded is not None and shape != recorded:
            print(f"hwnas predict: note: --input-shape {text(shape)} overrides the input shape {text(recorded)} "
                  f"recorded in {source}", file=sys.stderr)
        return shape   # an ONNX input fixed to other dims is refused by the capture, naming both
    if recorded is not None:
        return recorded
    if static is not None:
        return static
    if model_type == "torchscript":
        raise HwnasError(f"{source} records no input shape (no hwnas export metadata): pass --input-shape, "
                         "e.g. --input-shape 1,3,224,224")
    raise HwnasError(f"the input of {source} has dynamic dimensions and no recorded input shape: pass "
                     "--input-shape, e.g. --input-shape 1,3,224,224")


def cmd_predict(args: argparse.Namespace) -> int:
    import time

    from hwnas.predictor import load_latency_predictor

    predictor = load_latency_predictor(args.predictor)
    if args.torchvision:
        import torchvision

        try:
            model = torchvision.models.get_model(args.torchvision, weights=None)
        except ValueError as e:
            raise HwnasError(f"unknown torchvision model {args.torchvision!r}") from e
        source, model_type = args.torchvision, "torch"
    elif args.onnx:
        model, source, model_type = args.onnx, args.onnx, "onnx"
    else:
        model, source, model_type = args.torchscript, args.torchscript, "torchscript"
    shape = _input_shape(args, model_type, source)
    t0 = time.perf_counter()
    rows = predictor.predict_kernels(model, model_type, shape)
    elapsed = (time.perf_counter() - t0) * 1e3
    total = sum(r["ms"] for r in rows) + predictor.overhead_ms
    if args.json:
        out = {"model": source, "predictor": predictor.name, "backend": predictor.backend,
               "input_shape": list(shape), "latency_ms": total, "kernels": len(rows)}
        if args.per_kernel:
            out["per_kernel"] = rows
        print(json.dumps(out, indent=2))
        return 0
    if args.per_kernel:
        table = [{"#": i, "kernel": r["type"], "in": f"{int(r['features']['cin'])}x{int(r['features']['hin'])}",
                  "out": f"{int(r['features']['cout'])}x{int(r['features']['hout'])}",
                  "MMACs": f"{r['features']['macs']:.2f}", "ms": f"{r['ms']:.4f}"} for i, r in enumerate(rows)]
        print(_table(table, ["#", "kernel", "in", "out", "MMACs", "ms"]))
    print(f"{source}: {total:.3f} ms predicted on {predictor.name} ({predictor.backend}), "
          f"{len(rows)} kernels, input {tuple(shape)} (prediction took {elapsed:.0f} ms)")
    return 0


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(prog="hwnas", description="Hardware-aware NAS for NNI: latency prediction, "
                                     "search spaces, latency-constrained search.")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}

    p = sub.add_parser("list-predictors", help="list the installed latency predictors and which matches this machine")
    p.add_argument("--json", action="store_true", help="print JSON")
    handlers["list-predictors"] = cmd_list_predictors

    p = sub.add_parser("predict", help="predict a model's latency (ms)")
    p.add_argument("--predictor", default="auto",
                   help="auto (the one of this machine; auto:BACKEND for another backend), a predictor name or "
                        "a predictor directory (%(default)s)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--torchvision", metavar="MODEL", help="a torchvision classification model name")
    src.add_argument("--onnx", metavar="FILE", help="an ONNX file")
    src.add_argument("--torchscript", metavar="FILE", help="a TorchScript file")
    p.add_argument("--input-shape", type=parse_input_shape, default=None,
                   help="e.g. 1,3,224,224 (default: 1,3,224,224 for --torchvision; for --torchscript and --onnx the "
                        "shape hwnas export recorded in the file, else an ONNX file's static input dims; required "
                        "otherwise)")
    p.add_argument("--per-kernel", action="store_true", help="print one row per kernel")
    p.add_argument("--json", action="store_true", help="print JSON")
    handlers["predict"] = cmd_predict

    from hwnas.builder import register_commands as builder_commands
    from hwnas.export import register_commands as export_commands

    for register in (builder_commands, export_commands):
        register(sub, handlers)
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = _build_parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except HwnasError as e:
        print(f"hwnas {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:   # output piped into e.g. `head`, which closed early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
