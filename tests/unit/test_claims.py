"""The claims table (earlyphase.claims) on small summary files written by the project's own writers:
measured values, verdicts, "not run" / "not comparable" handling and the three output files."""

import csv
import math
import types
import uuid

import h5py
import numpy as np
import pytest
from scipy import stats

from pipeline_scripts.earlyphase import aggregate, claim, claims, metrics, plots, telemetry

PAPER_HP = {  # Appendix A
    "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 160,
    "milestones": [80, 120], "gamma": 0.1,
}  # fmt: skip
SMALL_HP = {**PAPER_HP, "batch_size": 64, "epochs": 2, "milestones": [1]}
PAPER_VARIANTS = {  # the config's names for the paper's perturbations, plus noise
    "signs_k_mags_0": {"kind": "sign_magnitude", "signs": "k", "magnitudes": "0"},
    "signs_0_mags_k": {"kind": "sign_magnitude", "signs": "0", "magnitudes": "k"},
    "shuffle_filter": {"kind": "shuffle", "scope": "filter"},
    "shuffle_layer": {"kind": "shuffle", "scope": "layer"},
    "shuffle_network": {"kind": "shuffle", "scope": "network"},
    "samesign_shuffle_filter": {"kind": "shuffle", "scope": "filter", "same_sign": True},
    "init_signs_shuffle_layer": {"kind": "shuffle_magnitudes_keep_signs", "scope": "layer",
                                 "signs": "0"},
    "noise_0.5": {"kind": "noise", "scale": 0.5},
    "noise_1": {"kind": "noise", "scale": 1.0},
    "noise_2": {"kind": "noise", "scale": 2.0},
    "noise_3": {"kind": "noise", "scale": 3.0},
}  # fmt: skip
PAPER_STD = {name: value for name, _, value, _, _ in claims.EFFECTIVE_STD}
FIG8_LEVEL = 6  # 0.8^6 = 26.2% remaining


def settings(**overrides):
    return {
        "data_source": "torchvision",
        "imp_levels": 8,
        "imp_fraction": 0.2,
        "imp_rewinds": [0, 500, 2000],
        "perturb_rewinds": [500, 2000],
        "variants": PAPER_VARIANTS,
        "figure8_level": FIG8_LEVEL,
        "pretrain_tasks": ["rotation"],
        "pretrain_epochs": ["40"],
        "sparse": {"task": "rotation", "epochs": 40, "rewind_iteration": 500},
        **overrides,
    }


class Runs:
    """Metrics files (metrics.write_run) and their summaries (aggregate.summarise)."""

    def __init__(self, root, hp=PAPER_HP, n_train=50_000, n_test=10_000):
        self.root, self.hp, self.n_train, self.n_test = root, hp, n_train, n_test
        self.entries = []

    def metrics_file(self, net, seed, accuracy, level=0, **attrs):
        path = self.root / "runs" / f"{uuid.uuid4().hex}.h5"
        ipe = math.ceil(self.n_train / self.hp["batch_size"])
        m = types.SimpleNamespace(  # the train.Metrics fields write_run reads
            train_iteration=[1],
            train_loss=[1.0],
            eval_iteration=[1],
            eval_loss=[1.0],
            eval_accuracy=[accuracy / 100],
            eval_wall_seconds=[1.0],
            train_seconds=1.0,
            eval_seconds=0.1,
            images=128,
        )
        metrics.write_run(
            path,
            m,
            {
                "network": net,
                "seed": seed,
                "level": level,
                "hparams": self.hp,
                "weights_remaining_fraction": 0.8**level,
                "n_train": self.n_train,
                "n_test": self.n_test,
                "iterations_per_epoch": ipe,
                "total_iterations": round(self.hp["epochs"] * ipe),
                **attrs,
            },
        )
        return str(path)

    def add(self, series, level, seed, accuracy, **attrs):
        path = self.metrics_file("resnet20", seed, accuracy, level, **attrs)
        self.entries.append({"series": series, "level": level, "seed": seed, "path": path})

    def summary(self, name):
        out = self.root / f"{name}.h5"
        aggregate.summarise(
            self.entries,
            out,
            attrs={"network": "resnet20"},
            extra=("effective_mean", "effective_std"),
        )
        self.entries = []
        return str(out)


