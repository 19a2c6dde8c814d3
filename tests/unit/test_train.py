"""The training loop: determinism, resume equivalence, divergence stop, masks that stay masked,
rewinding to exactly the k-checkpoint, and outputs written all-or-nothing."""

import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from jobs import make_job

from pipeline_scripts.earlyphase import checkpoint, data, models, prune, rng, runs, train
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

NET = "resnet8_w4"
HP = TrainingHparams(batch_size=32, epochs=3, milestones=(2,), lr=0.05)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 160, "n_test": 64}, seed=0)
    return path


@pytest.fixture(scope="module")
def dataset(data_file):
    return data.load(data_file)


def _model(seed=1, net=NET):
    m = models.build(net)
    models.initialise(m, rng.generator(seed, "init"))
    return m


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _train(dataset, tmp_path, seed=1, hp=HP, mask=None, net=NET, **opts):
    m = _model(seed, net)
    opts = train.RunOptions(seed=seed, **{"log_every": 2, **opts})
    res = train.train(
        m, dataset, hp, opts, workdir=tmp_path / f"w{seed}", mask=mask, log=lambda s: None
    )
    return m, res


def test_same_seed_same_weights_different_seed_differs(dataset, tmp_path):
    a, ra = _train(dataset, tmp_path / "a", seed=1)
    b, _ = _train(dataset, tmp_path / "b", seed=1)
    c, _ = _train(dataset, tmp_path / "c", seed=2)
    assert _equal(_state(a), _state(b))
    assert not _equal(_state(a), _state(c))
    assert ra.total_iterations == 15 and ra.iterations_per_epoch == 5  # ceil(160/32) * 3


def test_training_learns_the_synthetic_task(dataset, tmp_path):
    hp = replace(HP, epochs=12, milestones=(10,), lr=0.1)
    _, res = _train(dataset, tmp_path, hp=hp, net="resnet8_w8", eval_iterations=[0])
    acc, loss = res.metrics.eval_accuracy, res.metrics.train_loss
    assert res.metrics.eval_iteration[0] == 0 and res.metrics.eval_iteration[-1] == 60
    assert loss[-1] < loss[0] - 0.25
    assert acc[-1] >= 0.2  # 10 classes: chance is 0.1


def _interrupt_at(step, how):
    """A batch_fn hook that interrupts the loop when it reaches ``step`` (once)."""
    fired = {"done": False}

    def hook(x, y, it):
        if it == step and not fired["done"]:
            fired["done"] = True
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt("simulated kill")
        return x, y

    return hook


@pytest.mark.parametrize("how", ["sigterm", "crash"])
def test_interrupted_run_resumes_to_identical_weights(dataset, tmp_path, how):
    ref, ref_res = _train(dataset, tmp_path / "ref", snapshot_iterations=[0, 3, 9])
    work = tmp_path / "run"
    m = _model()
    # crash: periodic saves every step (checkpoint_seconds=0) stand in for the last save before a kill
    opts = train.RunOptions(
        seed=1,
        log_every=2,
        snapshot_iterations=[0, 3, 9],
        checkpoint_seconds=1e9 if how == "sigterm" else 0.0,
        batch_fn=_interrupt_at(7, how),
    )
    expected = train.Interrupted if how == "sigterm" else KeyboardInterrupt
    with pytest.raises(expected):
        train.train(m, dataset, HP, opts, workdir=work, log=lambda s: None)
    assert (work / "resume.pt").exists()
    m2 = _model(seed=99)  # different start: everything must come from the resume state
    res = train.train(
        m2, dataset, HP, replace(opts, batch_fn=None), workdir=work, log=lambda s: None
    )
    assert _equal(_state(m2), _state(ref))
    assert res.metrics.train_loss == pytest.approx(ref_res.metrics.train_loss, abs=1e-6)
    assert res.metrics.eval_accuracy == ref_res.metrics.eval_accuracy
    for k in (0, 3, 9):
        a = checkpoint.load(res.snapshots[k])["state_dict"]
        b = checkpoint.load(ref_res.snapshots[k])["state_dict"]
        assert _equal(a, b)


def test_divergence_stops_with_clear_error(dataset, tmp_path):
    with pytest.raises(train.NonFiniteLoss, match="iterations"):
        _train(dataset, tmp_path, hp=replace(HP, lr=1e8, momentum=0.0))


