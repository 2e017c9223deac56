"""DDP with two CPU processes (gloo) for both one-shot methods: the ranks stay identical, and a rank SIGKILLed
mid-run leaves a checkpoint that resumes to the state of an uninterrupted run.

The two ranks are external processes to Lightning (its ``LightningEnvironment``: ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT`` set; ``TrainerConfig(devices=2, strategy="ddp_find_unused_parameters_true")``),
forked from one child process that imported torch, Lightning and NNI once (8 s of CPU a process). Three launches
of two ranks each cover both methods:

1. ProxylessNAS uninterrupted, then SPOS with rank 1 SIGKILLed at the start of step ``KILL_AT``;
2. SPOS uninterrupted, then ProxylessNAS with rank 1 SIGKILLed likewise;
3. both resumed from their killed run's newest checkpoint.

When rank 1 dies, its peer is stuck in (or fails out of) a gloo collective; it is SIGKILLed as a job scheduler
would. Data: 48 random 8x8 images sharded by :class:`~hwnas.oneshot.ResidentLoader` (3 batches of 8 per rank and
epoch), 2 epochs; ``last.ckpt`` every 2 steps and at the end of each epoch (rank 0 writes it; all ranks wait at
its barrier), so the kill at the start of step 5 leaves the mid-epoch checkpoint of step 4 (epoch 1, 1 batch
in), and the resumed ranks skip that batch of their shards. "Identical" ranks: parameters (weights, ``alpha``)
and the derived architecture (ProxylessNAS) or the sampled paths' counts (SPOS); BatchNorm statistics are
buffers that DDP broadcasts from rank 0 before every forward pass through it (ProxylessNAS's architecture step
runs the supernet outside the DDP wrapper), so the ranks' statistics differ; a checkpoint holds rank 0's, and
rank 0 resumes to the uninterrupted run's state in everything, rank 1 in its parameters. Latency tables are made up (no predictor is under
test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SIDE, N, BATCH, EPOCHS, EVERY, KILL_AT = 8, 48, 8, 2, 2, 5
STEPS = EPOCHS * N // (2 * BATCH)   # optimizer steps of a run (per rank)

_CHILD = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from tests.integration.test_oneshot_ddp import launch_all
    print(json.dumps(launch_all(json.loads(sys.argv[1]))))
""")


def _made_up_table(space, name: str):
    """A latency table over the space's real labels and choices, latencies made up (position and choice)."""
    import search_spaces as ss
    from hwnas.tables import SCHEMA, SCHEMA_VERSION, LatencyTable

    blocks = [{"label": label, "choices": names,
               "latency_ms": [0.0 if c == "skip" else 0.1 * (1 + j) * (1 + 0.05 * i) for j, c in enumerate(names)],
               "flops": [1000] * len(names), "params": [100] * len(names)}
              for i, (label, names) in enumerate(ss.choices(space).items())]
    return LatencyTable({
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "units": {"latency": "ms", "flops": "multiply-accumulates per image", "params": "count"},
        "space": {"name": name, "config": {}}, "input_shape": [1, 3, SIDE, SIDE],
        "predictor": {"name": "made-up", "checksum": "0"},
        "fixed": {"latency_ms": 0.5, "overhead_ms": 0.0, "flops": 0, "params": 0, "slots": 2}, "blocks": blocks})


