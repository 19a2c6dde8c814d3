"""runtime.precision: fp32 / tf32 / bf16 as a setting (numerics chosen by evidence, the
paper's float32 by default). On this CPU tf32 is fp32; bf16 autocasts the forward passes."""

import h5py
import pytest
import torch
from jobs import make_job

from pipeline_scripts.earlyphase import checkpoint, data, device, runs
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

NET = "resnet8_w4"
HP = TrainingHparams(batch_size=32, epochs=2, milestones=(1,), lr=0.05)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 96, "n_test": 32}, seed=0)
    return path


def _job(data_file, out, precision, seed=1):
    runtime = {"log_every": 3, "precision": precision}
    return make_job(
        data_file, out, network=NET, hparams=HP, log_every=3, seed=seed, runtime=runtime
    )


def _run(data_file, out, precision):
    runs.run(_job(data_file, out, precision), log=lambda s: None)
    with h5py.File(out / "metrics.h5") as f:
        recorded = f.attrs["precision"]
    return checkpoint.load(out / "final.pt")["state_dict"], recorded


def test_effective_precision_and_flags():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert device.effective_precision("tf32", cpu) == "fp32"
    assert device.effective_precision("tf32", cuda) == "tf32"
    assert device.effective_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="runtime.precision"):
        device.effective_precision("fp16", cpu)
    try:
        device.set_precision("fp32")
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        device.set_precision("tf32")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        device.set_precision("tf32")


def test_bf16_autocasts_the_forward_pass():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with device.autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    for precision in ("fp32", "tf32"):
        with device.autocast(torch.device("cpu"), precision):
            assert layer(x).dtype == torch.float32


def test_precision_is_recorded_and_changes_only_bf16_runs_on_a_cpu(data_file, tmp_path):
    fp32, rec32 = _run(data_file, tmp_path / "fp32", "fp32")
    tf32, rec_tf = _run(data_file, tmp_path / "tf32", "tf32")
    bf16, rec16 = _run(data_file, tmp_path / "bf16", "bf16")
    assert (rec32, rec_tf, rec16) == ("fp32", "fp32", "bf16")  # no TF32 on a CPU
    assert all(torch.equal(fp32[k], tf32[k]) for k in fp32)
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)


def test_bf16_batch_of_runs_trains_each_run_in_bf16(data_file, tmp_path):
    """The one loop autocasts a batch of N > 1 runs as it does one run: a grouped bf16 batch ends
    nearer each run trained alone in bf16 than bf16 is to fp32."""

    batch = [_job(data_file, tmp_path / f"g{s}", "bf16", seed=s) for s in (1, 2)]
    runs.run_group(batch, log=lambda s: None)
    runs.run(_job(data_file, tmp_path / "alone", "bf16"), log=lambda s: None)
    runs.run(_job(data_file, tmp_path / "fp32", "fp32"), log=lambda s: None)
    g, a, f = (
        checkpoint.load(tmp_path / d / "final.pt")["state_dict"]["conv1.weight"]
        for d in ("g1", "alone", "fp32")
    )
    assert 0 < (a - f).abs().max()
    assert (g - a).abs().max() <= (a - f).abs().max()
    with h5py.File(tmp_path / "g1" / "metrics.h5") as h:
        assert h.attrs["precision"] == "bf16" and h.attrs["runs_per_job"] == 2