def test_pruned_weights_stay_exactly_zero(dataset, tmp_path):
    m = _model()
    names = models.prunable(m, NET)
    mask = prune.global_magnitude(m.state_dict(), prune.full_mask(m.state_dict(), names), 0.8)
    trained, _ = _train(dataset, tmp_path, mask=mask)  # momentum 0.9 and weight decay 1e-4
    params = dict(trained.named_parameters())
    for name, keep in mask.items():
        assert (params[name].detach()[~keep] == 0).all(), name
        assert (params[name].detach()[keep] != 0).float().mean() > 0.99, name


def _job(data_file, tmp_path, hparams=HP, **kw):
    return make_job(data_file, tmp_path, network=NET, hparams=hparams, log_every=2, **kw)


def test_imp_level_rewinds_to_exactly_the_k_checkpoint(data_file, tmp_path):
    dense = tmp_path / "dense"
    runs.run(_job(data_file, dense, snapshots={4: str(dense / "iter4.pt")}), log=lambda s: None)
    lvl = tmp_path / "level1"
    job = _job(
        data_file,
        lvl,
        init=str(dense / "iter4.pt"),
        prune_from=(str(dense / "final.pt"), None),
        out_mask=str(lvl / "mask.pt"),
        level=1,
        snapshots={0: str(lvl / "start.pt")},
    )
    attrs = runs.run(job, log=lambda s: None)
    start = checkpoint.load(lvl / "start.pt")["state_dict"]
    k4 = checkpoint.load(dense / "iter4.pt")["state_dict"]
    mask = prune.load(lvl / "mask.pt")
    for name, value in k4.items():
        expected = value * mask[name] if name in mask else value
        assert torch.equal(start[name], expected), name
    assert attrs["weights_remaining_fraction"] == pytest.approx(0.8, abs=1e-3)
    assert not Path(job.workdir).exists()  # resume state removed on success


def test_diverging_job_leaves_no_outputs(data_file, tmp_path):
    hp = replace(HP, lr=1e8, momentum=0.0).to_dict()
    job = _job(data_file, tmp_path, hparams=hp, snapshots={0: str(tmp_path / "iter0.pt")})
    with pytest.raises(train.NonFiniteLoss):
        runs.run(job, log=lambda s: None)
    assert not any(tmp_path.glob("*.pt")) and not (tmp_path / "metrics.h5").exists()


@pytest.mark.parametrize("change", ["hparams", "identity"])
def test_resume_state_from_other_settings_is_set_aside(dataset, tmp_path, change):
    """Not continued, not deleted: moved aside with the reason in the log, and the run starts
    afresh (same weights as an uninterrupted run of the new settings)."""
    work = tmp_path / "run"
    opts = train.RunOptions(seed=1, log_every=2, batch_fn=_interrupt_at(5, "sigterm"))
    with pytest.raises(train.Interrupted):
        train.train(_model(), dataset, HP, opts, workdir=work, log=lambda s: None, identity="a")
    hp, identity = (replace(HP, lr=0.01), "a") if change == "hparams" else (HP, "b")
    logged, m = [], _model()
    opts = replace(opts, batch_fn=None)
    train.train(m, dataset, hp, opts, workdir=work, log=logged.append, identity=identity)
    assert any(f"NOT resuming from {work / 'resume.pt'}" in line for line in logged)
    assert len(list(work.glob("resume.stale-*.pt"))) == 1
    ref = _model()
    train.train(ref, dataset, hp, opts, workdir=tmp_path / "ref", log=lambda s: None)
    assert _equal(_state(m), _state(ref))


