"""End to end: the random-search command with real training, a real kill, resume, report and TorchScript export.

Small on purpose (proxyless at width 0.25 on 8x8 digits, a few optimiser steps per trial): what is checked is the
plumbing with the real trainer, the real exporter and a real SIGKILL, not accuracy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--width-mult", "0.25", "--image-size", "8", "--epochs", "1", "--max-steps", "3", "--batch-size", "32",
        "--budget-quantile", "0.6", "--no-progress", "--threads", "1"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_command_trains_resumes_and_exports(tmp_path, capsys):
    from experiments import random_search as cli

    out = tmp_path / "run"
    assert cli.main([*ARGS, "--trials", "2", "--out-dir", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["trials"] == 2 and summary["ran"] == 2 and summary["resumed"] == 0
    assert 0 < summary["acceptance_rate"] < 1 and summary["best"]["latency_ms"] <= summary["budget_ms"]
    assert "accepts" in text and "rank  trial  accuracy" in text and f"results: {out.resolve()}" in text
    # the winner is measured on this machine: one line comparing it with its prediction and the budget
    winner = [line for line in text.splitlines() if "; winner predicted " in line]
    assert len(winner) == 1 and winner[0].startswith(f"budget {summary['budget_ms']:.3f} ms; winner predicted ")
    assert winner[0].endswith("(torchscript-cpu, this machine)")
    records = _lines(out / "trials.jsonl")
    assert [r["trial"] for r in records] == [0, 1]
    assert all(r["steps"] == 3 and 0 <= r["default"] <= 1 and r["latency_ms"] <= summary["budget_ms"]
               for r in records)

    # the exported best network is the reloaded state dict, and its architecture is recorded
    best = json.loads((out / "best" / "arch.json").read_text())
    import search_spaces as ss

    net = ss.build_subnet("proxyless", best["arch"], config=best["space_config"]).eval()
    net.load_state_dict(torch.load(out / "best" / "state_dict.pt", weights_only=True))
    scripted = torch.jit.load(str(out / "best" / "model.pt"))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    assert (out / "search.png").stat().st_size > 1000
    top = json.loads((out / "topk.json").read_text())["top"]
    assert top[0]["trial"] == best["record"]["trial"] == summary["best"]["trial"]

    # growing the search resumes: only the new trial trains
    assert cli.main([*ARGS, "--trials", "3", "--out-dir", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ran"] == 1 and summary["resumed"] == 2
    assert [r["trial"] for r in _lines(out / "trials.jsonl")] == [0, 1, 2]
    assert _lines(out / "trials.jsonl")[:2] == records

    # another configuration in the same folder is refused with a clear message
    assert cli.main([*ARGS, "--trials", "3", "--seed", "5", "--out-dir", str(out)]) == 2
    assert "another configuration (seed: was 0, now 5)" in capsys.readouterr().err


def test_a_killed_run_resumes_without_repeating_trials_and_ends_like_an_uninterrupted_one(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "experiments.random_search", *ARGS, "--max-steps", "15", "--trials", "3",
           "--no-export", "--out-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not _lines(out / "trials.jsonl") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(f"the search ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
    before = _lines(out / "trials.jsonl")
    assert before and len(before) < 3

    from experiments import random_search as cli

    assert cli.main([*ARGS, "--max-steps", "15", "--trials", "3", "--no-export", "--out-dir", str(out)]) == 0
    after = _lines(out / "trials.jsonl")
    assert [r["trial"] for r in after] == [0, 1, 2]                     # each trial exactly once
    assert after[: len(before)] == before                                # finished trials untouched

    # and the search ends as an uninterrupted one does: the same records, trial by trial (timings aside; the
    # trial cut by the kill was trained again from its own seed, not from where the killed process was)
    ref = tmp_path / "uninterrupted"
    assert cli.main([*ARGS, "--max-steps", "15", "--trials", "3", "--no-export", "--out-dir", str(ref)]) == 0
    untimed = [{k: v for k, v in r.items() if k != "seconds"} for r in after]
    assert untimed == [{k: v for k, v in r.items() if k != "seconds"} for r in _lines(ref / "trials.jsonl")]
    assert all(r["steps"] == 15 and r["default"] is not None for r in after)
