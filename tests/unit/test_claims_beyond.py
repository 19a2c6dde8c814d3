"""The claims rows beyond the paper (claims_beyond.py) on files written by the project's own writers:
a paper-scale ResNet-20 whose barrier falls with k and whose IMP sub-networks match exactly where
they are stable, and a top Hessian eigenvalue that grows, then settles."""

import numpy as np
import pytest
from test_claims import SEEDS, Runs, dense_files, imp_summary, settings

from pipeline_scripts.earlyphase import claims, hessian, stability

BARRIERS = {  # sub-network -> k -> barrier (pp) of every seed; IMP at level 8 matches from k = 500
    "dense": {0: 6.0, 500: 0.6, 2000: 0.2},
    "level8": {0: 12.0, 500: 1.2, 2000: 0.4},
}
TOP = [5.0, 22.0, 30.0, 31.0, 30.5]  # at iterations 0, 100, 500, 2000, 4000
HESSIAN_ITS = [0, 100, 500, 2000, 4000]


def interpolation_files(root, barriers=BARRIERS):
    paths = []
    for sub, by_k in barriers.items():
        level = 0 if sub == "dense" else int(sub.removeprefix("level"))
        for k, b in by_k.items():
            for s in SEEDS:
                err = np.full(5, 0.1)
                err[2] += (b + 0.01 * s) / 100  # the barrier sits in the middle of the path
                result = {
                    "alpha": np.linspace(0, 1, 5),
                    "accuracy": 1 - err,
                    "error": err,
                    "loss": err,
                    "barrier": float(err.max() - 0.1),
                    "loss_barrier": 0.0,
                }
                p = root / f"results/resnet20/seed{s}/stability/{sub}/k{k}/interpolation.h5"
                attrs = {
                    "network": "resnet20",
                    "seed": s,
                    "level": level,
                    "rewind_iteration": k,
                    "batchnorm": "interpolate",
                    "experiment": "stability",
                    "weights_remaining_fraction": 0.8**level,
                }
                stability.write(p, result, attrs)
                paths.append(str(p))
    out = root / "results/resnet20/summary/stability.h5"
    stability.summarise(paths, out, "resnet20")
    return str(out)


def hessian_files(root, top=TOP):
    paths = []
    for s in SEEDS:
        p = root / f"results/resnet20/seed{s}/dense/hessian.h5"
        p.parent.mkdir(parents=True, exist_ok=True)
        results = [
            {
                "top": t * (1 + 0.01 * s),
                "ritz": np.array([t, t / 2, t / 3]),
                "residual": 0.01,
                "hvps": 20,
                "seconds": 1.0,
            }
            for t in top
        ]
        hessian.write(
            p,
            HESSIAN_ITS,
            results,
            {
                "network": "resnet20",
                "seed": s,
                "lr": 0.1,
                "momentum": 0.9,
                "samples": 2048,
                "steps": 20,
                "threshold": 38.0,
            },
        )
        paths.append(str(p))
    out = root / "results/resnet20/summary/hessian.h5"
    hessian.summarise(paths, out, "resnet20", [0, 500, 2000])
    return str(out)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond")
    runs = Runs(root)
    out, _ = claims.build_claims(
        networks=["resnet20"],
        settings=settings(),
        dense={"resnet20": dense_files(runs)},
        imp=imp_summary(runs),
        stability=interpolation_files(root),
        hessian=hessian_files(root),
    )
    return {r.id: r for r in out}


def test_barrier_rows_at_paper_scale(rows):
    r = rows["beyond_lmc_dense_stable"]
    assert r.measured_value == pytest.approx(0.2 + 0.02, abs=1e-9)  # mean over seeds 1..3
    assert r.verdict == claims.REPRODUCED and r.n == 3
    assert rows["beyond_lmc_dense_falls"].measured_value == pytest.approx(5.8)
    assert rows["beyond_lmc_dense_falls"].verdict == claims.REPRODUCED
    assert rows["beyond_lmc_sparse_unstable_k0"].verdict == claims.REPRODUCED
    assert rows["beyond_lmc_sparse_stable"].measured_value == pytest.approx(0.42)
    assert "level 8 (16.8% remaining)" in rows["beyond_lmc_sparse_stable"].description


def test_stable_iff_matching_compares_with_figure_1(rows):
    r = rows["beyond_lmc_stable_iff_matching"]
    assert r.measured_value == 1.0 and r.n == 3 and r.verdict == claims.REPRODUCED
    assert "k=0: barrier 12.0 pp, IMP - dense -2.0 pp" in r.measured


def test_disagreement_is_not_reproduced(tmp_path):
    runs = Runs(tmp_path)
    unstable_500 = {"dense": BARRIERS["dense"], "level8": {0: 12.0, 500: 5.0, 2000: 0.4}}
    out, _ = claims.build_claims(
        networks=["resnet20"],
        settings=settings(),
        dense={"resnet20": dense_files(runs)},
        imp=imp_summary(runs),
        stability=interpolation_files(tmp_path, unstable_500),
    )
    r = {c.id: c for c in out}["beyond_lmc_stable_iff_matching"]
    assert r.measured_value == pytest.approx(2 / 3) and r.verdict == claims.NOT_REPRODUCED
    assert "(disagree)" in r.measured


def test_hessian_rows(rows):
    grows = rows["beyond_hessian_grows"]
    assert grows.measured_value == pytest.approx(31.0 / 5.0) and grows.verdict == claims.REPRODUCED
    assert "at iteration 2000" in grows.measured
    settles = rows["beyond_hessian_settles"]
    assert settles.measured_value == pytest.approx(30.5 / 31.0 - 1)
    assert settles.verdict == claims.REPRODUCED


def test_switched_off_measurements_are_not_run(tmp_path):
    runs = Runs(tmp_path)
    out, _ = claims.build_claims(
        networks=["resnet20"], settings=settings(), dense={"resnet20": dense_files(runs)}
    )
    beyond = [c for c in out if c.id.startswith("beyond_")]
    assert len(beyond) == 7 and all(c.verdict == claims.NOT_RUN for c in beyond)


def test_unconverged_lanczos_is_not_judged(tmp_path):
    runs = Runs(tmp_path)
    out, _ = claims.build_claims(
        networks=["resnet20"],
        settings=settings(),
        dense={"resnet20": dense_files(runs)},
        hessian=hessian_files(tmp_path, top=[0.05, 22.0, 30.0, 31.0, 30.5]),
    )
    r = {c.id: c for c in out}["beyond_hessian_grows"]
    assert r.verdict == claims.NOT_COMPARABLE and "Lanczos not converged" in r.note