SEEDS = (1, 2, 3)
DENSE = {1: 91.4, 2: 91.6, 3: 91.5}


def dense_files(runs, net="resnet20", accuracies=DENSE):
    return [runs.metrics_file(net, s, a) for s, a in accuracies.items()]


# ---- telemetry: curves with known Figure 2 landmarks --------------------------------------------
ITS = [*range(11), 20, 50, 100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 4000]
GRAD = {20: 2.0, 50: 1.2, 100: 0.8, 150: 0.6, 200: 0.5, 300: 0.7, 400: 0.85, 500: 0.95}
ACC = {400: 0.55, 2000: 0.79}  # fraction
SIGNS = {500: 0.10, 2000: 0.19}


def telemetry_summary(root, grad_min_by_seed=(200, 200)) -> str:
    """telemetry.summarise over per-seed files (the telemetry_run format); the gradient norm of
    seed i has its minimum at grad_min_by_seed[i]."""
    paths = []
    for seed, t_min in enumerate(grad_min_by_seed, start=1):
        grad = np.array([5.0 if t <= 10 else GRAD.get(t, 1.0) for t in ITS])
        grad[ITS.index(t_min)] = 0.4  # the minimum
        grad[-1] = np.nan  # no step follows the last point
        acc = np.interp(ITS, [0, 400, 2000, 4000], [0.1, ACC[400], ACC[2000], 0.85])
        signs = np.interp(ITS, [0, 500, 2000, 4000], [0.0, SIGNS[500], SIGNS[2000], 0.25])
        series = {"accuracy": acc, "sign_changed": signs, "grad_norm": grad}
        path = root / f"telemetry_seed{seed}.h5"
        with h5py.File(path, "w") as f:
            f.attrs.update({"final_test_accuracy": 0.915, "seed": seed, "network": "resnet20"})
            f["iteration"] = np.asarray(ITS, dtype=np.int64)
            for key in telemetry.SERIES:
                f[key] = series.get(key, np.linspace(0, 1, len(ITS)))
            f["ten_weights"] = np.zeros((len(ITS), 10))
        paths.append(str(path))
    out = root / "telemetry.h5"
    telemetry.summarise(paths, out, "resnet20")
    return str(out)


# ---- IMP, perturbations, pre-training -----------------------------------------------------------
def imp_summary(runs, levels=range(9), rewinds=(0, 500, 2000), drop_at_8=None):
    """IMP chains whose accuracy at level 8 (16.8%) is dense + drop_at_8[k]."""
    drop_at_8 = drop_at_8 or {0: -2.0, 500: -0.2, 2000: 0.1}
    for s, a in DENSE.items():
        runs.add("dense", 0, s, a)
        for k in rewinds:
            for lv in levels:
                runs.add(f"rewind{k}", lv, s, a + drop_at_8.get(k, 0.0) * lv / 8)
    return runs.summary("imp")


def perturb_summary(runs, k, eff_scale=1.05, slope=-40.0):
    """Every paper variant at level 6 with effective std = eff_scale x the paper's (noise: n/20),
    accuracy = 92 + slope x effective std + a per-variant offset."""
    rng = np.random.default_rng(k)
    for s, a in DENSE.items():
        runs.add("dense", 0, s, a)
        runs.add("imp", FIG8_LEVEL, s, a)
    for name, spec in PAPER_VARIANTS.items():
        std = eff_scale * PAPER_STD[name] if name in PAPER_STD else spec["scale"] / 20
        offset = rng.normal(0, 1.0)
        for s in SEEDS:
            e = std * (1 + 0.01 * s)
            runs.add(
                name,
                FIG8_LEVEL,
                s,
                92 + slope * e + offset + 0.1 * s,
                effective_std=e,
                effective_mean=0.01 * e,
            )
    return runs.summary(f"perturb_rewind{k}")


