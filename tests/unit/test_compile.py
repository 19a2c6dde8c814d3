"""torch.compile in the CPU suite (Inductor, real compilation): runtime.compile compiles the whole
training step (wholestep) into one graph per batch shape, which trains small networks to the
eager weights within float tolerance and leaves no operator outside it. Compiling costs ~30 s per
graph the first time on 2 cores (Inductor's cache makes later runs ~4 s)."""

import pytest
import torch
from torch._dynamo.utils import counters

from pipeline_scripts.earlyphase import data, device, models, prune, rng, train
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

NET = "resnet8_w4"
# 112 images at batch 32: 3 full batches and a partial one of 16 per epoch (two graph shapes)
HP = TrainingHparams(batch_size=32, epochs=2, milestones=(1,), lr=0.05)
# Relative L2 distance of all weights after 8 steps, compiled vs eager: Inductor fuses the
# BatchNorm and ReLU arithmetic into other kernels, so float32 rounding differs, and SGD amplifies
# it; measured 1e-6 (one run) to 2e-4 (the second run of a grouped pair) for resnet8_w4 and
# 1.1e-3 for vgg11_w4 (2.3e-5 after one step; compiling its forward and backward alone gives the
# same), while a wrong graph (a lost mask, a stale weight, another data order or learning rate)
# moves the weights by 1e-2 or more.
TOL = 5e-3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 112, "n_test": 32}, seed=0)
    return data.load(path)


def _model(seed, net=NET):
    m = models.build(net)
    models.initialise(m, rng.generator(seed, "init"))
    return m


def _train(dataset, workdir, seeds=(1,), masks=None, net=NET, **opts):
    device.configure(1)  # the suite's one thread per worker (tests/conftest.py)
    runs = [
        train.Run(
            _model(s, net),
            dataset,
            train.RunOptions(seed=s, log_every=4, **opts),
            workdir / str(s),
            None if masks is None else masks[i],
        )
        for i, s in enumerate(seeds)
    ]
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


def _masks(seeds, net=NET):
    out = []
    for s in seeds:
        m = models.build(net)
        models.initialise(m, rng.generator(s, "init"))
        state = m.state_dict()
        out.append(
            prune.global_magnitude(state, prune.full_mask(state, models.prunable(m, net)), 0.5)
        )
    return out


@pytest.mark.parametrize(("net", "seeds"), [(NET, (1, 2)), ("vgg11_w4", (1,))])
def test_the_compiled_whole_step_trains_like_eager(dataset, tmp_path, net, seeds):
    """runtime.compile: the whole step (wholestep) compiled by Inductor, masked, one run or two
    batched, across an epoch boundary with a partial batch (two graphs) and a learning-rate
    drop, ends at the eager weights within float tolerance."""
    masks = _masks(seeds, net)
    eager = _train(dataset, tmp_path / "eager", seeds=seeds, masks=masks, net=net)
    compiled = _train(
        dataset, tmp_path / "compiled", seeds=seeds, masks=masks, net=net, compile=True
    )
    # one graph per batch shape (32 and the partial 16), the whole step each, and one for the
    # evaluation of the 32 test images
    assert counters["stats"]["unique_graphs"] == 3
    assert not counters["graph_break"]
    for c, e in zip(compiled, eager, strict=True):
        assert _distance(c, e) < TOL


def test_the_compiled_step_runs_no_operator_outside_its_graph(dataset, tmp_path):
    """Per training step, the operators that run outside the compiled graph (the profiler's
    ATen events not inside a compiled region), counted over the steps of the second epoch: none
    (the target is at most 2)."""
    from torch.profiler import ProfilerActivity, profile

    seeds = (1, 2)
    runs = [
        train.Run(
            _model(s),
            dataset,
            train.RunOptions(seed=s, log_every=100, compile=True),
            tmp_path / str(s),
            m,
        )
        for s, m in zip(seeds, _masks(seeds), strict=True)
    ]
    device.configure(1)
    prof = profile(activities=[ProfilerActivity.CPU])
    ipe = HP.iterations_per_epoch(dataset.train_x.shape[0])
    start, stop = ipe + 1, 2 * ipe  # the steps of epoch 2 after its first (which draws the epoch)

    def on_step(it):  # (called after each step, with the iteration reached)
        if it == start:
            prof.start()
        elif it == stop:
            prof.stop()

    train.train_runs(runs, HP, log=lambda s: None, on_step=on_step)
    compiled = ("Torch-Compiled Region", "CompiledFxGraph", "CompiledFunction")

    def inside(e):
        while e is not None:
            if any(k in e.name for k in compiled):
                return True
            e = e.cpu_parent
        return False

    events = prof.events()
    assert any(any(k in e.name for k in compiled) for e in events)  # the graph ran, profiled
    outside = [e.name for e in events if e.name.startswith("aten::") and not inside(e)]
    assert len(outside) / (stop - start) <= 2, outside


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
