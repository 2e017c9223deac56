"""experiments/benchmarks/ts_layout_rules.py: predicted oneDNN conversions against TorchScript's compiled graphs."""

import pytest
import torch

from experiments.benchmarks import ts_layout_rules as tl


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")
def test_a_family_filtered_check_compares_every_chosen_network():
    rows = tl.check(every=10, families=["densenet"], progress=False)
    assert rows and {r["family"] for r in rows} == {"densenet"}
    for r in rows:   # densenet's single-input concats: the copy breaks the group (hwnas.graph.COPIED_INPUTS)
        assert r["predicted"] == r["compiled"], r["model"]
    assert "densenet" in tl.table(rows)