def pretrain_summary(runs, e40_minus_rewind500=-0.3, epochs=("2", "40")):
    for s, a in DENSE.items():
        runs.add("dense", 0, s, a)
        for lv in range(1, 9):
            runs.add("rewind0", lv, s, a - 0.3 * lv)
            runs.add("rewind500", lv, s, a - 0.05 * lv)
        for e in epochs:
            for lv in range(0, 9):
                gap = e40_minus_rewind500 if e == "40" else -0.2 * lv
                runs.add(f"e{e}", lv, s, a - 0.05 * lv + gap)
    return runs.summary("pretrain_rotation")


@pytest.fixture(scope="module")
def paper_scale(tmp_path_factory):
    """A paper-scale ResNet-20 run (3 seeds) plus a ResNet-56 that misses Table A1."""
    root = tmp_path_factory.mktemp("paper")
    runs = Runs(root)
    files = {
        "dense": {
            "resnet20": dense_files(runs),
            "resnet56": dense_files(runs, "resnet56", {1: 90.0, 2: 90.2}),
        },
        "telemetry": telemetry_summary(root, grad_min_by_seed=(200, 300)),
        "imp": imp_summary(runs),
        "perturb": {k: perturb_summary(runs, k) for k in (500, 2000)},
        "pretrain": {"rotation": pretrain_summary(runs)},
        "sparse": None,
    }
    rows, scales = claims.build_claims(
        networks=["resnet20", "resnet56"], settings=settings(), **files
    )
    return {r.id: r for r in rows}, scales, files, root


def test_table_a1_reproduced_within_one_point_and_other_networks_not_run(paper_scale):
    rows, scales, _, _ = paper_scale
    r20 = rows["tableA1_resnet20"]
    assert r20.measured_value == pytest.approx(91.5)
    assert r20.measured_std == pytest.approx(np.std([91.4, 91.6, 91.5], ddof=1))
    assert (r20.n, r20.paper_value, r20.verdict) == (3, 91.5, claims.REPRODUCED)
    r56 = rows["tableA1_resnet56"]
    assert r56.measured_value == pytest.approx(90.1) and r56.verdict == claims.NOT_REPRODUCED
    for net in ("resnet18", "vgg13", "wrn16_8"):
        assert rows[f"tableA1_{net}"].verdict == claims.NOT_RUN
    assert scales["resnet20"].seeds == SEEDS and scales["resnet20"].iterations == 160 * 391
    assert claims.protocol_gaps(scales["resnet20"]) == []


def test_timeline_landmarks_are_mean_and_std_over_seeds(paper_scale):
    rows = paper_scale[0]
    g = rows["timeline_grad_min"]
    assert (g.measured_value, g.measured_std, g.n) == (250.0, pytest.approx(70.71, abs=0.01), 2)
    assert g.verdict == claims.REPRODUCED  # both seeds' minima lie in [100, 400]
    assert rows["timeline_grad_settle"].measured_value == 500.0
    assert rows["timeline_accuracy_400"].measured_value == pytest.approx(55.0)
    assert rows["timeline_accuracy_2000"].measured_value == pytest.approx(79.0)
    assert rows["timeline_signs_500_2000"].measured_value == pytest.approx(9.0)
    assert all(rows[c[0]].verdict == claims.REPRODUCED for c in claims.TIMELINE)


def test_figure1_match_at_16_8_percent_for_k_at_least_500(paper_scale):
    rows = paper_scale[0]
    assert rows["figure1_match_k500"].measured_value == pytest.approx(-0.2)
    assert rows["figure1_match_k500"].verdict == claims.REPRODUCED
    assert rows["figure1_match_k2000"].measured_value == pytest.approx(0.1)
    assert "16.8%" in rows["figure1_match_k2000"].measured
    k0 = rows["figure1_k0_below"]  # rewinding to 0 falls 2 points short: the contrast holds
    assert k0.measured_value == pytest.approx(-2.0) and k0.verdict == claims.REPRODUCED
    assert "figure1_match_k0" not in rows


