"""Smoke test of the throughput benchmark: it runs end to end and writes its table and JSON. It
asserts nothing about speed."""

import json

import pytest
import torch

from pipeline_scripts.tools import bench, cost

pytestmark = pytest.mark.training  # run again under the AVX2 cap (make test-avx2)

NET = "resnet8_w4"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # bench.main sets the thread count for its process
    yield
    torch.set_num_threads(threads)


def test_quick_benchmark_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [
        "--quick",
        "--networks",
        NET,
        "--sparse",
        NET,
        "--reference",
        NET,
        "--eval-sweep",
        NET,
        "--eval-batches",
        "100",
        "250",
        "--compile",
        "none",
        "--multirun",
        NET,
        "--multirun-n",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    assert result["format"] == bench.FORMAT and result["quick"] is True
    assert result["data"]["synthetic"] is True
    assert result["matmul"]["gflops"] > 0
    dense, sparse = result["networks"][NET], result["networks"][f"{NET}_sparse80"]
    for e in (dense, sparse):
        assert e["ours"]["img_s"] > 0 and len(e["ours"]["windows_img_s"]) >= 3
        assert e["forward_flops_per_image"] > 0 and 0 < e["fraction_of_matmul_peak"]
    assert dense["reference"]["img_s"] > 0 and dense["ratio_to_reference"] > 0
    assert dense["eval"]["250"]["img_s"] > 0
    assert set(result["eval_sweep"]["batch_sizes"]) == {"100", "250"}
    groups = result["runs_per_job"]["groups"]
    assert set(groups) == {"grouped_n2", "vmap_n2"} and groups["grouped_n2"]["speedup"] > 0
    assert "ours/ref" in capsys.readouterr().out
    # cost.py reads it
    assert cost.throughput(result)[NET]["train"] == dense["ours"]["img_s"]


def test_step_clock_windows():
    """Warm-up, then windows of whole steps sized from the warm-up step time; stops by raising."""
    plan = bench.Plan(
        warmup_steps=2, warmup_s=0.0, window_s=0.0, windows=3, max_other_cores=float("inf")
    )
    clock = bench.StepClock(plan, n_train=100, batch_size=32)
    with pytest.raises(bench._Enough):
        for it in range(100):
            clock.on_step(it)
    t = clock.result()
    assert len(t.windows) == 3 and t.window_steps == 1
    # Images per step follow the epoch: 32, 32, 32, then the partial batch of 4.
    assert clock.images[:4] == [32, 32, 32, 4]


def test_contended_windows_are_dropped_and_retimed(monkeypatch):
    others = iter([0.0, 1.0, 0.0, 1.0, 0.0] + [0.0] * 10)  # windows 2 and 4 overlap other work
    monkeypatch.setattr(bench.Monitor, "others", lambda self: next(others))
    plan = bench.Plan(warmup_steps=1, warmup_s=0.0, window_s=0.0, windows=3)
    clock = bench.StepClock(plan, n_train=1000, batch_size=10)
    with pytest.raises(bench._Enough):
        for it in range(100):
            clock.on_step(it)
    t = clock.result()
    assert len(t.windows) == 3 and len(t.contended) == 2 and t.others[:2] == [0.0, 1.0]
