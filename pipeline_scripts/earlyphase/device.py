"""Device selection, thread limits and determinism switches: the only place that touches them."""

from __future__ import annotations

import os

import torch


def select(name: str = "auto") -> torch.device:
    """'auto' -> the CUDA device this job was given if any, else the CPU. 'cpu'/'cuda' force one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device is {name!r} but no CUDA device is visible to this job")
    return torch.device(name)


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