def test_effective_stds_and_their_mean(paper_scale):
    rows = paper_scale[0]
    for suffix, _, value, _, _ in claims.EFFECTIVE_STD:
        row = rows[f"effective_std_{suffix}"]
        # seeds scale the std by 1.01, 1.02, 1.03: the mean is 1.05 x 1.02 x the paper's value
        assert row.measured_value == pytest.approx(value * 1.05 * 1.02), suffix
        assert row.verdict == claims.REPRODUCED and row.n == 3
    assert rows["effective_mean_zero"].measured_value == pytest.approx(0.01)
    assert rows["effective_mean_zero"].verdict == claims.REPRODUCED


def test_figure8_r_and_p_are_the_figures_own_numbers(paper_scale):
    rows, _, files, _ = paper_scale
    for k in (500, 2000):
        summary = aggregate.read_summary(files["perturb"][k])
        points = plots.effective_std_points(summary, PAPER_VARIANTS, FIG8_LEVEL)
        r, p = stats.pearsonr([q["effective_std"] for q in points], [q["accuracy"] for q in points])
        assert rows[f"figure8_r_k{k}"].measured_value == pytest.approx(r)
        assert rows[f"figure8_p_k{k}"].measured_value == pytest.approx(p)
        assert rows[f"figure8_r_k{k}"].n == len(PAPER_VARIANTS)
        r_paper = claims.FIGURE8[k][0]
        want = claims.REPRODUCED if abs(r - r_paper) <= 0.2 else claims.NOT_REPRODUCED
        assert rows[f"figure8_r_k{k}"].verdict == want
        assert rows[f"figure8_p_k{k}"].verdict == (
            claims.REPRODUCED if p < 0.05 else claims.NOT_REPRODUCED
        )


def test_pretraining_claims_and_disabled_ones_not_run(paper_scale):
    rows = paper_scale[0]
    rot = rows["pretrain_rotation_e40"]
    assert rot.measured_value == pytest.approx(-0.3) and rot.verdict == claims.REPRODUCED
    for cid in (
        "pretrain_blur_e40",
        "pretrain_random_labels",
        "pretrain_blur_rotation",
        "sparse_pretrain_imp_hurts",
        "sparse_pretrain_no_benefit",
    ):
        assert rows[cid].verdict == claims.NOT_RUN, cid
        assert rows[cid].note


def test_a_missing_tolerance_is_not_reproduced(tmp_path):
    """Effective stds twice the paper's and IMP at k = 500 two points below dense fail."""
    runs = Runs(tmp_path)
    rows, _ = claims.build_claims(
        networks=["resnet20"],
        settings=settings(perturb_rewinds=[500]),
        dense={"resnet20": dense_files(runs)},
        imp=imp_summary(runs, drop_at_8={0: -2.0, 500: -2.0, 2000: 0.0}),
        perturb={500: perturb_summary(runs, 500, eff_scale=2.0)},
    )
    rows = {r.id: r for r in rows}
    assert rows["figure1_match_k500"].verdict == claims.NOT_REPRODUCED
    assert rows["effective_std_shuffle_layer"].verdict == claims.NOT_REPRODUCED
    # k = 2000 was not run: its Figure 8 rows use k = 500 and say so
    assert rows["figure8_r_k2000"].verdict == claims.NOT_COMPARABLE
    assert "k = 2000 was not run" in rows["figure8_r_k2000"].note
    assert rows["timeline_grad_min"].verdict == claims.NOT_RUN  # no telemetry given


