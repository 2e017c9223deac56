"""What a predictor build measures and how (:class:`BuildConfig`), and the names and dates it writes.

Its own module so that every stage (sampling, measuring, fitting, calibrating) can name its configuration without
importing the orchestrator (:mod:`hwnas.builder._build`), which imports them all.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any

from hwnas.builder._protocol import DEFAULT_PROTOCOL, MeasureProtocol


@dataclasses.dataclass
class BuildConfig:
    """What a build measures and how.

    Parameters
    ----------
    backend : str
        Backend name (``torchscript-cpu``, ``onnxruntime-cpu``...).
    out : Path
        Build directory (created).
    name : str
        Predictor name; defaults to ``"<backend>-<cpu short name>"``.
    time_budget_min : float, optional
        Stop measuring kernels after this many minutes (the build can be resumed later).
    shard : str, optional
        ``"I/N"``: measure only this machine's share of the kernels.
    protocol : MeasureProtocol
        How each kernel is timed.
    resolutions : tuple of int
        Input resolutions of the torchvision prior.
    space_archs : int
        Random subnets per search space (at 224 and 32 px) in the prior.
    jitter : int
        Perturbed neighbours measured per prior kernel of conv-like types.
    fusion_rules : list of list of str, optional
        Use these rules instead of measuring them.
    seed : int
        Seed of the sampler.
    in_context : bool
        Time 4-d kernels after a 1x1 convolution prefix and subtract the prefix alone (see
        :func:`hwnas.builder._build.measure_in_context`), instead of timing them in isolation.
    adaptive_rounds : int
        Rounds of adaptive sampling after the first fit: neighbours of the kernels predicted worst are measured
        and the regressors refitted (:func:`hwnas.builder._sampler.adaptive_specs`).
    register : bool
        Register the finished predictor in the user's predictor folder (:func:`hwnas.predictor.register_predictor`),
        so that ``"auto"`` finds it on this machine.
    calibrate : bool
        After fitting, time the zoo networks end to end (pass 0, ``raw/zoo.jsonl``; about 6 min on
        ``onnxruntime-cpu``) and fit the kernel-type calibration (:mod:`hwnas.builder._calibrate`).
    batch_size : int
        Batch of every kernel the build times (the prior's kernels, captured at batch 1, are measured at this batch;
        the predictor's ``batch_size``). The zoo networks are timed at batch 1, so a build at another batch has
        no calibration (``calibrate`` must be False).
    compile_workers : int
        Worker processes that compile kernels while this process times them (TorchScript backends only;
        :mod:`hwnas.builder._compile_pool`): ``0`` (default) compiles each kernel here, right before timing it;
        ``N > 0`` uses N workers; ``-1`` the usable CPU cores minus one. Workers trace and freeze on the CPU,
        this process finishes the compile on the device (``optimize_for_inference``) and times, one kernel at a
        time; on the CPU no worker runs while a kernel is timed, so there it does not pay (x0.82 measured on
        2 cores): it is meant for ``torchscript-cuda``. Records then say how many of their two timed modules a
        worker compiled (``compiled_in_worker``).
    """

    backend: str = "torchscript-cpu"
    out: Path = Path("build/predictor")
    name: str | None = None
    time_budget_min: float | None = None
    shard: str | None = None
    protocol: MeasureProtocol = DEFAULT_PROTOCOL
    resolutions: tuple[int, ...] = (160, 224)
    space_archs: int = 6
    jitter: int = 1
    fusion_rules: list[list[str]] | None = None
    seed: int = 0
    in_context: bool = True
    adaptive_rounds: int = 1
    calibrate: bool = True
    register: bool = True
    compile_workers: int = 0
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.batch_size != 1 and self.calibrate:
            raise ValueError(f"a build at batch {self.batch_size} cannot be calibrated: the zoo networks are timed "
                             "at batch 1 (set calibrate=False, or --no-calibrate)")


def default_name(backend: str, fp: dict[str, Any] | None = None) -> str:
    """``"<backend>-<machine>"`` with what tells machines apart (CPU model, instruction-set level, CPU family and
    model), e.g. ``"torchscript-cpu-amd-epyc-avx2-f23m1"``: two CPUs that share a model name get two names."""
    from hwnas.device import fingerprint, short_name

    return f"{backend}-{short_name(fp or fingerprint())}"


def utc_now() -> str:
    """Now, in UTC, as ISO 8601 to the second (``"2026-12-02T05:10:00+00:00"``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
