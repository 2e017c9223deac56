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
