"""Per-run files are checked against the run they are read for (identity.py and its readers)."""

import shutil

import h5py
import numpy as np
import pytest
import torch

from pipeline_scripts.earlyphase import checkpoint, claims, identity, prune, runs, telemetry

R = "runs/x/results/resnet20/seed3"


@pytest.mark.parametrize(
    "path, expected",
    [
        (f"{R}/dense/metrics.h5", dict(experiment="dense", series="dense", level=0)),
        (f"{R}/imp/rewind500/level4/metrics.h5",
         dict(experiment="imp", series="rewind500", rewind_iteration=500, level=4)),
        (f"{R}/imp/pretrain/rotation/e0.5/level0/metrics.h5",
         dict(experiment="imp", series="pretrain/rotation/e0.5", level=0)),
        (f"{R}/perturb/rewind2000/level6/noise_0.5/metrics.h5",
         dict(experiment="perturb", series="noise_0.5", rewind_iteration=2000, level=6)),
        (f"{R}/pretrain/blur_rotation/e40/metrics.h5",
         dict(experiment="pretrain", series="blur_rotation/e40", level=0)),
        (f"{R}/sparse/rewind500/level2/random/scratch/metrics.h5",
         dict(experiment="sparse_pretrain", series="random_scratch", level=2)),
        (f"{R}/dense/checkpoints/iter100.pt", {}),
    ],
)  # fmt: skip
def test_path_names_the_run(path, expected):
    assert identity.from_path(path) == {"network": "resnet20", "seed": 3, **expected}
    assert identity.from_path("elsewhere/metrics.h5") == {}


def test_check_names_file_recorded_and_expected_values():
    identity.check("f.h5", {"seed": np.int64(2), "level": 2}, {"seed": 2, "level": 2})
    with pytest.raises(ValueError) as err:
        identity.check("f.h5", {"seed": 2}, {"seed": 1, "series": "dense"}, "resnet20 seed 1")
    assert str(err.value).startswith("f.h5 read for resnet20 seed 1 records seed 2 (expected 1)")
    assert "no series (expected 'dense')" in str(err.value)


def _telemetry(path, seed, network="resnet20"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update({"final_test_accuracy": 0.5, "seed": seed, "network": network})
        f["iteration"] = np.arange(4)
        for key in telemetry.SERIES:
            f[key] = np.linspace(0, 1, 4)
        f["ten_weights"] = np.zeros((4, 10))
    return str(path)


def test_telemetry_summary_refuses_another_seeds_file(tmp_path):
    paths = [
        _telemetry(tmp_path / f"results/resnet20/seed{s}/dense/telemetry.h5", s) for s in (1, 2)
    ]
    telemetry.summarise(paths, tmp_path / "ok.h5", "resnet20")
    shutil.copy(paths[1], paths[0])
    with pytest.raises(ValueError, match="seed 2 \\(expected 1\\)"):
        telemetry.summarise(paths, tmp_path / "bad.h5", "resnet20")
    with pytest.raises(ValueError, match="network 'resnet20' \\(expected 'vgg13'\\)"):
        telemetry.summarise(paths[1:], tmp_path / "bad.h5", "vgg13")


def test_claims_refuse_a_dense_file_of_another_seed(tmp_path):
    from test_aggregate import write_metrics

    a = write_metrics(tmp_path / "a.h5", accuracy=0.9, seed=1, level=0)
    with h5py.File(a, "a") as f:
        f.attrs.update({"experiment": "dense", "series": "dense"})
    claims.check_dense_runs([["dense", "resnet20/1"]], [a])
    with pytest.raises(ValueError, match="seed 1 \\(expected 2\\)"):
        claims.check_dense_runs([["dense", "resnet20/2"]], [a])


def test_masks_and_checkpoints_of_another_run_are_refused(tmp_path):
    mask = {"w": torch.ones(3, dtype=torch.bool)}
    prune.save(tmp_path / "mask.pt", mask, level=2, meta={"seed": 1})
    assert prune.load(tmp_path / "mask.pt", level=2, seed=1).keys() == {"w"}
    with pytest.raises(checkpoint.CheckpointError, match="records level 2 but is read as level 3"):
        prune.load(tmp_path / "mask.pt", level=3, seed=1)
    with pytest.raises(checkpoint.CheckpointError, match="records seed 1 but is read as seed 2"):
        prune.load(tmp_path / "mask.pt", level=2, seed=2)
    # a dense snapshot iter<k>.pt must hold iteration k; a final.pt the job's network and seed
    checkpoint.save(
        tmp_path / "iter500.pt", {"w": torch.zeros(1)}, iteration=100, network="resnet20"
    )
    checkpoint.save(
        tmp_path / "final.pt", {"w": torch.zeros(1)}, iteration=9, network="vgg13", meta={"seed": 2}
    )
    job = runs.Job(
        network="resnet20",
        seed=1,
        data_path="",
        hparams={},
        runtime={},
        eval_every=1,
        out_final="",
        out_metrics="",
        workdir="",
    )
    with pytest.raises(ValueError, match="iteration 100 \\(expected 500\\)"):
        runs._checkpoint_of(job, str(tmp_path / "iter500.pt"))
    with pytest.raises(ValueError, match="network 'vgg13' \\(expected 'resnet20'\\), seed 2"):
        runs._checkpoint_of(job, str(tmp_path / "final.pt"))
