"""Instability analysis (stability.py): two copies trained k..T on independent SGD noise, the
error along the line between them, and the barrier."""

import shutil

import h5py
import numpy as np
import pytest
import torch
from jobs import make_job

from pipeline_scripts.earlyphase import augment, checkpoint, data, models, rng, runs, stability
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

NET = "resnet8_w4"
HP = TrainingHparams(batch_size=32, epochs=3, milestones=(2,), lr=0.05)  # 5 steps/epoch, T = 15
K = 5
QUIET = {"log": lambda s: None}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 160, "n_test": 64}, seed=0)
    return path


def _job(data_file, out, seed=1, **kw):
    return make_job(data_file, out, network=NET, hparams=HP, log_every=5, seed=seed, **kw)


def _copy(data_file, root, dense, seed, replica, sub="dense"):
    out = root / f"results/{NET}/seed{seed}/stability/{sub}/k{K}/{replica}"
    attrs = {
        "experiment": "stability",
        "series": f"{sub}/{replica}",
        "rewind_iteration": K,
        "data_stream": replica,
    }
    runs.run(
        _job(
            data_file,
            out,
            seed,
            init=str(dense / f"iter{K}.pt"),
            start_iteration=K,
            data_stream=replica,
            attrs=attrs,
        ),
        **QUIET,
    )
    return out


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    """Dense runs of seeds 1 and 2 keeping their step-K weights, and both copies of each."""
    root = tmp_path_factory.mktemp("stability")
    out = {}
    for seed in (1, 2):
        dense = root / f"results/{NET}/seed{seed}/dense"
        runs.run(_job(data_file, dense, seed, snapshots={K: str(dense / f"iter{K}.pt")}), **QUIET)
        out[seed] = [_copy(data_file, root, dense, seed, r) for r in stability.COPIES]
    return root, out


def _measure(data_file, copies, seed, batchnorm="interpolate", points=7):
    return stability.measure(
        tuple(str(c / "final.pt") for c in copies),
        tuple(str(c / "metrics.h5") for c in copies),
        str(data_file),
        run={"network": NET, "seed": seed, "level": 0, "rewind_iteration": K},
        hparams=HP.to_dict(),
        points=points,
        batchnorm=batchnorm,
        bn_samples=64,
        runtime={"device": "cpu"},
        **QUIET,
    )


def test_default_stream_is_the_seeds_own_and_named_streams_differ():
    own = augment.draw_epoch(100, 3, 2, 4, True, "cpu")
    expected = torch.randperm(100, generator=rng.generator(3, "data_order", 2))
    assert torch.equal(own.order, expected)  # "" leaves every existing run's data order alone
    c1 = augment.draw_epoch(100, 3, 2, 4, True, "cpu", stream="copy1")
    c2 = augment.draw_epoch(100, 3, 2, 4, True, "cpu", stream="copy2")
    assert not torch.equal(c1.order, own.order) and not torch.equal(c1.order, c2.order)
    assert not torch.equal(c1.dy, c2.dy)