def test_everything_disabled_is_not_run(tmp_path):
    runs = Runs(tmp_path)
    rows, _ = claims.build_claims(
        networks=["resnet20"],
        settings=settings(variants={}, perturb_rewinds=[]),
        dense={"resnet20": dense_files(runs)},
    )
    by_family = {r.id: r.verdict for r in rows}
    assert by_family["tableA1_resnet20"] == claims.REPRODUCED
    others = [r for r in rows if not r.id.startswith("tableA1_")]
    assert others and all(r.verdict == claims.NOT_RUN and r.note for r in others)
    assert {r.id for r in others} >= {
        "figure1_match_k500+",
        "figure8_r_k500",
        "figure8_p_k2000",
        "effective_std_shuffle_layer",
        "timeline_grad_min",
    }


def test_small_scale_is_not_comparable_and_says_why(tmp_path):
    """The smoke preset's shape: synthetic data, 2 epochs, k in {0, 4}, 2 IMP levels."""
    runs = Runs(tmp_path, hp=SMALL_HP, n_train=512, n_test=128)
    rows, scales = claims.build_claims(
        networks=["resnet8_w4"],
        settings=settings(data_source="synthetic", imp_levels=2, imp_rewinds=[0, 4]),
        dense={"resnet8_w4": [runs.metrics_file("resnet8_w4", s, 9.0) for s in (1, 2)]},
        imp=imp_summary(runs, levels=range(3), rewinds=(0, 4)),
    )
    rows = {r.id: r for r in rows}
    own = rows["tableA1_resnet8_w4"]
    assert own.verdict == claims.NOT_COMPARABLE and own.measured_value == pytest.approx(9.0)
    for text in (
        "synthetic data",
        "512 training images",
        "2 epochs (paper 160)",
        "not a Table A1 network",
    ):
        assert text in own.note
    fig1 = rows["figure1_match_k500+"]  # the largest k instead, at the sparsest level
    assert fig1.verdict == claims.NOT_COMPARABLE and math.isfinite(fig1.measured_value)
    assert "no rewind point k >= 500" in fig1.note and "IMP stops at 64.0%" in fig1.note
    assert "measured on resnet8_w4" in fig1.note and "k = 4" in fig1.description
    assert rows["tableA1_resnet20"].verdict == claims.NOT_RUN
    assert scales["resnet8_w4"].n_train == 512 and "2 seeds" in fig1.scale


def test_a_row_is_judged_from_its_facts_in_one_place():
    """claim.row: not run when told why; else not comparable with gaps (named before the row's
    own note) or without a finite value; else reproduced iff the value is in the interval."""
    facts = dict(
        id="x",
        paper_ref="ref",
        description="what",
        paper="1.5",
        source="where",
        rule="in [1, 2]",
        accept_low=1.0,
        accept_high=2.0,
    )
    scale = claims.Scale(
        network="resnet56",
        seeds=(1, 2),
        data_source="torchvision",
        n_train=50_000,
        n_test=10_000,
        epochs=160,
        iterations=62_560,
        iterations_per_epoch=391,
        batch_size=128,
        lr=0.1,
        milestones=(80, 120),
    )
    off = claim.row(**facts, scale=None, note="ignored", not_run="switched off")
    assert (off.verdict, off.note) == (claims.NOT_RUN, "switched off")
    assert (off.network, off.scale) == ("resnet20", "")  # the paper's network, no scale
    assert off.measured == "-" and math.isnan(off.measured_value) and off.n == 0

    measured = claim.over_seeds([1.4, 1.6])
    inside = claim.row(**facts, scale=scale, levels=8, measured=measured, note="a note")
    assert (inside.verdict, inside.note) == (claims.REPRODUCED, "a note")
    assert inside.network == "resnet56"
    assert inside.scale == claims.scale_label(scale, 8) and "8 IMP levels" in inside.scale
    assert inside.measured == "1.5 ± 0.1 (n = 2)" and inside.measured_value == pytest.approx(1.5)
    assert inside.measured_std == pytest.approx(np.std([1.4, 1.6], ddof=1)) and inside.n == 2

    outside = claim.row(**facts, scale=scale, measured=claim.Measured(2.5, "2.5"))
    assert outside.verdict == claims.NOT_REPRODUCED and outside.note == ""
    for edge in (1.0, 2.0):  # the interval is closed
        assert claim.row(**facts, measured=claim.Measured(edge)).verdict == claims.REPRODUCED

    gapped = claim.row(**facts, measured=claim.Measured(1.5), gaps=["gap 1", "gap 2"], note="n")
    assert gapped.verdict == claims.NOT_COMPARABLE and gapped.note == "gap 1; gap 2; n"
    assert gapped.measured_value == 1.5  # still shown

    unmeasured = claim.row(**facts, scale=scale)
    assert unmeasured.verdict == claims.NOT_COMPARABLE
    assert unmeasured.note == "no finite measurement"


