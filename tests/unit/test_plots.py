"""Figures from summary files (earlyphase.plots): files appear, in the right format."""

import types

import numpy as np
import pytest

from pipeline_scripts.earlyphase import aggregate, metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVELS = range(0, 15, 2)  # Figure 1's x axis: 100.0 ... 4.4 % of weights remaining


def write_metrics(path, accuracy: float, seed: int, level: int, remaining: float) -> str:
    m = types.SimpleNamespace(  # the fields of train.Metrics that write_run reads
        train_iteration=[1],
        train_loss=[1.0],
        eval_iteration=[1],
        eval_loss=[1.0],
        eval_accuracy=[accuracy],
        eval_wall_seconds=[1.0],
        train_seconds=1.0,
        eval_seconds=0.1,
        images=128,
    )
    metrics.write_run(
        path,
        m,
        {
            "network": "resnet20",
            "seed": seed,
            "level": level,
            "weights_remaining_fraction": remaining,
        },
    )
    return str(path)


def make_summary(tmp_path, seeds, rewinds=(0, 100, 500, 2000)) -> str:
    """Dense reference plus IMP curves that drop with sparsity, less for later rewinding."""
    rng = np.random.default_rng(0)
    entries = []

    def add(series, level, seed, acc):
        path = tmp_path / "runs" / series / f"level{level}_seed{seed}.h5"
        remaining = 0.8**level
        write_metrics(path, acc + rng.normal(0, 0.002), seed, level, remaining)
        entries.append({"series": series, "level": level, "seed": seed, "path": str(path)})

    for seed in seeds:
        add("dense", 0, seed, 0.915)
        for k in rewinds:
            drop = 0.0006 * (1 + 4 / (1 + k / 100))
            for level in LEVELS:
                add(f"rewind{k}", level, seed, 0.915 - drop * level**1.6)
    out = tmp_path / "summary.h5"
    aggregate.summarise(entries, out, attrs={"network": "resnet20"})
    return str(out)


def assert_figures(paths):
    for path in paths:
        data = open(path, "rb").read()
        assert len(data) > 1000, path
        if path.endswith(".png"):
            assert data.startswith(PNG_SIGNATURE)
        else:
            assert data.startswith(b"%PDF")


def test_generic_figure_writes_pdf_and_png(tmp_path):
    summary = make_summary(tmp_path, seeds=[1, 2, 3])
    outs = [str(tmp_path / "fig" / "acc.pdf"), str(tmp_path / "fig" / "acc.png")]
    plots.figure_accuracy_vs_sparsity(
        summary, outs, series=["rewind500", "rewind0"], labels={"rewind0": "k = 0"}, title="test"
    )
    assert_figures(outs)


def test_figure1_with_one_seed(tmp_path):
    summary = make_summary(tmp_path, seeds=[4])
    assert aggregate.read_summary(summary)["rewind0"]["std"].tolist() == [0.0] * len(LEVELS)
    outs = [str(tmp_path / "figure1.png"), str(tmp_path / "figure1.pdf")]
    plots.figure1(summary, outs, "resnet20")
    assert_figures(outs)


def test_panel_axis_follows_the_paper(tmp_path):
    summary = aggregate.read_summary(make_summary(tmp_path, seeds=[1, 2]))
    fig, axes = plots.new_figure(1, 2)
    for ax, k in zip(axes[0], ["rewind0", "rewind2000"], strict=True):
        plots.draw_accuracy_vs_sparsity(ax, summary, series=[k])
    ax = axes[0, 0]
    assert ax.get_xscale() == "log"
    left, right = ax.get_xlim()
    assert left > right  # 100 % on the left
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["100.0", "64.0", "41.0", "26.2", "16.8", "10.7", "6.9", "4.4"]
    assert ax.get_ylabel() == "Test accuracy (%)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["rewind0", "dense"]


def test_unknown_series_and_suffix_are_errors(tmp_path):
    summary = make_summary(tmp_path, seeds=[1], rewinds=(0,))
    with pytest.raises(ValueError, match="rewind7"):
        plots.figure_accuracy_vs_sparsity(summary, [], series=["rewind7"])
    with pytest.raises(ValueError, match="pdf or .png"):
        plots.figure_accuracy_vs_sparsity(summary, [str(tmp_path / "f.svg")])


def test_helpers():
    assert plots.network_display_name("resnet20") == "ResNet-20"
    assert plots.network_display_name("wrn16_8") == "WRN-16-8"
    assert plots.network_display_name("vgg13") == "VGG-13"
    assert plots.network_display_name("mystery") == "mystery"
    colors = plots.series_colors(["a", "b", "c"])
    assert len(set(colors.values())) == 3
    assert plots.series_colors(["a", "b"])["a"] == colors["a"]
