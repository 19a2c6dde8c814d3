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
            assert f["grad_norm"][t] == pytest.approx(float(grads[t].norm()), rel=1e-5)
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
    summary = {"iteration": its, "grad_norm/mean": grad, "accuracy/mean": acc,
               "sign_changed/mean": signs}  # fmt: skip
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


def _run(ds, work, batch_fn=None, checkpoint_seconds=1e9):
    model = models.build("resnet8_w4")
    models.initialise(model, rng.generator(1, "init"))
    names = models.prunable(model, "resnet8_w4")
    points = telemetry.schedule(12, 4, 8)
    work.mkdir(parents=True, exist_ok=True)
    rec = telemetry.Recorder(model, names, points, 1, work / "telemetry.h5")
    hp = TrainingHparams(batch_size=32, epochs=3, milestones=())
    opts = train.RunOptions(seed=1, log_every=4, eval_iterations=points, batch_fn=batch_fn,
                            checkpoint_seconds=checkpoint_seconds)  # fmt: skip
    train.train(model, ds, hp, opts, workdir=work, log=lambda s: None, recorder=rec)
    return rec


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