def test_variants_match_by_perturbation_not_by_name():
    variants = {
        "my_layer_shuffle": {"kind": "shuffle", "scope": "layer", "same_sign": False},
        "mine": {"kind": "shuffle_magnitudes_keep_signs"},
    }
    assert claims.find_variant(variants, {"kind": "shuffle", "scope": "layer"}) == (
        "my_layer_shuffle"
    )
    assert claims.find_variant(variants, PAPER_VARIANTS["init_signs_shuffle_layer"]) == "mine"
    assert claims.find_variant(variants, {"kind": "shuffle", "scope": "filter"}) is None


def test_layout_maps_the_rule_inputs():
    layout = [
        ["dense", "resnet20/1"],
        ["dense", "resnet20/2"],
        ["telemetry", "resnet20"],
        ["perturb", 500],
        ["pretrain", "blur"],
        ["sparse", "resnet20"],
    ]
    files = claims.from_layout(layout, ["d1", "d2", "t", "p", "b", "s"])
    assert files == {
        "dense": {"resnet20": ["d1", "d2"]},
        "telemetry": "t",
        "imp": None,
        "perturb": {500: "p"},
        "pretrain": {"blur": "b"},
        "sparse": "s",
        "stability": None,
        "hessian": None,
    }
    with pytest.raises(ValueError, match="unknown claims input"):
        claims.from_layout([["oops", "x"]], ["x"])


def test_outputs_hdf5_tsv_and_html(paper_scale, tmp_path):
    rows_by_id, scales, _, _ = paper_scale
    rows = list(rows_by_id.values())
    out = {"h5": tmp_path / "c.h5", "tsv": tmp_path / "c.tsv", "html_path": tmp_path / "c.html"}
    claims.write_all(rows, scales, settings(), **out)

    back, attrs = claims.read_h5(out["h5"])
    assert attrs["schema"] == claims.SCHEMA and "resnet20: 3 seed(s)" in attrs["scale_text"]
    assert [r["id"] for r in back] == [r.id for r in rows]
    assert [r["verdict"] for r in back] == [r.verdict for r in rows]
    first = back[0]
    assert first["measured_value"] == pytest.approx(rows[0].measured_value)
    assert first["n"] == rows[0].n and first["accept_low"] == pytest.approx(90.5)
    counts = claims.verdict_counts(rows)
    assert sum(counts.values()) == len(rows) and counts[claims.REPRODUCED] > 0

    with open(out["tsv"], newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    assert list(table[0]) == claims.COLUMNS and len(table) == len(rows)
    assert table[0]["id"] == "tableA1_resnet20" and float(table[0]["paper_value"]) == 91.5

    page = out["html_path"].read_text()
    assert page.startswith("<!doctype html>") and "http" not in page  # nothing to fetch
    assert "Scale of this run" in page and "160 epochs = 62,560 iterations" in page
    for r in rows:
        assert f"<td>{r.id}</td>" in page
    for verdict in claims.VERDICT_RULES:
        assert verdict in page
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_read_h5_refuses_another_file(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["schema"] = "something/1"
    with pytest.raises(ValueError, match="earlyphase-claims/1"):
        claims.read_h5(tmp_path / "x.h5")
