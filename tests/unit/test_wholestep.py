"""The whole training step as one graph (wholestep.py), proved on the CPU: the traced graph is the
eager step bit for bit (several networks, one run and runs batched, masks, an epoch boundary with
a partial last batch, a learning-rate drop); no step reads a value back to the host; the CUDA
capture warms up on copies and replays the step; wide batches of runs equal single runs. The
step compiled by Inductor is in tests/unit/test_compile.py."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline_scripts.earlyphase import data, models, multirun, prune, rng, train, wholestep
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

# 136 images at batch 64: 2 full batches and a partial one of 8 an epoch (two graph shapes); the
# learning rate drops after epoch 2 of 3.
HP = TrainingHparams(batch_size=64, epochs=3, milestones=(2,), lr=0.1)
STEPS = 9


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 136, "n_test": 24}, seed=0)
    return data.load(path)


def _run(net, seed, dataset, root, masked=True, **opts) -> train.Run:
    m = models.build(net)
    models.initialise(m, rng.generator(seed, "init"))
    mask = None
    if masked and seed > 1:  # run 1 dense, the others under masks of their own weights
        state = m.state_dict()
        full = prune.full_mask(state, models.prunable(m, net))
        mask = prune.global_magnitude(state, full, 0.2 * seed)
    o = train.RunOptions(seed=seed, log_every=3, cuda_graphs=False, **opts)
    return train.Run(m, dataset, o, root / str(seed), mask)


def _runs(net, n, dataset, root, masked=True, **opts) -> list[train.Run]:
    return [_run(net, seed, dataset, root, masked, **opts) for seed in range(1, n + 1)]


def _train(runs, whole: bool, steps=STEPS, on_step=lambda it: None):
    """The loop of train.train_runs (a training-loss record every 2 steps), with the step as the
    traced graph (replayed as traced) or in pieces; returns the loop."""
    loop = train._set_up(
        runs, HP, method="grouped", network="", log=lambda s: None, max_iterations=steps
    )
    loop.begin()
    if whole:
        loop.whole = wholestep.WholeStep(loop, compile=False, capture=False)
    on_step(loop.it)
    while loop.it < steps:
        loop.advance()
        on_step(loop.it)
        if loop.it % 2 == 0 or loop.it == steps:
            loop.log_window()
    loop.finish()
    return loop


@pytest.mark.parametrize(
    ("net", "n", "precision"),
    [
        ("resnet8_w4", 1, "fp32"),
        ("resnet8_w4", 3, "fp32"),
        ("vgg11_w4", 2, "fp32"),
        ("resnet18_w8", 2, "fp32"),
        ("resnet8_w4", 2, "bf16"),
    ],
)
def test_the_traced_step_is_the_eager_step_bit_for_bit(dataset, tmp_path, net, n, precision):
    eager = _train(_runs(net, n, dataset, tmp_path / "eager", precision=precision), whole=False)
    whole = _train(_runs(net, n, dataset, tmp_path / "whole", precision=precision), whole=True)
    for a, b in zip(eager.runs, whole.runs, strict=True):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)  # weights and BatchNorm statistics
    ma, mb = eager.optimizer.state_dict(), whole.optimizer.state_dict()
    assert all(
        torch.equal(x, y)
        for x, y in zip(ma["momentum_buffers"], mb["momentum_buffers"], strict=True)
    )
    assert [m.train_loss for m in eager.metrics] == [m.train_loss for m in whole.metrics]
    assert [m.images for m in eager.metrics] == [m.images for m in whole.metrics] == [3 * 136] * n


def test_the_learning_rate_is_the_schedules():
    marks, table = wholestep.lr_schedule(HP, 136, "cpu")
    for it in range(HP.total_iterations(136)):
        looked_up = table[int((it >= marks).sum())]
        assert looked_up == torch.tensor(HP.lr_at(it, 136), dtype=torch.float32)


class _ReadBacks(TorchDispatchMode):
    """Records when a tensor's value is handed to the host -- what waits for the device on a GPU:
    the operators behind ``.item()``, ``bool()`` and data-dependent shapes (dispatched), and the
    Python-level reads ``.tolist()``, ``.numpy()``, ``.cpu()`` (``_Methods``)."""

    OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero"}

    def __init__(self):
        super().__init__()
        self.at, self.iteration = [], "set-up"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.OPS:
            self.at.append(self.iteration)
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    READS = {"tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self, record: _ReadBacks):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            self.record.at.append(self.record.iteration)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("whole", [True, False])
def test_a_step_reads_nothing_back(dataset, tmp_path, whole):
    """Values cross to the host only at the training-loss records (after steps 2, 4, 6, 8, 9) --
    never in a step, whole or in pieces, nor where an epoch starts (before steps 4 and 7)."""
    runs = _runs("resnet8_w4", 2, dataset, tmp_path)
    reads = _ReadBacks()  # (the evaluation at the start reads its results: "set-up")

    def on_step(it):
        reads.iteration = it

    with reads, _Methods(reads):
        _train(runs, whole=whole, on_step=on_step)
    assert set(reads.at) == {"set-up", 2, 4, 6, 8, 9}


def test_the_capture_warms_up_on_copies_and_replays_the_step(dataset, tmp_path, monkeypatch):
    """``wholestep._captured`` with a stand-in for torch.cuda that keeps CUDA's semantics (a
    capture records the work and runs none of it; a replay runs it): warming up and capturing
    leave the runs' state as it was, and each replay takes one step -- the result is the eager
    training's."""

    class FakeCuda:
        recording = None

        class Stream:
            def wait_stream(self, other):
                pass

        @staticmethod
        def current_stream():
            return FakeCuda.Stream()

        @staticmethod
        def stream(s):
            import contextlib

            return contextlib.nullcontext()

        class CUDAGraph:
            def replay(self):
                run, args = self.work
                run(*args)

        @staticmethod
        def graph(g):
            import contextlib

            @contextlib.contextmanager
            def capturing():
                FakeCuda.recording = g
                yield
                FakeCuda.recording = None

            return capturing()

    def recording(run):
        def call(*args):
            if FakeCuda.recording is not None:
                FakeCuda.recording.work = (run, args)  # recorded, not run
            else:
                run(*args)

        return call

    captures = []
    real = wholestep._captured

    def captured(run, args, copies):
        before = [p.clone() for p in args[0]]
        replay = real(recording(run), args, copies, cuda=FakeCuda)
        assert all(torch.equal(a, b) for a, b in zip(before, args[0], strict=True))
        captures.append(args[0][0].shape)
        return replay

    monkeypatch.setattr(wholestep, "_captured", captured)
    eager = _train(_runs("resnet8_w4", 2, dataset, tmp_path / "eager"), whole=False)
    runs = _runs("resnet8_w4", 2, dataset, tmp_path / "captured")
    loop = train._set_up(
        runs, HP, method="grouped", network="", log=lambda s: None, max_iterations=STEPS
    )
    loop.begin()
    loop.whole = wholestep.WholeStep(loop, compile=False, capture=True)
    while loop.it < STEPS:
        loop.advance()
    loop.finish()
    assert len(captures) == 2  # one graph per batch shape: 64 and the partial 8
    for a, b in zip(eager.runs, runs, strict=True):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("n", [16, 32])
