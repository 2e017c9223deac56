"""Scoring speed of LatencyTable against an NNI 3.0 ExpressionProfiler over the same table.

For each search space (ImageNet config, 224 px) a :class:`hwnas.LatencyTable` is built once; then

- ``latency_batch`` on an (n, L) index matrix of random architectures (one numpy gather + sum),
- ``latency_batch`` on a list of architecture dicts, and ``latency`` called per dict,
- NNI's way: an ``ExpressionProfiler`` whose expression is ``fixed + Σ_l switch_case(choice_l, row_l)``
  (``MutableExpression.switch_case`` per ``LayerChoice``, float constants), timed on ``profile(sample)``,

are timed (best of ``--repeats``) and printed as architectures per second, with the ratio to NNI. Goal:
``latency_batch`` ≥ 100,000 archs/s. Scores of the two are checked to agree.

The predictor is the tiny fake of the unit tests (``tests/unit/test_tables.py``), not an embedded one: a table's
scoring speed depends on its shape (labels, choices), not on the values in it, so the latency values printed are
not meaningful and the speeds are.

    python -m experiments.benchmarks.table_speed [--archs 200000] [--nni-samples 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from nni.mutable import MutableExpression
from nni.nas.profiler import ExpressionProfiler

import search_spaces as ss
from hwnas.tables import LatencyTable


class TableExpressionProfiler(ExpressionProfiler):
    """NNI-style profiler: the table as a symbolic expression over the space's ``LayerChoice`` mutables.

    Parameters
    ----------
    model_space : ChainSpace
        The space (not yet mutated by a strategy): its ``simplify()`` gives label → ``Categorical``.
    table : LatencyTable
        Per-(label, choice) latency, ms.
    """

    def __init__(self, model_space: ss.ChainSpace, table: LatencyTable):
        mutables = model_space.simplify()
        expression: MutableExpression | float = float(table.fixed_latency)
        for label, row in table.rows.items():
            expression = expression + MutableExpression.switch_case(
                mutables[label], {choice: float(ms) for choice, ms in row.items()})
        self.expression = expression


def _best_s(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def main() -> None:
    from tests.unit.test_tables import fake_predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, default=200_000, help="architectures in the index matrix")
    ap.add_argument("--dicts", type=int, default=50_000, help="architectures given as dicts")
    ap.add_argument("--nni-samples", type=int, default=5_000, help="samples profiled with NNI's expression")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pred = fake_predictor()
    print(f"device: {_cpu_model()}, numpy {np.__version__}, 1 thread")
    print(f"predictor: {pred.name} — the unit tests' FAKE predictor (scoring speed does not depend on the values); "
          "latency values are not meaningful, speeds are")
    print(f"{'space':10s} {'L':>3s} {'build s':>8s} {'batch idx/s':>13s} {'batch dict/s':>13s} "
          f"{'latency()/s':>12s} {'NNI expr/s':>11s} {'idx/NNI':>8s} {'dict/NNI':>9s}")
    for name in ("spos", "proxyless"):
        space = ss.create_space(name).eval()
        t = time.perf_counter()
        table = LatencyTable.build(space, pred, (1, 3, 224, 224))
        t_build = time.perf_counter() - t
        profiler = TableExpressionProfiler(space, table)   # before any strategy mutates the space
        rng = np.random.default_rng(0)
        idx = (rng.random((args.archs, len(table.labels))) * table.n_choices).astype(np.intp)
        choices = table.choices
        archs = [{label: choices[label][j] for label, j in zip(table.labels, row)}
                 for row in idx[:max(args.dicts, args.nni_samples)].tolist()]
        dicts, samples = archs[:args.dicts], archs[:args.nni_samples]

        r_idx = args.archs / _best_s(lambda: table.latency_batch(idx), args.repeats)
        r_dict = len(dicts) / _best_s(lambda: table.latency_batch(dicts), args.repeats)
        r_one = len(samples) / _best_s(lambda: [table.latency(a) for a in samples], args.repeats)
        r_nni = len(samples) / _best_s(lambda: [profiler.profile(s) for s in samples], args.repeats)

        ours = table.latency_batch(idx[:len(samples)])
        theirs = np.array([profiler.profile(s) for s in samples])
        if not np.allclose(ours, theirs, rtol=1e-12, atol=0):
            raise SystemExit(f"{name}: table and NNI expression disagree (max diff {np.abs(ours - theirs).max()})")
        print(f"{name:10s} {len(table.labels):3d} {t_build:8.2f} {r_idx:13,.0f} {r_dict:13,.0f} {r_one:12,.0f} "
              f"{r_nni:11,.0f} {r_idx / r_nni:7,.0f}x {r_dict / r_nni:8,.1f}x")
        if r_idx < 100_000:
            print(f"  BELOW TARGET: latency_batch on an index matrix is {r_idx:,.0f} archs/s (< 100,000)")
    print(f"(index matrix: {args.archs:,} archs; dicts: {args.dicts:,}; latency() and NNI: {args.nni_samples:,} "
          f"samples; best of {args.repeats}; scores of table and NNI expression agree to 1e-12)")


if __name__ == "__main__":
    main()
