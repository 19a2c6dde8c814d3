"""Telemetry: every quantity against a direct computation, the schedule, resume equivalence,
final-relative distances, the timeline detector and Figure 3 from a summary file."""

import os
import signal

import h5py
import numpy as np
import pytest
import torch

from pipeline_scripts.earlyphase import data, models, plots, rng, telemetry, train
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)


def test_schedule_resolves_first_ten_iterations_then_thins_out():
    s = telemetry.schedule(4000, dense_until=10, points=60)
    assert s[:11] == list(range(11)) and s[-1] == 4000
    assert s == sorted(set(s)) and len(s) <= 60 and len(s) > 40
    gaps = np.diff(s)
    assert (gaps[10:] >= 1).all() and gaps[-1] > gaps[11]  # log-like: gaps grow
    assert telemetry.schedule(5, 10, 60) == [0, 1, 2, 3, 4, 5]


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(3, 2, bias=False)


def _direct(w, w0):
    return {
        "mean_abs": w.abs().mean(),
        "sign_changed": (torch.sign(w) != torch.sign(w0)).float().mean(),
        "dist_init": (w - w0).norm(),
        "cos_init": torch.dot(w, w0) / (w.norm() * w0.norm()),
    }


def test_recorder_quantities_match_direct_computation(tmp_path):
    model = Tiny()
    names = ["a.weight", "b.weight"]
    rec = telemetry.Recorder(model, names, [0, 1, 2], seed=3, snapshot_path=tmp_path / "t.h5")
    g = torch.Generator().manual_seed(0)
    seq = [torch.randn(18, generator=g) for _ in range(3)]
    grads = []
    for t, w in enumerate(seq):
        with torch.no_grad():
            model.a.weight.copy_(w[:12].view(3, 4))
            model.b.weight.copy_(w[12:].view(2, 3))
        rec.on_state(t)
        model.a.weight.grad = torch.randn(3, 4, generator=g)
        model.b.weight.grad = torch.randn(2, 3, generator=g)
        model.a.bias.grad = torch.full((3,), 100.0)  # not a telemetry weight: must not count
        grads.append(torch.cat([model.a.weight.grad.flatten(), model.b.weight.grad.flatten()]))
        rec.on_grad(t)
    rec.write()
    with h5py.File(tmp_path / "t.h5") as f:
        for t, w in enumerate(seq):
            for key, value in _direct(w, seq[0]).items():
                assert f[key][t] == pytest.approx(float(value), rel=1e-5), (key, t)
            assert f["grad_norm_step"][t] == pytest.approx(float(grads[t].norm()), rel=1e-5)
            assert np.isnan(f["grad_norm"][t])  # no fixed sample given: nothing measured
            np.testing.assert_allclose(
                f["ten_weights"][t], w[f["ten_index"][()]].numpy(), rtol=1e-6
            )
            np.testing.assert_allclose(f["snapshots"][t], w.numpy(), rtol=1e-3, atol=1e-3)
        assert len(set(f["ten_index"][()])) == 10
    # the ten weights depend only on the seed
    again = telemetry.Recorder(model, names, [0], seed=3, snapshot_path=tmp_path / "u.h5")
    other = telemetry.Recorder(model, names, [0], seed=4, snapshot_path=tmp_path / "v.h5")
    assert torch.equal(again.ten_index, rec.ten_index)
    assert not torch.equal(other.ten_index, rec.ten_index)


class TinyBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def test_sample_gradient_is_the_mean_batch_norm_and_leaves_training_untouched(tmp_path):
    """grad_norm = mean over the fixed sample's mini-batches of ||g_b|| over the telemetry weights;
    grad_norm_full = ||mean_b g_b||; BatchNorm's running statistics and every .grad unchanged."""
    torch.manual_seed(0)
    model = TinyBN().train()
    names = ["conv.weight", "fc.weight"]
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 5, (10,), generator=g)

    def loss_fn(xb, yb):
        return torch.nn.functional.cross_entropy(model(xb.float() / 255), yb)

    rec = telemetry.Recorder(
        model, names, [0], seed=0, snapshot_path=tmp_path / "t.h5", grad_sample=(x, y), grad_batch=4
    )
    rec.attach(loss_fn)
    model.conv.weight.grad = torch.ones_like(model.conv.weight)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rec.on_state(0)
    rec.write()
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert torch.equal(model.conv.weight.grad, torch.ones_like(model.conv.weight))
    params = [dict(model.named_parameters())[n] for n in names]
    flat = []
    for i in (0, 4, 8):  # batches of 4, 4 and the partial 2
        gs = torch.autograd.grad(loss_fn(x[i : i + 4], y[i : i + 4]), params)
        flat.append(torch.cat([t.reshape(-1) for t in gs]))
    with h5py.File(tmp_path / "t.h5") as f:
        assert f["grad_norm"][0] == pytest.approx(
            float(torch.stack([v.norm() for v in flat]).mean()), rel=1e-5
        )
        assert f["grad_norm_full"][0] == pytest.approx(
            float(torch.stack(flat).mean(0).norm()), rel=1e-5
        )
        assert f["grad_norm_full"][0] < f["grad_norm"][0]  # the noise part is gone


