"""Device selection, thread limits and determinism switches: the only place that touches them."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket

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
    """Threads and determinism of this process, as every job and every measuring tool sets them.

    ``threads``: exactly the CPU threads Snakemake gave this job, never more (a 2-thread job
    slows 4-9x when another process takes one of its cores), and no inter-op parallelism.

    ``deterministic``: True selects deterministic kernels (CUDA: cuDNN without autotuning,
    deterministic cuBLAS workspaces; CPU kernels are deterministic anyway); False switches them
    off again and lets cuDNN autotune (``runtime.deterministic: false``).

    Deterministic mode would also fill every new tensor's memory with NaN
    (``torch.utils.deterministic.fill_uninitialized_memory``, on by default with it): a debugging
    aid for kernels that read memory they never wrote. None of ours does -- the same seed gives
    bit-identical weights with the fill on and off (tests/unit/test_device.py) -- and it costs a
    kernel per allocation: ~560 fills per ResNet-20 step, 1.11x of the CPU step time
    (docs/performance.md), and extra launches on a launch-bound GPU. So it is off.
    """
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (tests)
        pass
    if deterministic:
        # before the first cuBLAS handle (nothing here has touched CUDA yet)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # torch.use_deterministic_algorithms also sets Inductor's `deterministic` option, and
    # importing Inductor for it costs ~2 s of every job's start (measured); the switch itself is
    # this call, and compiled runs set Inductor's option when they compile (train_runs).
    torch._C._set_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def kernels(dev: torch.device, *, compile: bool = False, cuda_graphs: bool = False) -> dict:
    """What selects this process's kernels: the device (GPU model, or the CPU's instruction set
    as ATen and oneDNN use it), threads, determinism, compilation, CUDA graphs and the torch
    version. Two runs with equal settings and equal ``kernels`` compute bit-identically; a run
    resumed under other ``kernels`` continues with other rounding (recorded by the loop)."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        where = torch.cuda.get_device_name(dev)
    else:
        where = f"cpu {torch.backends.cpu.get_cpu_capability()}" + "".join(
            f" {k}={os.environ[k]}" for k in ISA_CAPS if os.environ.get(k)
        )
    return {
        "device": where,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "compile": bool(compile),
        "cuda_graphs": bool(cuda_graphs and dev.type == "cuda"),
        "torch": str(torch.__version__),  # a str subclass the weights-only unpickler refuses
    }


def check_compiler(dev: torch.device) -> None:
    """Before compiling (``runtime.compile``): fail at a job's start, naming the setting and the
    fix, when this machine lacks the compiler Inductor needs -- a C++ compiler for its CPU kernels,
    a C compiler for Triton's launcher on a GPU -- rather than deep inside the first training
    step. (CUDA graphs alone need none: ``wholestep`` captures the traced step.)"""
    if torch.device(dev).type == "cuda":
        need, names = (
            "a C compiler (Triton builds its launcher with it)",
            ("CC", "cc", "gcc", "clang"),
        )
    else:
        need, names = (
            "a C++ compiler (Inductor builds its CPU kernels with it)",
            ("CXX", "c++", "g++", "clang++"),
        )
    env = os.environ.get(names[0])
    found = shutil.which(env) if env else next(filter(None, map(shutil.which, names[1:])), None)
    if not found:
        raise RuntimeError(
            f"runtime.compile is on, which needs {need}, and none was found "
            f"({'$' + names[0] + '=' + env if env else ', '.join(names[1:])} not on PATH on "
            f"{socket.gethostname()}). Load or install one on the compute nodes (e.g. `module "
            f"load gcc`, or `apt-get install gcc g++`) or set {names[0]}; or switch "
            "runtime.compile off."
        )


def pin_cpu_vector_isa() -> None:
    """Before ``torch.compile``: set Inductor's ``cpp.simdlen`` to the vector width it would pick
    anyway, so the width is part of the FX graph cache's key. Inductor picks its CPU vector ISA
    from the CPU and ``ATEN_CPU_CAPABILITY``, but the key holds only its config: a graph compiled
    for AVX-512 is otherwise reused by an AVX2 process sharing the cache directory (a capped run,
    a node of another CPU model on a shared ``TORCHINDUCTOR_CACHE_DIR``), which then computes
    garbage or corrupts the heap (PyTorch 2.14.1; tests/unit/test_compile.py). Picks the same ISA
    as before; idempotent; a user's own ``simdlen`` is kept."""
    from torch._inductor import config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    if config.cpp.simdlen is None:
        isa = pick_vec_isa()
        if isa:  # a CPU without a vector ISA Inductor supports: nothing to pin
            config.cpp.simdlen = isa.bit_width()


# x86 instruction sets the CPU kernels can be capped to, for a process started with these
# environment variables: oneDNN (convolutions), ATen (elementwise kernels), MKL (matmuls).
# "native" = whatever the CPU has. Used by tools/cpu_check.py and tools/bench.py --isa.
ISA_ENV = {
    "native": {},
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "avx512": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
}
ISA_CAPS = tuple(ISA_ENV["avx2"])


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
