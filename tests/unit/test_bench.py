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


def test_gpu_tool_grid_sizes_and_cost_on_the_cpu(tmp_path, capsys):
    """tools.gpu runs end to end here (its figures mean nothing on a CPU):
    one row per network x N x mode x precision, N one-run processes timed together, the job
    sizes derived from the rows, and a bench-compatible section cost.py projects hours from."""
    from pipeline_scripts.tools import gpu

    out = tmp_path / "gpu"
    argv = ["grid", "--quick", "--networks", NET, "--n", "1", "2", "--precisions", "fp32"]
    argv += ["--graphs", "off"]
    argv += ["--also", "processes", "--share-seconds", "0.3", "--out-dir", str(out)]
    assert gpu.main(argv) == 0
    result = json.loads((out / "grid.json").read_text())
    modes = sorted((r["n"], r["mode"]) for r in result["rows"])
    assert modes == [(1, "single"), (2, "grouped"), (2, "processes")]
    assert all(r["img_s"] > 0 and 0 < r["fraction_of_peak"] for r in result["rows"])
    sizes = json.loads((out / "sizes.json").read_text())
    single = next(r["img_s"] for r in result["rows"] if r["n"] == 1)
    assert sizes["minutes_per_run"][NET] == round(50_000 * 160 / single / 60 * 1.3, 1)
    assert sizes["runs_per_job"][NET] in (1, 2) and sizes["runs_per_job"]["default"] == 1
    best = max(r["img_s"] for r in result["rows"])
    assert cost.throughput(result)[NET]["train"] == best
    assert "N=2   processes" in capsys.readouterr().out


def test_gpu_tool_accuracy_and_imp_parts_run(tmp_path):
    """The 160-epoch accuracy and the IMP-chain parts of tools.gpu, shortened to 2 epochs on
    synthetic data: per-seed accuracies with wall times, and one accuracy per level per chain."""
    from pipeline_scripts.earlyphase import data
    from pipeline_scripts.tools import gpu

    path = tmp_path / "d.h5"
    data.prepare(path, "synthetic", synthetic={"n_train": 256, "n_test": 64}, seed=0)
    common = ["--data", str(path), "--network", NET, "--epochs", "2", "--out-dir", str(tmp_path)]
    assert gpu.main(["accuracy", *common, "--seeds", "1", "2"]) == 0
    acc = json.loads((tmp_path / "accuracy.json").read_text())
    assert [r["seed"] for r in acc["runs"]] == [1, 2]
    assert all(0 <= r["accuracy"] <= 1 and r["wall_s"] > 0 for r in acc["runs"])
    assert acc["paper_table_a1"] == [91.5, 0.2]
    assert gpu.main(["imp", *common, "--rewinds", "0", "2", "--levels", "2"]) == 0
    chains = json.loads((tmp_path / "imp.json").read_text())["chains"]
    assert set(chains) == {"0", "2"} and all(
        len(c["accuracy_by_level"]) == 2 for c in chains.values()
    )


def test_gpu_grid_resets_dynamo_per_row_records_failures_and_writes_every_row(monkeypatch):
    """The sizing tool's bookkeeping (no timing): each row starts from a reset Dynamo, reads its
    own compile counters, records a failing row and goes on, and writes the JSON after every
    row; the device is configured as a training job configures it."""
    import argparse

    from pipeline_scripts.tools import gpu

    resets, configured, snapshots = [], [], []
    monkeypatch.setattr(gpu, "_fresh_compiler", lambda: resets.append(1))
    monkeypatch.setattr(gpu.device, "configure_from", lambda rt, t: configured.append((rt, t)))

    def fake(net, ds, n, precision, graphs, method, plan):
        if n == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return 100.0 * n

    monkeypatch.setattr(gpu, "in_process", fake)
    args = argparse.Namespace(quick=True, data=None, share_seconds=0.1)
    rows = [
        {"network": NET, "n": n, "mode": m, "precision": "fp32", "cuda_graphs": False}
        for n, m in ((1, "single"), (2, "grouped"), (4, "grouped"))
    ]
    out = gpu.grid(
        args, log=lambda s: None, write=lambda r: snapshots.append(len(r["rows"])), rows=rows
    )
    assert len(resets) == 3 and configured and configured[0][0]["deterministic"] is True
    assert snapshots[:3] == [1, 2, 3] and out["complete"]
    failed = out["rows"][1]
    assert failed["img_s"] is None and "out of memory" in failed["error"]
    assert out["rows"][2]["img_s"] == 400.0 and "compiled" in out["rows"][2]
    assert gpu.sizes(out)["runs_per_job"][NET] == 4  # the failed row is left out


def test_gpu_grid_compiled_rows_record_that_they_compiled():
    """A compiled configuration on the CPU (Inductor's default mode: no CUDA graphs exist
    here) records its graphs in its own row's counters."""
    import argparse

    from pipeline_scripts.tools import gpu

    args = argparse.Namespace(quick=True, data=None, share_seconds=0.1)
    row = {"network": NET, "n": 1, "mode": "single", "precision": "fp32", "cuda_graphs": True}
    out = gpu.grid(args, log=lambda s: None, rows=[row])
    (r,) = out["rows"]
    assert r["img_s"] > 0 and r["compiled"]["graphs"] >= 1 and r["graphs_ran"] is False


def test_gpu_tool_stops_what_it_started(monkeypatch):
    import subprocess
    import sys

    from pipeline_scripts.tools import gpu

    calls = []
    monkeypatch.setattr(gpu.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(
        gpu.subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw.get("input")))
    )
    with gpu.mps_daemon(True, log=lambda s: None):
        assert calls == [(["/usr/bin/nvidia-cuda-mps-control", "-d"], None)]
    assert calls[-1] == (["/usr/bin/nvidia-cuda-mps-control"], "quit\n")
    monkeypatch.undo()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(RuntimeError), gpu._workers([sleeper, sleeper]) as procs:
        raise RuntimeError("a measurement failed")
    assert all(p.poll() is not None for p in procs)
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0


def test_gpu_check_runs_on_the_cpu(tmp_path):
    """python -m pipeline_scripts.tools.gpu check --quick: every part runs on this CPU (its
    figures mean nothing here), the CUDA-only tests are reported skipped with their reason, and
    one JSON holds (a)-(d)."""
    from pipeline_scripts.tools import gpu

    assert gpu.main(["check", "--quick", "--out-dir", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "check.json").read_text())
    assert r["complete"] and r["device"] == "cpu"
    tests = r["tests"]["tests"]
    assert len(tests) >= 6 and all(t["outcome"] == "skipped" for t in tests)
    assert all("needs a CUDA GPU" in t["detail"] for t in tests)
    launches = r["launches"]
    assert set(launches) == {f"graphs_{g}_mask_{m}" for g in ("off", "on") for m in ("off", "on")}
    assert all(v["per_step"] > 0 for v in launches.values())
    assert launches["graphs_on_mask_off"]["compiled"]["graphs"] >= 1
    rows = r["grid"]["rows"]
    assert {(x["n"], x["mode"], x["cuda_graphs"]) for x in rows} == {
        (1, "single", False),
        (1, "single", True),
        (2, "grouped", False),
        (2, "processes", False),
    }
    assert all(x["img_s"] > 0 for x in rows)
    assert set(r["startup"]) == {"graphs_off", "graphs_on_cold_cache", "graphs_on_warm_cache"}
    for phases in r["startup"].values():
        assert 0 < phases["imports"] <= phases["data_loaded"] <= phases["first_step_done"]