def test_wide_packing_equals_single_runs(dataset, tmp_path, n):
    """N = 16 and 32 runs of a small network batched in one process (grouped, the step as one
    graph) end where each run alone ends, to the float tolerance of a grouped convolution
    (tests/unit/test_multirun.py)."""
    hp = TrainingHparams(batch_size=64, epochs=1, milestones=(), lr=0.05)
    packed = _runs("resnet8_w4", n, dataset, tmp_path / "packed", masked=False)
    loop = train._set_up(
        packed, hp, method="grouped", network="", log=lambda s: None, max_iterations=3
    )
    loop.whole = wholestep.WholeStep(loop, compile=False, capture=False)
    assert isinstance(loop.group, multirun.Grouped) and loop.group.n == n
    while loop.it < 3:
        loop.advance()
    loop.finish()
    for r in packed:
        alone = _run("resnet8_w4", r.opts.seed, dataset, tmp_path / "alone", masked=False)
        train.train_runs([alone], hp, log=lambda s: None, max_iterations=3)
        sa, sb = alone.model.state_dict(), r.model.state_dict()
        for k in sa:
            where = f"seed {r.opts.seed} {k}"
            torch.testing.assert_close(
                sb[k], sa[k], rtol=1e-3, atol=1e-3, msg=lambda m, w=where: f"{w}: {m}"
            )


def test_steps_the_graph_cannot_take_say_why(dataset, tmp_path):
    runs = _runs("resnet8_w4", 1, dataset, tmp_path)
    assert wholestep.unsupported(runs, "grouped") is None
    transform = train.Run(
        runs[0].model, dataset, train.RunOptions(seed=1, batch_fn=lambda x, y, it: (x, y)), tmp_path
    )
    assert "batch transform" in wholestep.unsupported([transform], "grouped")
    two = _runs("resnet8_w4", 2, dataset, tmp_path / "v")
    assert wholestep.unsupported(two, "vmap") == "vmapped runs"


@pytest.mark.parametrize("n", [1, 3])
def test_evaluation_as_a_graph_is_the_eager_evaluation(dataset, tmp_path, n):
    """The evaluation graphs (a batch of 10 and the partial last one of 4 of the 24 test images)
    give every run's loss and accuracy exactly as the eager evaluation, and leave training mode
    on."""
    runs = _runs("resnet8_w4", n, dataset, tmp_path)
    loop = _train(runs, whole=True, steps=4)
    sets = [(dataset.test_x, dataset.test_y)] * n
    whole = loop.whole.evaluate(sets, 10)
    eager = train._evaluate_batch(loop.group, sets, loop.normalise, 10, loop.precision)
    assert whole == eager and len(whole) == n
    assert loop.whole.evaluate(sets, 10) == eager  # again, from zeroed sums
    assert loop.group.module.training
