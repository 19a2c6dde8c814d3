"""device.configure: threads, determinism switched on *and off*, and no fill of new memory (a
debugging aid that costs a kernel per allocation and changes no result)."""

import pytest
import torch

from pipeline_scripts.earlyphase import data, device, models, rng, train
from pipeline_scripts.earlyphase.hparams import TrainingHparams

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)


@pytest.fixture(autouse=True)
def _restore():
    threads = torch.get_num_threads()
    yield
    device.configure(threads)


def test_deterministic_true_and_false_both_take_effect():
    device.configure(1, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    device.configure(1, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    device.configure(1, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()


def test_the_memory_fill_changes_no_result(tmp_path):
    """Deterministic mode's NaN fill of new memory on (PyTorch's default) and off (ours): the
    same seed trains to bit-identical weights, so no kernel reads memory it did not write."""
    path = tmp_path / "d.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 96, "n_test": 32}, seed=0)
    ds = data.load(path)
    hp = TrainingHparams(batch_size=32, epochs=2, milestones=(1,), lr=0.05)
    states = []
    for fill in (True, False):
        device.configure(1)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        m = models.build("resnet8_w4")
        models.initialise(m, rng.generator(1, "init"))
        train.train(m, ds, hp, train.RunOptions(seed=1), workdir=tmp_path / str(fill), log=print)
        states.append(m.state_dict())
    device.configure(1)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_kernels_name_what_selects_the_kernels():
    device.configure(2)
    k = device.kernels(torch.device("cpu"), compile=True, cuda_graphs=True)
    assert k["device"].startswith("cpu " + torch.backends.cpu.get_cpu_capability())
    assert k["threads"] == 2 and k["deterministic"] is True and k["compile"] is True
    assert k["cuda_graphs"] is False  # no CUDA graphs on a CPU, whatever the setting
    assert k["torch"] == torch.__version__


def test_compiling_without_a_compiler_fails_at_the_start_naming_the_setting(monkeypatch):
    monkeypatch.setattr(device.shutil, "which", lambda name: None)
    for var in ("CC", "CXX"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="runtime.compile is on, which needs a C.. compiler"):
        device.check_compiler(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="runtime.compile .*C compiler.*Triton"):
        device.check_compiler(torch.device("cuda"))
    monkeypatch.setattr(device.shutil, "which", lambda name: f"/usr/bin/{name}")
    device.check_compiler(torch.device("cpu"))
