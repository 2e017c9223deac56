import os

import pytest

# Tests run on 2 cores next to other work: keep torch to one thread so timings of nothing are asserted
# and runs stay predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _user_predictors(tmp_path_factory, monkeypatch):
    """Every test gets an empty user predictor folder: builds and adaptations register there, never into the
    real ``~/.cache/hwnas/predictors`` (and a predictor the developer registered cannot change a test)."""
    monkeypatch.setenv("HWNAS_PREDICTORS", str(tmp_path_factory.mktemp("user_predictors")))
    yield
