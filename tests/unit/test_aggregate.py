"""Summary files from metrics files (earlyphase.aggregate): numbers checked by hand."""

import types

import h5py
import numpy as np
import pytest

from pipeline_scripts.earlyphase import aggregate, metrics


def make_metrics(final_accuracy: float):
    """A train.Metrics-shaped record whose last evaluation has ``final_accuracy``."""
    fields = dict(
        train_iteration=[10],
        train_loss=[2.0],
        eval_iteration=[0, 10],
        eval_loss=[2.3, 1.0],
        eval_accuracy=[0.1, final_accuracy],
        eval_wall_seconds=[0.0, 1.0],
        train_seconds=1.0,
        eval_seconds=0.1,
        images=1280,
    )
    try:
        from pipeline_scripts.earlyphase.train import Metrics
    except ImportError:  # train.py needs data.py, which may not exist yet
        return types.SimpleNamespace(**fields)
    return Metrics(**fields)


def write_metrics(path, *, accuracy: float, seed: int, level: int, remaining: float = 1.0):
    metrics.write_run(
        path,
        make_metrics(accuracy),
        {
            "network": "resnet20",
            "seed": seed,
            "level": level,
            "weights_remaining_fraction": remaining,
        },
        sparsity={"conv.weight": (1000, round(1000 * remaining))} if level else None,
    )
    return str(path)


# accuracy fractions: (series, level) -> {seed: acc}
ACC = {
    ("rewind0", 0): {1: 0.90, 2: 0.91, 3: 0.92},
    ("rewind0", 2): {1: 0.88, 2: 0.86, 3: 0.87},
    ("rewind500", 0): {1: 0.90, 2: 0.91, 3: 0.92},
    ("rewind500", 2): {1: 0.915, 2: 0.905},  # seed 3 missing
}


@pytest.fixture
def entries(tmp_path):
    out = []
    for (series, level), by_seed in ACC.items():
        for seed, acc in by_seed.items():
            path = tmp_path / series / f"level{level}" / f"seed{seed}.h5"
            write_metrics(path, accuracy=acc, seed=seed, level=level, remaining=0.8**level)
            out.append({"series": series, "level": level, "seed": seed, "path": str(path)})
    return out


def test_means_and_stds_match_hand_computation(entries, tmp_path):
    out = tmp_path / "summary.h5"
    aggregate.summarise(entries, out, attrs={"network": "resnet20", "experiment": {"k": [0, 500]}})
    s = aggregate.read_summary(out)

    assert aggregate.series_names(s) == ["rewind0", "rewind500"]
    assert s["_attrs"]["schema"] == aggregate.SCHEMA
    assert s["_attrs"]["network"] == "resnet20"
    assert list(s["_attrs"]["seeds"]) == [1, 2, 3]

    r0 = s["rewind0"]
    assert r0["level"].dtype == np.int64 and list(r0["level"]) == [0, 2]
    np.testing.assert_allclose(r0["remaining_percent"], [100.0, 64.0])
    np.testing.assert_allclose(r0["accuracy"], [[90, 91, 92], [88, 86, 87]])
    np.testing.assert_allclose(r0["mean"], [91.0, 87.0])
    # Sample std of (90, 91, 92) and (88, 86, 87): sqrt(((-1)^2 + 0 + 1^2) / 2) = 1.
    np.testing.assert_allclose(r0["std"], [1.0, 1.0])
    assert list(r0["n"]) == [3, 3]


def test_missing_seed_is_nan_and_counted(entries, tmp_path):
    out = tmp_path / "summary.h5"
    aggregate.summarise(entries, out)
    r = aggregate.read_summary(out)["rewind500"]
    acc = r["accuracy"][1]
    np.testing.assert_allclose(acc[:2], [91.5, 90.5])
    assert np.isnan(acc[2])
    assert list(r["n"]) == [3, 2]
    np.testing.assert_allclose(r["mean"][1], 91.0)
    np.testing.assert_allclose(r["std"][1], np.sqrt(0.5**2 * 2 / 1))  # ddof=1 over two seeds
    assert r["paths"][1, 2] == ""
    assert r["paths"][1, 0].endswith("rewind500/level2/seed1.h5")
    assert r["paths"].shape == (2, 3)


def test_one_seed_has_zero_std(tmp_path):
    path = write_metrics(tmp_path / "m.h5", accuracy=0.9, seed=7, level=0)
    aggregate.summarise(
        [{"series": "dense", "level": 0, "seed": 7, "path": path}], tmp_path / "s.h5"
    )
    d = aggregate.read_summary(tmp_path / "s.h5")["dense"]
    assert d["std"][0] == 0.0 and d["n"][0] == 1 and d["mean"][0] == pytest.approx(90.0)


