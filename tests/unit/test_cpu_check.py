"""Every network trains correctly under the AVX2 kernels, whatever CPU runs the suite
(tools/cpu_check.py): each case runs in a child process under ONEDNN_MAX_CPU_ISA=AVX2 /
ATEN_CPU_CAPABILITY=avx2, so a crash or a hang fails its case instead of the suite. Without the
layout rule this fails on resnet8_w4 (oneDNN's 1x1 backward-weights bug: SIGSEGV with one
thread, a hang with two, wrong weight gradients otherwise)."""

import json

from pipeline_scripts.tools import cpu_check


def test_every_network_trains_correctly_under_the_avx2_cap():
    report = cpu_check.run("avx2", timeout=120, log=lambda s: None)
    bad = [c for c in report["cases"] if c["status"] != "ok"]
    assert not bad, json.dumps(bad, indent=1)
    assert report["aten_cpu_capability"] == "AVX2"
    assert {c["network"] for c in report["cases"]} == set(cpu_check.NETWORKS)
    assert {c["threads"] for c in report["cases"]} == {1, 2}
    # vmap and hvp cases check for crashes, hangs and finite results; the others every layer
    checked = [c["max_rel_error"] for c in report["cases"] if c["method"] in ("single", "grouped")]
    assert all(e is not None and e < cpu_check.TOLERANCE for e in checked)


def test_a_crash_and_a_hang_fail_their_case_and_the_rest_runs(monkeypatch):
    """The parent's bookkeeping: a child killed by a signal fails the case it announced, a
    silent child is killed after the timeout, and a fresh child runs the remaining cases."""
    real = cpu_check._spawn

    def spawn(names, threads, env, stderr):
        env = {**env, "CPU_CHECK_SABOTAGE": "resnet8_w4/single=segv,wrn10_1/single=hang"}
        return real(names, threads, env, stderr)

    monkeypatch.setattr(cpu_check, "_spawn", spawn)
    report = cpu_check.run(
        "native",
        networks=("resnet8_w4", "wrn10_1", "resnet8_w8"),
        threads=(1,),
        methods=("single",),
        timeout=3,
        log=lambda s: None,
    )
    status = {c["network"]: c["status"] for c in report["cases"]}
    assert status == {"resnet8_w4": "crashed", "wrn10_1": "hung", "resnet8_w8": "ok"}
    assert "SIGSEGV" in report["cases"][0]["detail"]
    assert not report["ok"]
