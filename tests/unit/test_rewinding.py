"""Rewinding as the authors' framework does it (OpenLTH: lottery/runner.py trains every level with
``start_step = train_start_step``; training/train.py steps the schedule to it, enters the data order
of its epoch at its iteration and builds a fresh optimizer): a run from the dense run's step-k
weights trains steps k..T with the learning rate, data order and augmentation of those steps."""

import h5py
import numpy as np
import pytest
import torch
from jobs import make_job

from pipeline_scripts.earlyphase import checkpoint, data, models, prune, rng, runs, train
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

NET = "resnet8_w4"
# 160 images at batch 32: 5 steps per epoch, T = 15; the lr drops at epoch 2 = iteration 10, so a
# run rewound to k = 7 crosses the drop and an epoch boundary (new data order) after its start.
HP = TrainingHparams(batch_size=32, epochs=3, milestones=(2,), lr=0.05)
K = 7


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 160, "n_test": 64}, seed=0)
    return path


def _job(data_file, out, hp=HP, **kw):
    return make_job(data_file, out, network=NET, hparams=hp, log_every=2, **kw)


def _final(out):
    return checkpoint.load(out / "final.pt")["state_dict"]


@pytest.fixture(scope="module")
def dense_no_momentum(data_file, tmp_path_factory):
    """A dense run without momentum (SGD then has no state, so a fresh optimizer changes nothing)
    keeping its step-k weights."""
    out = tmp_path_factory.mktemp("dense")
    hp = TrainingHparams(**{**HP.to_dict(), "momentum": 0.0, "milestones": (2,)})
    runs.run(_job(data_file, out, hp, snapshots={K: str(out / f"iter{K}.pt")}), log=lambda s: None)
    return out, hp


def test_rewound_run_retraces_the_dense_run_from_k(data_file, dense_no_momentum, tmp_path):
    """From the step-k weights, steps k..T with the dense run's learning rate, batches and
    augmentation land exactly on the dense run's final weights (no momentum, so no optimizer
    state is lost by rewinding); a fresh 0..T schedule from the same weights does not."""
    dense, hp = dense_no_momentum
    attrs = runs.run(
        _job(data_file, tmp_path / "k", hp, init=str(dense / f"iter{K}.pt"), start_iteration=K),
        log=lambda s: None,
    )
    ref = _final(dense)
    got = _final(tmp_path / "k")
    assert all(torch.equal(got[n], ref[n]) for n in ref)
    assert attrs["start_iteration"] == K and attrs["total_iterations"] == 15
    with h5py.File(tmp_path / "k" / "metrics.h5") as f:
        assert f.attrs["start_iteration"] == K
        evals = f["eval/iteration"][()]
        assert evals[0] == K and evals[-1] == 15 and (evals >= K).all()
        assert int(f.attrs["images"]) == (15 - K) * 32  # T - k steps, all batches full here
    runs.run(
        _job(data_file, tmp_path / "restart", hp, init=str(dense / f"iter{K}.pt")),
        log=lambda s: None,
    )
    restarted = _final(tmp_path / "restart")
    assert not all(torch.equal(restarted[n], ref[n]) for n in ref)


def test_learning_rate_at_each_step_is_the_dense_runs_at_that_absolute_step(
    data_file, tmp_path, monkeypatch
):
    lrs = []
    real_step = train.masked_step

    def recording_step(optimizer, mparams, mmasks):
        lrs.append(optimizer.lr)
        real_step(optimizer, mparams, mmasks)

    monkeypatch.setattr(train, "masked_step", recording_step)
    ds = data.load(data_file)

    def run(start):
        lrs.clear()
        m = models.build(NET)
        models.initialise(m, rng.generator(1, "init"))
        opts = train.RunOptions(seed=1, start_iteration=start, log_every=5)
        res = train.train(m, ds, HP, opts, workdir=tmp_path / f"w{start}", log=lambda s: None)
        return list(lrs), res

    dense_lrs, _ = run(0)
    rewound_lrs, res = run(K)
    assert len(dense_lrs) == 15 and len(rewound_lrs) == 15 - K
    assert rewound_lrs == dense_lrs[K:]
    assert rewound_lrs[: 10 - K] == [0.05] * (10 - K) and rewound_lrs[-1] == pytest.approx(0.005)
    assert res.metrics.train_iteration[-1] == 15


def test_level_rewound_to_0_with_a_full_mask_is_the_dense_trajectory(data_file, tmp_path):
    ds = data.load(data_file)

    def run(mask):
        m = models.build(NET)
        models.initialise(m, rng.generator(1, "init"))
        opts = train.RunOptions(seed=1, log_every=5)
        train.train(
            m, ds, HP, opts, workdir=tmp_path / str(bool(mask)), mask=mask, log=lambda s: None
        )
        return m.state_dict()

    template = models.build(NET)
    full = prune.full_mask(template.state_dict(), models.prunable(template, NET))
    dense, level = run(None), run(full)
    assert all(torch.equal(dense[n], level[n]) for n in dense)


def test_pretrained_start_counts_pretraining_as_the_first_epochs(data_file, tmp_path):
    """The framework's rule for a pre-trained start (train_start_step = the pre-training length):
    E epochs of pre-training put the CIFAR-10 run at iteration E x iterations-per-epoch."""
    job = _job(data_file, tmp_path, start_epochs=1.0, start_iteration=2)
    assert runs.start_iteration(job, ipe=5) == 7
    attrs = runs.run(job, log=lambda s: None)
    assert attrs["start_iteration"] == 7


def test_start_beyond_the_schedule_is_refused(data_file, tmp_path):
    with pytest.raises(ValueError, match="start iteration 15 must lie in 0..14"):
        runs.run(_job(data_file, tmp_path, start_iteration=15), log=lambda s: None)


def test_grouped_rewound_runs_match_separate_rewound_runs(data_file, dense_no_momentum, tmp_path):
    ds = data.load(data_file)
    dense, hp = dense_no_momentum
    start = checkpoint.load(dense / f"iter{K}.pt")["state_dict"]
    alone, together = [], []
    for seed in (1, 2):
        m = models.build(NET)
        m.load_state_dict(start)
        opts = train.RunOptions(seed=seed, start_iteration=K, log_every=5)
        train.train(m, ds, hp, opts, workdir=tmp_path / f"s{seed}", log=lambda s: None)
        alone.append(m.state_dict())
        g = models.build(NET)
        g.load_state_dict(start)
        together.append(g)
    batch = [
        train.Run(g, ds, train.RunOptions(seed=s, start_iteration=K), tmp_path / f"g{s}")
        for g, s in zip(together, (1, 2), strict=True)
    ]
    res = train.train_runs(batch, hp, log=lambda s: None)[0]
    for a, b in zip(alone, together, strict=True):
        for n, v in a.items():
            torch.testing.assert_close(b.state_dict()[n], v, rtol=1e-4, atol=1e-5)
    assert res.metrics.eval_iteration[-1] == 15
    assert np.all(np.asarray(res.metrics.train_iteration) > K)
