"""Test helper (not a test module): run a training function in a child process and SIGKILL it mid-run.

A SIGKILL runs no handler: no ``on_exception.ckpt`` is written, and a resumed run can only start from what the
checkpoint callbacks wrote before (``last.ckpt``). The child is a fresh ``python -c`` started in the repository
root with one torch thread, like the test process (tests/conftest.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent("""
    import importlib, sys
    import torch
    torch.set_num_threads(1)
    from tests._kill import KillAt
    module, function, folder, at = sys.argv[1:5]
    getattr(importlib.import_module(module), function)(folder, [KillAt(int(at))])
    sys.exit(3)   # only reached when the kill did not happen
""")


class KillAt(pl.Callback):
    """SIGKILLs its own process at the start of the training batch with the given global step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run_killed(target: str, folder: Path, at_step: int, timeout: float = 600) -> None:
    """Run ``target`` (``"package.module:function"``, called as ``function(folder, callbacks)``) in a child process
    that is SIGKILLed at the start of global step ``at_step``; fail unless it died of that signal."""
    module, function = target.split(":")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", _CHILD, module, function, str(folder), str(at_step)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"the child was not killed (exit {proc.returncode}): {proc.stderr[-3000:]}")
