"""The cost estimate is counted from the DAG Snakemake itself plans (``cost.dag``: a dry run's job
list), so its job counts are Snakemake's by construction; these tests check the per-job arithmetic
(iterations, images, evaluations, device-hours) on real dry runs of small configs, and the paper's
DAG once (about a minute to plan)."""

from pathlib import Path

import pytest

from pipeline_scripts.tools import cost

ROOT = Path(__file__).resolve().parents[2]

# snakemake -n, default config.yaml: training runs per rule; 15,453 jobs in total (ResNet-20's
# seeds five to a job: runtime.runs_per_job).
PAPER_RULES = {
    "train_dense": 25,
    "train_imp_level": 9100,
    "train_perturbed": 5600,
    "pretrain": 500,
    "train_from_pretrained": 500,
    "sparse_pretext": 525,
    "sparse_train": 875,
    "train_stability_copy": 600,
}
PAPER_MEASUREMENTS = {"interpolate": 300, "hessian": 25}
# snakemake -n --configfile config.yaml config/<preset>.yaml
PRESET_RULES = {
    "laptop": ({"train_dense": 1, "train_imp_level": 12, "train_perturbed": 4, "pretrain": 4,
                "train_from_pretrained": 4, "sparse_pretext": 3, "sparse_train": 5,
                "train_stability_copy": 8}, 72),
    "smoke": ({"train_dense": 2, "train_imp_level": 16, "train_perturbed": 8, "pretrain": 4,
               "train_from_pretrained": 4, "sparse_pretext": 6, "sparse_train": 10,
               "train_stability_copy": 8}, 89),
}  # fmt: skip


def _estimate(*configs, bench=None):
    paths = [ROOT / "config.yaml", *configs]
    return cost.estimate(cost.load_config(paths), cost.dag(paths), bench)


@pytest.fixture(scope="module")
def paper(paper_dag):
    """The paper's protocol costed from its DAG (planned once for the suite: conftest.py)."""
    return cost.estimate(cost.load_config([ROOT / "config.yaml"]), paper_dag)


def test_paper_protocol_job_counts_match_snakemake(paper):
    assert paper["training_jobs_by_rule"] == PAPER_RULES
    assert paper["training_jobs"] == sum(PAPER_RULES.values()) == 17_725
    assert paper["measurement_jobs_by_rule"] == PAPER_MEASUREMENTS
    assert paper["total_jobs"] == 15_453


def test_paper_protocol_iterations(paper):
    fams = paper["families"]
    ipe = 391  # ceil(50,000 / 128)
    per_seed = 160 * (4 * ipe + 782)  # four networks at batch 128, VGG-13 at batch 64
    assert fams["dense"]["iterations"] == 5 * per_seed
    # Rewound to k, a level trains steps k..T (OpenLTH): 5 networks x (T - k) per chain.
    rewinds = (0, 100, 250, 500, 1000, 2000)
    assert fams["imp"]["iterations"] == 5 * 14 * sum(per_seed - 5 * k for k in rewinds)
    # A chain from E epochs of pre-training trains epochs E..160 (level 0 and every level).
    per_seed_after = sum(160 - e for e in (2, 5, 10, 20, 40)) * (4 * ipe + 782)
    assert fams["imp_pretrained"]["iterations"] == 5 * 4 * 14 * per_seed_after
    assert fams["from_pretrained"]["iterations"] == 5 * 4 * per_seed_after
    # Pre-training: 2, 5, 10, 20, 40 epochs; VGG-13 (batch 64) takes 782 steps per epoch.
    per_seed_task = sum((2, 5, 10, 20, 40)) * (4 * ipe + 782)
    assert fams["pretrain"]["iterations"] == 5 * 4 * per_seed_task
    assert fams["sparse_pretext"]["iterations"] == 5 * 3 * 7 * 40 * (4 * ipe + 782)
    assert fams["dense"]["images"] == 25 * 160 * 50_000


@pytest.mark.parametrize("preset", sorted(PRESET_RULES))
def test_preset_job_counts_match_snakemake(preset):
    rules, total = PRESET_RULES[preset]
    est = _estimate(ROOT / f"config/{preset}.yaml")
    assert est["training_jobs_by_rule"] == rules
    assert est["total_jobs"] == total


