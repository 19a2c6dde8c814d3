"""torch.compile in the CPU suite (Inductor, real compilation): runtime.compile, and the CUDA-graph
path up to its CUDA-only call, train a small network to the eager weights within float
tolerance, and only the training step is compiled. Compiling costs ~30 s per graph the first
time on 2 cores (Inductor's cache makes later runs ~4 s)."""

import pytest
import torch
from torch._dynamo.utils import counters

from pipeline_scripts.earlyphase import data, device, models, rng, train
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

NET = "resnet8_w4"
# 112 images at batch 32: 3 full batches and a partial one of 16 per epoch (two graph shapes)
HP = TrainingHparams(batch_size=32, epochs=2, milestones=(1,), lr=0.05)
# Relative L2 distance of all weights after 8 steps, compiled vs eager: Inductor fuses the
# BatchNorm and ReLU arithmetic into other kernels, so float32 rounding differs; measured 9e-6
# (one run) to 7e-5 (the second run of a grouped pair) on an AVX2 CPU, and a wrong graph (a lost
# mask, a stale weight, another data order) moves the weights by 1e-2 or more.
TOL = 5e-4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 112, "n_test": 32}, seed=0)
    return data.load(path)


def _train(dataset, workdir, seeds=(1,), **opts):
    device.configure(1)  # the suite's one thread per worker (tests/conftest.py)
    runs = []
    for s in seeds:
        m = models.build(NET)
        models.initialise(m, rng.generator(s, "init"))
        runs.append(
            train.Run(m, dataset, train.RunOptions(seed=s, log_every=4, **opts), workdir / str(s))
        )
    train.train_runs(runs, HP, log=lambda s: None)
    return [r.model.state_dict() for r in runs]


def _distance(a, b):
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    return (num / sum(float(b[k].double().pow(2).sum()) for k in keys)) ** 0.5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_runtime_compile_trains_like_eager(dataset, tmp_path):
    (eager,) = _train(dataset, tmp_path / "eager")
    (compiled,) = _train(dataset, tmp_path / "compiled", compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # it really compiled
    assert _distance(compiled, eager) < TOL


def test_cuda_graph_path_up_to_the_cuda_only_call(dataset, tmp_path, monkeypatch):
    """With the mode CUDA graphs use ("reduce-overhead") forced on the CPU, two runs batched:
    everything but the graph capture itself runs (Inductor skips CUDA graphs for CPU tensors and
    says so in its counters), evaluation stays eager, the result equals eager training."""
    eager = _train(dataset, tmp_path / "eager", seeds=(1, 2))
    monkeypatch.setattr(train, "compile_mode", lambda opts, dev: "reduce-overhead")
    graphs = _train(dataset, tmp_path / "graphs", seeds=(1, 2), cuda_graphs=True)
    assert counters["stats"]["unique_graphs"] >= 1
    assert counters["inductor"]["cudagraph_skips"] >= 1  # the CUDA-only step, skipped on a CPU
    for g, e in zip(graphs, eager, strict=True):
        assert _distance(g, e) < TOL


def test_compiled_graphs_are_cached_per_vector_isa(monkeypatch):
    """Inductor's FX graph cache keys on its config, not on the vector ISA it picks from the CPU
    and ATEN_CPU_CAPABILITY: an AVX2 process sharing a cache directory with an AVX-512 one reused
    its graphs and computed garbage (loss 4e10 for 2.48). The compile path pins ``cpp.simdlen``
    to the width Inductor picks, which puts the width into the key and picks the same ISA."""
    import os
    import subprocess
    import sys

    from torch._inductor import config
    from torch._inductor.cpu_vec_isa import pick_vec_isa, valid_vec_isa_list

    if not any(i.bit_width() == 256 for i in valid_vec_isa_list()):
        pytest.skip("needs an x86 CPU with AVX2")
    monkeypatch.setattr(config.cpp, "simdlen", None)
    before = pick_vec_isa()
    device.pin_cpu_vector_isa()
    assert config.cpp.simdlen == before.bit_width() and pick_vec_isa() == before
    code = (
        "from torch._inductor import config; from pipeline_scripts.earlyphase import device; "
        "device.pin_cpu_vector_isa(); print(config.cpp.simdlen)"
    )
    capped = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **device.ISA_ENV["avx2"]},
        capture_output=True,
        text=True,
        check=True,
    )
    assert capped.stdout.split()[-1] == "256"  # AVX2's width: another key than AVX-512's 512