def _train(method: str, folder: Path, resume: bool, kill_at: int | None) -> None:
    """One rank's run of ``method`` in ``folder``; writes ``final_rank<r>.pt`` (state dict, architecture)."""
    import pytorch_lightning as pl

    import search_spaces as ss
    from hwnas.nas import BudgetedSampler, LatencyBudget, LatencyLossConfig
    from hwnas.oneshot import (ProxylessBatches, ProxylessModule, ProxylessSearchConfig, ResidentLoader,
                               SposSupernetModule, SupernetConfig, TrainerConfig, fit)
    from tests._kill import KillAt

    rank = int(os.environ["RANK"])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 3, SIDE, SIDE, generator=g), torch.randint(0, 3, (N,), generator=g)
    pl.seed_everything(0, verbose=False)
    space = ss.create_space(method, input_size=SIDE, num_classes=3, width_mult=0.25, dropout=0.0)
    table = _made_up_table(space, method)
    train = ResidentLoader([x, y], BATCH, shuffle=True, seed=0)
    if method == "proxyless":
        lo, hi = table.min_latency(), table.max_latency()
        module = ProxylessModule(space, table, ProxylessSearchConfig(
            loss=LatencyLossConfig(target_ms=lo + 0.3 * (hi - lo)), arch_every=2, arch_lr=0.05))
        data = ProxylessBatches(train, ResidentLoader([x.flip(0), y.flip(0)], BATCH, shuffle=True, seed=1),
                                arch_every=2)
    else:
        module = SposSupernetModule(space, BudgetedSampler(table, LatencyBudget(table.max_latency())),
                                    SupernetConfig(lr=0.05, seed=0))
        data = train
    cfg = TrainerConfig(max_epochs=EPOCHS, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                        checkpoint_dir=str(folder), resume=resume, progress=False, log_every_n_steps=1,
                        checkpoint_every_n_steps=EVERY)
    callbacks = [KillAt(kill_at)] if kill_at is not None and rank == 1 else []
    trainer = fit(module, data, None, cfg, callbacks=callbacks)
    arch = module.derived_arch() if method == "proxyless" else module.choice_counts
    params = {k: p.detach().clone() for k, p in module.named_parameters()}
    buffers = {k: b.detach().clone() for k, b in module.named_buffers()}
    torch.save({"params": params, "buffers": buffers, "arch": arch, "global_step": trainer.global_step},
               folder / f"final_rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(jobs: list[str], killed: bool, timeout: float) -> list[int]:
    """Fork two ranks that run ``jobs`` (``method:mode:folder``, mode ref, kill or resume) one after the other;
    with ``killed``, SIGKILL rank 0 once rank 1 has died. Returns the ranks' wait statuses."""
    port = _free_port()
    pids = []
    for rank in (0, 1):
        pid = os.fork()
        if pid == 0:   # a rank: run the jobs, exit without the parent's clean-up
            code = 0
            try:
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                                  RANK=str(rank), LOCAL_RANK=str(rank))
                for job in jobs:
                    method, mode, folder = job.split(":", 2)
                    _train(method, Path(folder), resume=mode == "resume", kill_at=KILL_AT if mode == "kill" else None)
            except BaseException:  # noqa: BLE001 - reported through the exit status and stderr
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    status: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(status) < 2:
        for i, pid in enumerate(pids):
            if i not in status:
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status[i] = st
        if killed and 1 in status and 0 not in status:
            os.kill(pids[0], signal.SIGKILL)   # its peer is gone: the job is over (a scheduler would kill it)
        if time.monotonic() > deadline:
            for i, pid in enumerate(pids):
                if i not in status:
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    return [status[0], status[1]]


def launch_all(launches: list[dict]) -> list[list[int]]:
    """The child process's work: each ``{"jobs": [...], "killed": bool}`` launched in turn (its wait statuses), or
    each ``{"inspect": [folder, ...]}`` (:func:`_inspect`).
    Everything a rank imports is imported here first, once, so that the forked ranks share it."""
    import pytorch_lightning  # noqa: F401
    import search_spaces  # noqa: F401
    import hwnas.nas  # noqa: F401
    import hwnas.oneshot._proxyless  # noqa: F401
    import hwnas.oneshot._spos  # noqa: F401
    import hwnas.oneshot._trainer  # noqa: F401
    import tests._kill  # noqa: F401

    return [_launch(item["jobs"], item["killed"], timeout=240) if "jobs" in item else _inspect(item["inspect"])
            for item in launches]


