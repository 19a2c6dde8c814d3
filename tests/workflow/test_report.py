"""`snakemake --report` on the smoke preset: one self-contained HTML file with every figure and its
caption, the configuration, the run statistics and the claims table."""

import base64
import html
import json
import re

import pytest

# tests/workflow is on sys.path (pytest's rootdir-relative import)
from test_workflow import smk

from pipeline_scripts.earlyphase import claims

NET = "resnet8_w4"
# report item -> text its caption must contain (the paper figure(s) it reproduces)
CAPTIONS = {
    f"results/figures/figure1/{NET}.png": ["<strong>Figure 1</strong>", "<strong>Figure A2</strong>"],
    f"results/figures/figure3/{NET}.png": ["<strong>Figure 3</strong>", "Figure 2"],
    "results/figures/figureA3.png": ["<strong>Figure A3</strong>"],
    **{
        f"results/figures/figure{n}/{NET}.png": [f"<strong>Figure {n}</strong>", f"<strong>Figure A{n}</strong>"]
        for n in (4, 5, 6, 7)
    },
    f"results/figures/figure8/{NET}.png": ["<strong>Figure 8</strong>", "r = -0.672"],
    f"results/figures/figure9/{NET}.png": ["<strong>Figure 9</strong>", "Figures A9-A12"],
    f"results/figures/figure10/{NET}.png": ["<strong>Figure 10</strong>"],
    "results/claims/claims.html": ["Claims table", "not comparable at this scale"],
    f"results/figures/instability/{NET}.png": ["Beyond the paper", "<strong>error barrier</strong>"],
    f"results/figures/sharpness/{NET}.png": ["Beyond the paper", "Hessian", "Gur-Ari"],
}  # fmt: skip


def _js_value(page: str, name: str):
    """The JSON assigned to `var <name> = ...;` in one of the report's <script> blocks."""
    m = re.search(rf"<script id=\"[\w-]+\">\s*var {name} = (.*?);\s*</script>", page, re.S)
    assert m, f"no {name} in the report"
    return json.loads(m[1])


@pytest.fixture(scope="module")
def smoke_report(smoke_run, tmp_path_factory):
    """The report of conftest's session-wide smoke run (left untouched: the report goes
    elsewhere)."""
    out, _ = smoke_run
    report = tmp_path_factory.mktemp("report") / "report.html"
    smk("--profile", "profiles/smoke", "--directory", str(out), "--report", str(report))
    return out, report.read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(smoke_report):
    _, page = smoke_report
    assert len(page) > 500_000  # the figures are embedded
    assert not re.search(r"<script[^>]*\bsrc=", page), "a script is fetched from elsewhere"
    assert not re.search(r"<link[^>]*\bhref=", page), "a stylesheet is fetched from elsewhere"
    assert not re.search(r"<img[^>]*\bsrc=[\"']?https?:", page)
    for path, item in _js_value(page, "results").items():
        assert item["data_uri"].startswith("data:"), path


def test_report_has_every_figure_with_its_caption(smoke_report):
    _, page = smoke_report
    results = _js_value(page, "results")
    assert set(results) == set(CAPTIONS)
    for path, needles in CAPTIONS.items():
        caption = results[path]["caption"]
        assert "{{" not in caption and "{%" not in caption, path  # Jinja rendered
        for needle in needles:
            assert needle in caption, (path, needle)
        if NET in path:
            assert NET in caption and results[path]["labels"]["network"] == NET
    assert results[f"results/figures/figure8/{NET}.png"]["labels"]["figure"] == "Figure 8"
    categories = _js_value(page, "categories")
    assert "Claims table" in categories and "Figure 1 / A2: IMP with rewinding" in categories


def test_report_states_the_config_and_run_statistics(smoke_report):
    _, page = smoke_report
    desc = html.unescape(_js_value(page, "workflow_desc"))
    # the session's smoke run was made with an image folder: a scaled-down run, not generated data
    assert (
        "Preset: a scaled-down run" in desc and "The Early Phase of Neural Network Training" in desc
    )
    assert "training images: all" in desc  # the image folder's, then the whole config
    assert '"networks": [\n' in desc and f'"{NET}"' in desc and '"n_train": 512' in desc
    runtimes = json.dumps(_js_value(page, "runtimes_spec"))
    for rule in ("train_dense", "train_imp_level", "claims"):
        assert rule in runtimes