def test_sgd_is_torchs_fused_sgd_bit_for_bit_and_imports_no_dynamo():
    """sgd.SGD calls torch.optim.SGD(fused=True)'s kernel directly: the same updates bit for bit
    (masked, with weight decay and momentum, channels_last, a parameter without a gradient, a
    change of learning rate, its state saved and loaded mid-way), and constructing it does not
    import torch._dynamo as every torch.optim optimizer does (1.2-1.4 s of a job's start-up). The
    foreach SGD (PyTorch's default) agrees up to float rounding (its momentum update's operation
    order differs)."""
    import subprocess
    import sys

    from pipeline_scripts.earlyphase import layout, models, rng, train
    from pipeline_scripts.earlyphase.hparams import TrainingHparams

    hp = TrainingHparams()
    nets = []
    for _ in range(3):
        m = layout.apply(models.build("resnet8_w4"), "cpu")  # channels_last, the layout rule
        models.initialise(m, rng.generator(3, "init"))
        nets.append(m)
    frozen = "fc.bias"  # no gradient in any step: no momentum buffer, not updated
    for m in nets:
        dict(m.named_parameters())[frozen].requires_grad_(False)
    frozen_before = nets[0].fc.bias.detach().clone()
    kw = dict(lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    opts = [
        train.sgd(nets[0].parameters(), hp),
        torch.optim.SGD(nets[1].parameters(), **kw, fused=True),
        torch.optim.SGD(nets[2].parameters(), **kw, foreach=True),
    ]
    gm = torch.Generator().manual_seed(1)  # (the global generator's state depends on what ran)
    masks = [
        (p, (torch.rand(p.shape, generator=gm) > 0.5).float())
        for p in nets[0].parameters()
        if p.ndim > 1
    ]
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        lr = 0.1 if step < 3 else 0.01
        for m, o in zip(nets, opts, strict=True):
            if isinstance(o, torch.optim.SGD):
                o.param_groups[0]["lr"] = lr
            else:
                o.lr = lr
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            named = dict(zip(nets[0].parameters(), m.parameters(), strict=True))
            train.masked_step(o, [named[p] for p, _ in masks], [k for _, k in masks])
        if step == 2:  # a resume: a fresh optimizer loading the saved state
            state = opts[0].state_dict()
            opts[0] = train.sgd(nets[0].parameters(), hp)
            opts[0].load_state_dict(state)
    for (name, a), b, c in zip(
        nets[0].state_dict().items(),
        nets[1].state_dict().values(),
        nets[2].state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(nets[0].fc.bias, frozen_before) and opts[0].momentum_buffers[-1] is None
    code = (
        "import sys, torch; from pipeline_scripts.earlyphase import train; "
        "from pipeline_scripts.earlyphase.hparams import TrainingHparams; "
        "train.sgd([torch.nn.Parameter(torch.zeros(2))], TrainingHparams()); "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_resume_under_other_kernels_continues_and_records_them(dataset, tmp_path, monkeypatch):
    """A state saved on one device model / thread count / compile setting is continued on
    another (a requeued SLURM job on another GPU model), not thrown away; the log says so and the
    result records each stretch's kernels. Under the same kernels: one stretch, bit-identical."""
    from pipeline_scripts.earlyphase import device

    work = tmp_path / "run"
    opts = train.RunOptions(seed=1, log_every=2, batch_fn=_interrupt_at(5, "sigterm"))
    with pytest.raises(train.Interrupted):
        train.train(_model(), dataset, HP, opts, workdir=work, log=lambda s: None)
    real = device.kernels
    monkeypatch.setattr(
        train.devices, "kernels", lambda *a, **k: {**real(*a, **k), "device": "another GPU"}
    )
    lines = []
    res = train.train(
        _model(), dataset, HP, replace(opts, batch_fn=None), workdir=work, log=lines.append
    )
    (resumed,) = [line for line in lines if line.startswith("resumed from")]
    at = int(resumed.split("at iteration ")[1].split("/")[0])
    assert any("resuming under other kernels (device" in line for line in lines)
    assert [k["device"] for k in res.kernels][1] == "another GPU"
    assert res.kernels[0]["from_iteration"] == 0 and res.kernels[1]["from_iteration"] == at > 0
    monkeypatch.undo()
    same = train.train(_model(), dataset, HP, replace(opts, batch_fn=None), workdir=tmp_path / "x")
    assert (
        len(same.kernels) == 1 and same.kernels[0]["device"] == real(torch.device("cpu"))["device"]
    )


def test_no_function_of_the_training_loop_is_over_80_lines():
    """train_runs stays a short loop whose pieces (set-up, resume, evaluation, logging,
    snapshots, resume-state save) are named functions beside it, each short enough to read."""
    import ast

    tree = ast.parse(Path(train.__file__).read_text())
    lengths = {
        f.name: f.end_lineno - f.lineno + 1
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    assert lengths["train_runs"] <= 60
    assert not {name: n for name, n in lengths.items() if n > 80}