def _inspect(folders: list[str]) -> list[list]:
    """(file name, global step, completed epochs) of the newest checkpoint of every folder."""
    from hwnas.oneshot import latest_checkpoint

    found = []
    for folder in folders:
        newest = latest_checkpoint(folder)
        ckpt = torch.load(newest, map_location="cpu", weights_only=True)
        epochs = ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]
        found.append([newest.name, ckpt["global_step"], epochs])
    return found


def _run(launches: list[dict]) -> tuple[list[list[int]], str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(launches)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _finals(folder: Path) -> tuple[dict, dict]:
    return tuple(torch.load(folder / f"final_rank{r}.pt", weights_only=True) for r in (0, 1))


def _assert_same(a: dict, b: dict, buffers: bool) -> None:
    assert a["arch"] == b["arch"]
    for part in ("params", "buffers") if buffers else ("params",):
        assert a[part].keys() == b[part].keys()
        different = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not different, f"{part} differ: {different[:5]}"


def test_two_gloo_ranks_stay_identical_and_a_killed_rank_resumes(tmp_path):
    folders = {f"{m}_{mode}": tmp_path / f"{m}_{mode}" for m in ("proxyless", "spos") for mode in ("ref", "cut")}
    for f in folders.values():
        f.mkdir()
    job = {name: f"{name.split('_')[0]}:{'ref' if name.endswith('ref') else 'kill'}:{f}" for name, f in folders.items()}
    resume = [f"{m}:resume:{folders[f'{m}_cut']}" for m in ("proxyless", "spos")]
    cuts = [str(folders[f"{m}_cut"]) for m in ("proxyless", "spos")]
    results, stderr = _run([{"jobs": [job["proxyless_ref"], job["spos_cut"]], "killed": True},
                            {"jobs": [job["spos_ref"], job["proxyless_cut"]], "killed": True},
                            {"inspect": cuts}, {"jobs": resume, "killed": False}])
    statuses, newest, resumed_status = results[:2], results[2], results[3]
    killed = os.WIFSIGNALED
    for launch in statuses[:2]:   # rank 1 killed itself; rank 0 was killed or failed out of gloo
        assert killed(launch[1]) and os.WTERMSIG(launch[1]) == signal.SIGKILL, stderr[-3000:]
    assert resumed_status == [0, 0], stderr[-3000:]
    for method, (name, step, epochs) in zip(("proxyless", "spos"), newest):   # what the killed runs left
        assert (step, epochs) == (KILL_AT - 1, 1), (method, name)               # step 4, mid epoch 1

    for method in ("proxyless", "spos"):
        ref, resumed = _finals(folders[f"{method}_ref"]), _finals(folders[f"{method}_cut"])
        assert ref[0]["global_step"] == resumed[0]["global_step"] == STEPS
        _assert_same(ref[0], ref[1], buffers=False)      # the ranks agree: weights, alpha, architecture
        _assert_same(resumed[0], resumed[1], buffers=False)
        # the resumed run ends where the uninterrupted one did: rank 0 (whose state the checkpoint holds) in
        # everything, rank 1 in its parameters (its own BatchNorm statistics are not checkpointed)
        _assert_same(resumed[0], ref[0], buffers=True)
        _assert_same(resumed[1], ref[1], buffers=False)

    # training did something: the stem moved from its initialisation, and alpha from its N(0, 1e-3) start
    import pytorch_lightning as pl

    import search_spaces as ss

    for method in ("proxyless", "spos"):
        pl.seed_everything(0, verbose=False)
        start = ss.create_space(method, input_size=SIDE, num_classes=3, width_mult=0.25, dropout=0.0).state_dict()
        final = _finals(folders[f"{method}_ref"])[0]["params"]
        key = next(k for k in start if k.startswith("stem.") and k.endswith("weight"))
        assert not torch.equal(final["supernet.space." + key], start[key]), method
    alpha = _finals(folders["proxyless_ref"])[0]["params"]["supernet.alpha"]
    assert float(alpha.abs().max()) > 1e-2