def test_device_hours_follow_the_formula(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "networks: [resnet20]\nseeds: [1]\ndata: {n_train: 1280, n_test: 100}\n"
        "training: {defaults: {epochs: 2, milestones: []}}\n"
        "imp: {rewind_iterations: [0], levels: 1}\ndense: {checkpoint_iterations: [0]}\n"
        "telemetry: {iterations: 4, points: 4, dense_until: 2}\n"
        "perturb: {run: []}\npretrain: {tasks: [], sparse: {kinds: []}}\n"
        "stability: {rewind_iterations: []}\nhessian: {iterations: []}\n"
    )
    bench = {
        "networks": {
            "resnet20": {
                "network": "resnet20",
                "sparsity": 0.0,
                "ours": {"img_s": 100.0},
                "eval": {"250": {"img_s": 400.0}},
            }
        }
    }
    est = _estimate(cfg, bench=bench)
    assert est["training_jobs_by_rule"] == {"train_dense": 1, "train_imp_level": 1}
    # 20 iterations x 128 images per job; dense evaluates at 0, 10, 20 plus telemetry 1, 2, 4.
    dense = est["families"]["dense"]
    assert dense["iterations"] == 20 and dense["images"] == 2560
    assert dense["eval_images"] == 6 * 100
    assert dense["device_hours"] == pytest.approx((2560 / 100 + 600 / 400) / 3600)
    imp = est["families"]["imp"]
    assert imp["eval_images"] == 3 * 100
    assert est["device_hours"] == pytest.approx((2 * 2560 / 100 + 900 / 400) / 3600)
    text = cost.report(est, "test device")
    assert "test device" in text and "training total" in text


@pytest.mark.parametrize(("schedule", "iterations"), [("framework", 20 - 4), ("restart", 20)])
def test_rewound_jobs_are_costed_from_k(tmp_path, schedule, iterations):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "networks: [resnet20]\nseeds: [1]\ndata: {n_train: 1280, n_test: 100}\n"
        "training: {defaults: {epochs: 2, milestones: []}}\n"
        "imp: {rewind_iterations: [4], levels: 1}\ndense: {checkpoint_iterations: [0, 4]}\n"
        f"rewinding: {{schedule: {schedule}}}\n"
        "perturb: {run: []}\npretrain: {tasks: [], sparse: {kinds: []}}\n"
        "stability: {rewind_iterations: []}\nhessian: {iterations: []}\n"
    )
    imp = _estimate(cfg)["families"]["imp"]
    assert imp["iterations"] == iterations and imp["images"] == iterations * 128


def test_missing_benchmark_is_reported_not_guessed(paper):
    assert paper["device_hours"] is None
    assert "n/a" in cost.report(paper)


def test_beyond_the_paper_jobs_are_costed(tmp_path):
    """Stability copies train k..T like every rewound run; interpolations evaluate points x test
    images; a Hessian job costs points x steps x samples x HVP_STEPS training images."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "networks: [resnet20]\nseeds: [1, 2]\ndata: {n_train: 1280, n_test: 100}\n"
        "training: {defaults: {epochs: 2, milestones: []}}\n"
        "imp: {rewind_iterations: [0, 4], levels: 1}\ndense: {checkpoint_iterations: [0, 4]}\n"
        "telemetry: {iterations: 4, points: 4, dense_until: 2}\n"
        "perturb: {run: []}\npretrain: {tasks: [], sparse: {kinds: []}}\n"
        "stability: {rewind_iterations: [0, 4], sparse_level: 1, points: 7}\n"
        "hessian: {samples: 256, steps: 3}\n"
    )
    est = _estimate(cfg)
    st = est["families"]["stability"]
    assert st["jobs"] == 2 * 2 * 2 * 2  # seeds x k x copies x (dense + sparse)
    assert st["iterations"] == 2 * 2 * 2 * (20 + 16)  # T - k for k = 0, 4
    assert est["measurement_jobs_by_rule"] == {"interpolate": 8, "hessian": 2}
    assert est["families"]["interpolate"]["eval_images"] == 8 * 7 * 100
    assert est["families"]["hessian"]["images"] == 2 * round(2 * 3 * 256 * cost.HVP_STEPS)
    assert est["other_jobs"]["summarise_stability"] == est["other_jobs"]["summarise_hessian"] == 1


def test_grouped_jobs_count_their_runs():
    """A seed-group job (runtime.runs_per_job) is one DAG job of N runs, costed as N runs."""
    listing = """
rule train_imp_level_seeds1_2:
    wildcards: net=resnet20, source=rewind500, level=3
    resources: tmpdir=/tmp

rule train_dense:
    wildcards: net=resnet20, seed=3
localrule all:
    input: x