def test_interpolate_state_is_exact_at_the_endpoints():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(50, generator=g), "n": torch.tensor(3)}
    b = {"w": torch.randn(50, generator=g), "n": torch.tensor(9)}
    assert torch.equal(stability.interpolate_state(a, b, 0.0)["w"], a["w"])
    assert torch.equal(stability.interpolate_state(a, b, 1.0)["w"], b["w"])
    mid = stability.interpolate_state(a, b, 0.25)
    torch.testing.assert_close(mid["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert mid["n"] == 3  # integer buffers from the first network
    with pytest.raises(ValueError, match="differ in their tensors"):
        stability.interpolate_state(a, {"w": b["w"]}, 0.5)


def test_alphas_include_both_endpoints():
    al = stability.alphas(30)
    assert len(al) == 30 and al[0] == 0.0 and al[-1] == 1.0
    with pytest.raises(ValueError):
        stability.alphas(1)


def test_copies_see_different_noise_and_train_k_to_t(trained):
    _, out = trained
    a, b = (checkpoint.load(c / "final.pt")["state_dict"] for c in out[1])
    assert any(not torch.equal(a[n], b[n]) for n in a)
    with h5py.File(out[1][0] / "metrics.h5") as f:
        assert f.attrs["start_iteration"] == K and f.attrs["data_stream"] == "copy1"
        assert int(f.attrs["images"]) == (15 - K) * 32


def test_endpoints_reproduce_the_copies_own_accuracies_exactly(data_file, trained):
    _, out = trained
    r = _measure(data_file, out[1], 1)
    acc = [h5py.File(c / "metrics.h5").attrs["final_test_accuracy"] for c in out[1]]
    assert r["accuracy"][0] == acc[0] and r["accuracy"][-1] == acc[1]
    assert r["attrs"]["endpoint_max_difference"] == 0.0
    assert r["barrier"] == pytest.approx(r["error"].max() - 0.5 * (r["error"][0] + r["error"][-1]))
    assert r["barrier"] >= 0.0
    assert len(r["alpha"]) == 7


def test_barrier_of_a_network_with_itself_is_zero(data_file, trained):
    _, out = trained
    same = (out[1][0], out[1][0])
    ds = data.load(data_file)
    model = models.build(NET)
    state = checkpoint.load(same[0] / "final.pt")["state_dict"]
    norm = augment.Normalise(HP.mean, HP.std, "cpu")
    from pipeline_scripts.earlyphase import train

    r = stability.curve(
        model, state, state, lambda m: train.evaluate(m, ds.test_x, ds.test_y, norm, 64), 9
    )
    assert r["barrier"] == 0.0 and r["loss_barrier"] == pytest.approx(0.0, abs=1e-6)
    assert np.all(r["error"] == r["error"][0])


def test_recompute_mode_reestimates_batchnorm_statistics(data_file, trained):
    _, out = trained
    r = _measure(data_file, out[1], 1, batchnorm="recompute", points=3)
    assert r["attrs"]["batchnorm"] == "recompute" and r["attrs"]["bn_samples"] == 64
    assert np.isfinite(r["error"]).all()
    # the statistics really are the sample's: one BatchNorm layer checked against its input
    model = models.build(NET)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    bn.register_forward_pre_hook(lambda m, x: seen.append(x[0].detach()))
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    stability.recompute_batchnorm(model, x, augment.Normalise(HP.mean, HP.std, "cpu"), 40)
    torch.testing.assert_close(bn.running_mean, seen[0].mean((0, 2, 3)))
    assert bn.momentum == 0.1  # restored after the cumulative average


def test_copy_on_the_wrong_stream_is_refused(data_file, trained):
    _, out = trained
    with pytest.raises(ValueError, match="data stream 'copy1', not 'copy2'"):
        _measure(data_file, (out[1][0], out[1][0]), 1)


def test_summary_across_seeds_and_identity_check(data_file, trained, tmp_path):
    root, out = trained
    paths = []
    for seed in (1, 2):
        r = _measure(data_file, out[seed], seed)
        p = root / f"results/{NET}/seed{seed}/stability/dense/k{K}/interpolation.h5"
        stability.write(p, r, r["attrs"])
        paths.append(str(p))
    s = stability.summarise(paths, tmp_path / "summary.h5", NET)["dense"]
    barriers = [stability.read(p)["attrs"]["barrier"] * 100 for p in paths]
    assert s["rewind"] == [K] and s["n"] == [2]
    assert s["barrier_mean"][0] == pytest.approx(np.mean(barriers))
    assert s["barrier_std"][0] == pytest.approx(np.std(barriers, ddof=1))
    back = stability.read_summary(tmp_path / "summary.h5")["dense"]
    assert list(back["curves"][K]["seed"]) == [1, 2]
    # seed 2's interpolation copied over seed 1's is refused, naming the file
    wrong = root / f"results/{NET}/seed1/stability/dense/k{K}/interpolation.h5"
    shutil.copy(paths[1], wrong)
    with pytest.raises(ValueError, match="seed 2 .*expected 1"):
        stability.summarise([str(wrong)], tmp_path / "again.h5", NET)


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_interpolation_evaluates_with_the_copies_kernels(data_file, trained, precision, tmp_path):
    """The interpolate job applies the precision its copies were trained (and evaluated) in --
    the TF32 switches included -- and records it; copies of two precisions are refused."""
    _, out = trained
    copies = []
    for c in out[1]:
        dst = tmp_path / c.name
        shutil.copytree(c, dst)
        with h5py.File(dst / "metrics.h5", "a") as f:
            f.attrs["precision"] = precision
        copies.append(dst)
    torch.backends.cuda.matmul.allow_tf32 = precision == "fp32"  # the opposite of what it needs
    r = _measure(data_file, copies, 1)
    assert r["attrs"]["precision"] == precision
    assert torch.backends.cuda.matmul.allow_tf32 == (precision == "tf32")
    assert torch.backends.cudnn.allow_tf32 == (precision == "tf32")
    with h5py.File(copies[1] / "metrics.h5", "a") as f:
        f.attrs["precision"] = "bf16"
    with pytest.raises(ValueError, match="different precisions"):
        _measure(data_file, copies, 1)
