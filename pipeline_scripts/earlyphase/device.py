"""Device selection, thread limits and determinism switches: the only place that touches them."""

from __future__ import annotations

import contextlib
import os

import torch


def select(name: str = "auto") -> torch.device:
    """'auto' -> the CUDA device this job was given if any, else the CPU. 'cpu'/'cuda' force one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device is {name!r} but no CUDA device is visible to this job")
    return torch.device(name)


PRECISIONS = ("fp32", "tf32", "bf16")


def effective_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` means on ``device``: TF32 exists only on CUDA (on a CPU it is fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"runtime.precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        return "fp32"
    return precision


def set_precision(precision: str) -> None:
    """Float32 matmuls and convolutions in strict fp32 (``fp32``) or TF32 (``tf32``, and ``bf16``
    for the ops autocast leaves in float32). PyTorch's own default is TF32 convolutions only."""
    tf32 = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(device: torch.device, precision: str):
    """The forward passes' autocast: bf16 under ``bf16`` (CUDA or CPU), none otherwise."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure(threads: int, deterministic: bool = True) -> None:
    """Use exactly the ``threads`` CPU threads Snakemake gave this job, never more.

    A 2-thread job slows 4-9x when another process takes one of its cores (measured, issue 7), so
    intra-op threads are pinned to the job's allocation and inter-op parallelism is off.
    """
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (tests)
        pass
    if deterministic:
        # Bit-identical reruns on GPU need deterministic kernels (a few % slower); CPU kernels are.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


# ---- from config `runtime`: a key the config leaves out takes the default of the function it
# feeds (select, configure, train.RunOptions), which equals the schema's default (tested), so each
# default is written once.
def select_from(runtime: dict) -> torch.device:
    """``select`` as config ``runtime.device`` says."""
    return select(runtime["device"]) if "device" in runtime else select()


def configure_from(runtime: dict, threads: int) -> None:
    """``configure`` with the job's threads, deterministic as config ``runtime`` says."""
    if "deterministic" in runtime:
        configure(threads, runtime["deterministic"])
    else:
        configure(threads)