def test_claims_outputs_and_their_table_in_the_report(smoke_report):
    out, page = smoke_report
    res = out / "results" / "claims"
    rows, attrs = claims.read_h5(res / "claims.h5")
    assert f"{NET}: 2 seed(s) (1, 2)" in attrs["scale_text"]
    tsv = (res / "claims.tsv").read_text().splitlines()
    assert len(tsv) == len(rows) + 1 and tsv[0].split("\t") == claims.COLUMNS
    verdicts = {r["id"]: r["verdict"] for r in rows}
    # the smoke preset runs every experiment at toy scale: nothing is "not run" but the networks
    # and pre-training tasks it does not train, and nothing is comparable to the paper
    assert verdicts[f"tableA1_{NET}"] == claims.NOT_COMPARABLE
    assert verdicts["tableA1_resnet20"] == claims.NOT_RUN
    assert claims.REPRODUCED not in verdicts.values()
    for cid in (
        "figure1_match_k500+",
        "figure8_r_k500",
        "figure8_p_k2000",
        "timeline_grad_min",
        "effective_std_shuffle_layer",
        "pretrain_blur_rotation",
        "sparse_pretrain_imp_hurts",
    ):
        assert verdicts[cid] == claims.NOT_COMPARABLE, cid
    assert verdicts["pretrain_rotation_e40"] == claims.NOT_RUN  # rotation is no smoke task

    item = _js_value(page, "results")["results/claims/claims.html"]
    embedded = base64.b64decode(item["data_uri"].split("base64,", 1)[1]).decode()
    assert embedded == (res / "claims.html").read_text()
    assert '<table id="claims">' in embedded and "Scale of this run" in embedded
    for cid in verdicts:
        assert f"<td>{cid}</td>" in embedded


def test_the_report_names_the_data_the_run_was_made_with(smoke_report, smoke_data):
    """The session's run was made with `--config data=<image folder>`; the report command,
    as the README writes it (no data choice), describes that data, not the preset's."""
    _, page = smoke_report
    text = html.unescape(page)
    words = re.sub(r"<[^>]+>", "", text)  # the path is set as a literal (<tt>...</tt>)
    said = re.findall(r"Data: [^,]*", words)
    assert f"Data: imagefolder ({smoke_data})" in said, said or words[-3000:]
    assert '"source": "imagefolder"' in text and "Data: synthetic" not in text


def test_a_command_naming_other_data_is_refused(smoke_run):
    out, _ = smoke_run
    proc = smk(
        "--profile", "profiles/smoke", "--directory", str(out), "-n",
        "--config", 'data={"source": "synthetic"}', check=False,
    )  # fmt: skip
    text = proc.stdout + proc.stderr  # Snakemake prints a workflow's error on stdout
    assert proc.returncode != 0
    assert "config key data.source" in text and "was made with data imagefolder" in text
    assert "--directory runs/<new name>" in text


def test_the_make_targets_after_a_run(smoke_run, tmp_path):
    """`make plan`, `make report` and `make dag` on a finished run (PROFILE/DIR select it), with
    no data choice: nothing to do, a report of the run's data, the job graph."""
    import subprocess
    import sys
    from pathlib import Path

    from test_incremental import copy_run

    out = copy_run(smoke_run[0], tmp_path / "run")  # report.html and dag.* land in the run
    root = Path(__file__).resolve().parents[2]
    make = ["make", "-o", ".venv/.installed-stamp", f"BIN={Path(sys.executable).parent}"]
    args = ["PROFILE=smoke", f"DIR={out}"]

    def run(target):
        proc = subprocess.run([*make, target, *args], cwd=root, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    plan = run("plan")
    assert "Nothing to be done" in plan, plan[-4000:]  # (the jobs and their reasons)
    assert f"report: {out}/report.html" in run("report")
    assert "Data: imagefolder" in html.unescape((out / "report.html").read_text())
    run("dag")
    assert (out / "dag.dot").read_text().startswith("digraph")