"""
    dag_jobs = cost.parse_dry_run(listing)
    assert dag_jobs == [
        ("train_imp_level_seeds1_2", {"net": "resnet20", "source": "rewind500", "level": "3"}),
        ("train_dense", {"net": "resnet20", "seed": "3"}),
        ("all", {}),
    ]
    est = cost.estimate(cost.load_config([]), dag_jobs)
    assert est["training_jobs_by_rule"] == {"train_imp_level": 2, "train_dense": 1}
    assert est["total_jobs"] == 3 and est["other_jobs"] == {"all": 1}
    ipe = 391
    assert est["families"]["imp"]["iterations"] == 2 * (160 * ipe - 500)
    # a listing whose job count disagrees with its own Job stats is refused, not costed
    with pytest.raises(ValueError, match="Job stats say \\[4\\]"):
        cost.parse_dry_run(listing + "Job stats:\njob    count\ntotal      4\n")


def test_group_rule_names_give_their_run_counts():
    assert cost._base_rule("train_dense") == ("train_dense", 1)
    assert cost._base_rule("train_imp_level_seeds1_2_3") == ("train_imp_level", 3)
    assert cost._base_rule("train_perturbed_v4g1") == ("train_perturbed", 4)
    assert cost._base_rule("train_perturbed_seeds4_5_v3g0") == ("train_perturbed", 6)


def _h200_estimate(paper_dag, files=None):
    import json

    bench = json.loads((ROOT / "docs/measurements/2026-12-04-h200-gpu-check.json").read_text())
    config = cost.load_config([ROOT / "config.yaml"])
    return cost.estimate(config, paper_dag, bench, {"resnet18": "wrn16_8"}, files)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_the_h200_hours_and_disk_in_the_docs_are_the_estimate(paper_dag, paper_dag_files):
    """docs/cost.md's H200-hours and disk per family and in all (and the README's and
    docs/requirements.md's total disk) are what tools.cost computes from the committed H200
    measurement for config.yaml (ResNet-18 at WRN-16-8's rates, as it says)."""
    import re

    est = _h200_estimate(paper_dag, paper_dag_files)
    text = (ROOT / "docs/cost.md").read_text()
    stated: dict[str, list[float]] = {}  # rule -> [hours, GB] (IMP's two families share a rule)
    row = r"^\| [^|]+ \| `(\w+)` \| [\d,]+ \| [\d,]+ \| ([\d,]+) \| ([\d.]+) \|$"
    for m in re.finditer(row, text, re.M):
        hours_gb = stated.setdefault(m[1], [0.0, 0.0])
        hours_gb[0] += _number(m[2])
        hours_gb[1] += _number(m[3])
    by_rule: dict[str, list[float]] = {}
    for name, f in est["families"].items():
        hours_gb = by_rule.setdefault(f["rule"], [0.0, 0.0])
        hours_gb[0] += f["device_hours"]
        hours_gb[1] += est["disk_bytes"][name] / 1e9
    assert len(stated) == 8  # every training rule
    for rule, (hours, gb) in stated.items():
        assert abs(by_rule[rule][0] - hours) <= 1, rule  # each family's hours rounded
        assert abs(by_rule[rule][1] - gb) <= 0.1, rule  # and its GB
    (total, disk) = re.findall(
        r"^\| \*\*all\*\* \|.*\| \*\*([\d,]+)\*\* \| \*\*([\d,]+)\*\* \|$", text, re.M
    )[0]
    assert int(total.replace(",", "")) == round(est["device_hours"])
    gb = sum(est["disk_bytes"].values()) / 1e9
    assert int(disk) == round(gb)
    for page in ("README.md", "docs/requirements.md"):
        stated_gb = re.findall(
            r"(\d+) GB (?:of|for) (?:results|the paper)", (ROOT / page).read_text()
        )
        assert stated_gb and all(int(s) == round(gb) for s in stated_gb), (page, stated_gb)
    assert est["assumed"] == {"resnet18": "wrn16_8"}


def test_the_readme_table_a1_row_is_paper_py_and_the_estimate(paper_dag):
    """The README's Table A1 accuracies are paper.TABLE_A1's, and the H200-hours beside them are
    each network's five dense runs at the committed rates."""
    import re

    from pipeline_scripts.earlyphase.paper import TABLE_A1

    readme = (ROOT / "README.md").read_text()
    (nets,) = re.findall(r"^\| network \|((?: `\w+` \|)+)$", readme, re.M)
    nets = re.findall(r"`(\w+)`", nets)
    (acc,) = re.findall(r"^\| Table A1 accuracy \|(.*)\|$", readme, re.M)
    (hours,) = re.findall(r"^\| `make table_a1 NET=… PROFILE=slurm` \|(.*)\|$", readme, re.M)
    assert nets == list(TABLE_A1)
    for net, cell in zip(nets, acc.split("|"), strict=True):
        assert cell.strip() == f"{TABLE_A1[net][0]} ± {TABLE_A1[net][1]} %", net
    import json

    bench = json.loads((ROOT / "docs/measurements/2026-12-04-h200-gpu-check.json").read_text())
    config = cost.load_config([ROOT / "config.yaml"])
    rates, _ = cost.rates_for(config, bench, {"resnet18": "wrn16_8"})
    dense = {n: 0.0 for n in nets}
    for (rule, w), run in zip(paper_dag, cost.per_job(config, paper_dag), strict=True):
        if rule == "train_dense":
            dense[w["net"]] += cost.seconds(run, rates) / 3600
    for net, cell in zip(nets, hours.split("|"), strict=True):
        assert cell.strip() == f"{dense[net]:.1f} h", net
