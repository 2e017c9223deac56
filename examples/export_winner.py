"""Export a (here: random) winner of a search to TorchScript, with the embedded predictor's latency in the file.

    python examples/export_winner.py [--space proxyless] [--out /tmp/winner.pt]

The file loads anywhere with plain torch (no hwnas, no NNI)::

    extra = {"hwnas.json": ""}
    model = torch.jit.load("/tmp/winner.pt", _extra_files=extra)
"""

import argparse
import os
import tempfile

import search_spaces as ss
from hwnas import load_latency_predictor
from hwnas.builder import QUICK_PROTOCOL
from hwnas.export import export_subnet, read_metadata

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--space", default="proxyless", choices=["spos", "proxyless"])
parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "hwnas_winner.pt"))
args = parser.parse_args()

space = ss.create_space(args.space, input_size=32, num_classes=10, width_mult=0.5)  # in place of a trained supernet
arch = ss.random_arch(space, seed=0)                                                  # in place of the search's winner
predictor = load_latency_predictor("auto")

report = export_subnet(space, arch, out=args.out, predictor=predictor,
                       protocol=QUICK_PROTOCOL)   # quick measurement; drop it for the default protocol
print(report.table())
print(f"\nmetadata stored in the file: {sorted(read_metadata(args.out))}")