def test_grad_sample_is_fixed_by_the_seed(tiny_data):
    a = telemetry.grad_sample(tiny_data, 32, seed=1)
    b = telemetry.grad_sample(tiny_data, 32, seed=1)
    c = telemetry.grad_sample(tiny_data, 32, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape[0] == 32
    assert not torch.equal(a[0], c[0])
    assert telemetry.grad_sample(tiny_data, 0, seed=1) is None


def test_grad_sample_batches_mix_classes_of_a_class_sorted_file():
    """Image-folder data files are stored class by class; the sample keeps its random order, so
    each of its mini-batches is a mix of classes like a training batch (sorted indices would give
    single-class batches and gradients ~3x too large: measured on the timeline preset)."""
    from types import SimpleNamespace

    y = torch.arange(10).repeat_interleave(500)  # 5,000 images, class-sorted
    ds = SimpleNamespace(train_x=torch.zeros(5000, 3, 2, 2, dtype=torch.uint8), train_y=y)
    _, ys = telemetry.grad_sample(ds, 2048, seed=1)
    for i in range(0, 2048, 128):
        assert len(torch.unique(ys[i : i + 128])) >= 8


def test_final_relative_matches_direct_computation():
    g = np.random.default_rng(0)
    snaps = g.standard_normal((5, 100)).astype(np.float16)
    wf = g.standard_normal(100)
    out = telemetry.final_relative(snaps, wf, chunk=2)
    s64 = snaps.astype(np.float64)
    np.testing.assert_allclose(out["dist_final"], np.linalg.norm(s64 - wf, axis=1), rtol=1e-12)
    cos = s64 @ wf / (np.linalg.norm(s64, axis=1) * np.linalg.norm(wf))
    np.testing.assert_allclose(out["cos_final"], cos, rtol=1e-12)


def test_timeline_on_hand_made_curves():
    its = np.array(telemetry.schedule(4000, 10, 60))
    grad = np.where(its < 200, 2.0 - its / 200, 1.0 + np.minimum((its - 200) / 300, 1.0))
    grad[its == 0] = 0.1  # iteration 0 never counts as the minimum
    grad[-1] = np.nan  # as recorded: no gradient is computed after the last step
    acc = np.minimum(its / 4000, 1.0) * 0.9
    signs = its / 40000
    summary = {
        "iteration": its,
        "grad_norm/mean": grad,
        "accuracy/mean": acc,
        "sign_changed/mean": signs,
    }
    tl = telemetry.timeline(summary, final_accuracy=0.9)
    around_200 = its[np.argsort(np.abs(its - 200))[:2]]  # the schedule points either side
    assert tl["grad_min_iteration"] in around_200
    assert 400 <= tl["grad_settle_iteration"] <= 520  # reaches 1.9 (within 10% of 2) at ~470
    assert tl["acc50_iteration"] >= 2000 and tl["acc50_iteration"] == its[its >= 2000][0]
    assert tl["signs_changed_500_to_2000"] == pytest.approx(
        telemetry._at(its, signs, 2000) - telemetry._at(its, signs, 500)
    )
    assert "grad_min_iteration" in telemetry.timeline_table("resnet20", tl)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "s.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 128, "n_test": 64}, seed=0)
    return data.load(path)


def _run(ds, work, batch_fn=None, checkpoint_seconds=1e9, record=True, sample=48, log=None):
    model = models.build("resnet8_w4")
    models.initialise(model, rng.generator(1, "init"))
    names = models.prunable(model, "resnet8_w4")
    points = telemetry.schedule(12, 4, 8)
    work.mkdir(parents=True, exist_ok=True)
    rec = telemetry.Recorder(
        model,
        names,
        points,
        1,
        work / "telemetry.h5",
        grad_sample=telemetry.grad_sample(ds, sample, 1),
        grad_batch=32,
    )
    hp = TrainingHparams(batch_size=32, epochs=3, milestones=())
    opts = train.RunOptions(
        seed=1,
        log_every=4,
        eval_iterations=points,
        batch_fn=batch_fn,
        checkpoint_seconds=checkpoint_seconds,
    )
    train.train(
        model,
        ds,
        hp,
        opts,
        workdir=work,
        log=log or (lambda s: None),
        recorder=rec if record else None,
    )
    rec.model_state = model.state_dict()
    return rec


def test_sample_gradients_do_not_change_training(tiny_data, tmp_path):
    with_rec = _run(tiny_data, tmp_path / "a")
    without = _run(tiny_data, tmp_path / "b", record=False)
    for k, v in with_rec.model_state.items():
        assert torch.equal(v, without.model_state[k]), k
    assert np.isfinite(with_rec.values["grad_norm"].numpy()).all()  # every point, the last too


def test_resumed_telemetry_equals_uninterrupted(tiny_data, tmp_path):
    ref = _run(tiny_data, tmp_path / "ref")

    def sigterm_at_6(x, y, it, fired=[]):  # noqa: B006 - fire once
        if it == 6 and not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return x, y

    with pytest.raises(train.Interrupted):
        _run(tiny_data, tmp_path / "run", batch_fn=sigterm_at_6)
    resumed = _run(tiny_data, tmp_path / "run")
    for key in ref.values:
        torch.testing.assert_close(
            ref.values[key], resumed.values[key], rtol=0, atol=0, equal_nan=True
        )
    ref.write(), resumed.write()
    with (
        h5py.File(tmp_path / "ref/telemetry.h5") as a,
        h5py.File(tmp_path / "run/telemetry.h5") as b,
    ):
        assert np.array_equal(a["snapshots"][()], b["snapshots"][()])


def test_resume_state_measured_on_another_gradient_sample_is_not_continued(tiny_data, tmp_path):
    """A telemetry setting changed between the kill and the re-run (the gradient sample's size)
    makes the run start afresh, so no series mixes two measurements."""

    def sigterm_at_6(x, y, it, fired=[]):  # noqa: B006 - fire once
        if it == 6 and not fired:
            fired.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return x, y

    with pytest.raises(train.Interrupted):
        _run(tiny_data, tmp_path / "run", batch_fn=sigterm_at_6, sample=48)
    logged = []
    resumed = _run(tiny_data, tmp_path / "run", sample=32, log=logged.append)
    fresh = _run(tiny_data, tmp_path / "fresh", sample=32)
    assert any("NOT resuming" in line for line in logged)
    for key in fresh.values:
        torch.testing.assert_close(
            fresh.values[key], resumed.values[key], rtol=0, atol=0, equal_nan=True
        )


def test_figure3_from_summary_file(tmp_path):
    its = np.array(telemetry.schedule(100, 10, 30))
    n = len(its)
    g = np.random.default_rng(0)
    paths = []
    for seed in (1, 2):
        p = tmp_path / f"run{seed}.h5"
        with h5py.File(p, "w") as f:
            f.attrs["final_test_accuracy"], f.attrs["seed"] = 0.5, seed
            f.attrs["network"] = "resnet20"
            f["iteration"] = its
            for key in telemetry.SERIES:
                f[key] = g.random(n)
            f["ten_weights"] = g.standard_normal((n, 10))
        paths.append(str(p))
    telemetry.summarise(paths, tmp_path / "summary.h5", "resnet20")
    out = [str(tmp_path / "f3.pdf"), str(tmp_path / "f3.png")]
    plots.figure3(tmp_path / "summary.h5", out, "resnet20")
    plots.figure_a3(
        [tmp_path / "summary.h5"] * 2, ["resnet20", "vgg13"], [str(tmp_path / "a3.png")]
    )
    assert all(os.path.getsize(p) > 5000 for p in [*out, tmp_path / "a3.png"])