def test_duplicate_raises_naming_both_paths(entries, tmp_path):
    dup = dict(entries[0], path=str(tmp_path / "other.h5"))
    with pytest.raises(ValueError, match="given twice") as err:
        aggregate.summarise(entries + [dup], tmp_path / "s.h5")
    assert entries[0]["path"] in str(err.value) and dup["path"] in str(err.value)
    assert not (tmp_path / "s.h5").exists()


def test_non_metrics_file_raises_naming_it(tmp_path):
    other = tmp_path / "not_metrics.h5"
    with h5py.File(other, "w") as f:
        f.attrs["schema"] = "something-else"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for bad in (other, text, tmp_path / "absent.h5"):
        entry = {"series": "dense", "level": 0, "seed": 1, "path": str(bad)}
        with pytest.raises(ValueError, match=str(bad)):
            aggregate.summarise([entry], tmp_path / "s.h5")
    assert not (tmp_path / "s.h5").exists()
    assert not list(tmp_path.glob(".s.h5.*"))  # no temp file left behind


@pytest.mark.parametrize("name", ["a/b", "", "_attrs"])
def test_bad_series_name_rejected(tmp_path, name):
    path = write_metrics(tmp_path / "m.h5", accuracy=0.9, seed=1, level=0)
    with pytest.raises(ValueError, match="series name"):
        aggregate.summarise(
            [{"series": name, "level": 0, "seed": 1, "path": path}], tmp_path / "s.h5"
        )


def test_read_summary_rejects_other_files(tmp_path):
    path = write_metrics(tmp_path / "m.h5", accuracy=0.9, seed=1, level=0)
    with pytest.raises(ValueError, match="earlyphase-summary"):
        aggregate.read_summary(path)


def test_series_keep_the_order_of_the_entries(tmp_path):
    entries = []
    for i, name in enumerate(["rewind500", "dense", "alpha"]):
        path = write_metrics(tmp_path / f"{i}.h5", accuracy=0.5, seed=1, level=0)
        entries.append({"series": name, "level": 0, "seed": 1, "path": path})
    aggregate.summarise(entries, tmp_path / "s.h5")
    names = aggregate.series_names(aggregate.read_summary(tmp_path / "s.h5"))
    assert names == ["rewind500", "dense", "alpha"]


# ---- identity: each file must be the run it is read for ------------------------------------------
def _chain(root, seed, level, *, network="resnet20", k=0, accuracy=0.9):
    path = root / "results" / network / f"seed{seed}" / "imp" / f"rewind{k}" / f"level{level}"
    metrics.write_run(
        path / "metrics.h5",
        make_metrics(accuracy),
        {
            "network": network,
            "seed": seed,
            "level": level,
            "weights_remaining_fraction": 0.8**level,
            "experiment": "imp",
            "series": f"rewind{k}",
            "rewind_iteration": k,
        },
    )
    return str(path / "metrics.h5")


def _entries(paths_by_key):
    from pipeline_scripts.earlyphase import identity

    return [
        {
            "series": "rewind0",
            "level": level,
            "seed": seed,
            "path": p,
            "expect": {"network": "resnet20", **identity.from_path(p)},
        }
        for (level, seed), p in paths_by_key.items()
    ]


def test_a_metrics_file_copied_over_another_runs_is_refused_naming_both(tmp_path):
    """The issue's reproduction: seed 2's level-2 metrics.h5 copied over seed 1's; before, the
    summary took it as seed 1's run (exit 0)."""
    import shutil

    paths = {
        (lv, s): _chain(tmp_path, s, lv, accuracy=0.8 + s / 100) for lv in (1, 2) for s in (1, 2)
    }
    aggregate.summarise(_entries(paths), tmp_path / "ok.h5")  # the honest files pass
    shutil.copy(paths[(2, 2)], paths[(2, 1)])
    with pytest.raises(ValueError) as err:
        aggregate.summarise(_entries(paths), tmp_path / "bad.h5")
    message = str(err.value)
    assert paths[(2, 1)] in message and "seed 2 (expected 1)" in message
    assert "level 2 seed 1" in message and not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize(
    "source, wrong",
    [
        (dict(level=1), "level 1 (expected 2)"),
        (dict(network="vgg13"), "network 'vgg13' (expected 'resnet20')"),
        (dict(k=500), "series 'rewind500' (expected 'rewind0')"),
    ],
)
def test_a_file_of_another_level_network_or_chain_is_refused(tmp_path, source, wrong):
    import shutil

    other = _chain(tmp_path / "other", seed=1, **{"level": 2, **source})
    target = _chain(tmp_path, 1, 2)
    shutil.copy(other, target)
    with pytest.raises(ValueError, match="records") as err:
        aggregate.summarise(_entries({(2, 1): target}), tmp_path / "s.h5")
    assert wrong in str(err.value) and target in str(err.value)
