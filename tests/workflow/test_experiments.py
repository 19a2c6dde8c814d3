"""One command per experiment: the Snakefile's target rules (rules/targets.smk: EXPERIMENTS)
plan only the networks and seeds asked for, on every profile; a target the config leaves out
fails naming its key; `make <experiment>` prints the cost of exactly the command it then runs."""

import re
import shlex
import subprocess

import pytest
from test_workflow import ROOT, smk

from pipeline_scripts.tools import cost

STAMP = ".venv/.installed-stamp"
PAPER_ONLY = {"figure4", "figure5", "figure6", "figure7", "figure8", "figure9", "figure10",
              "instability", "sharpness"}  # fmt: skip
ALWAYS = ["table_a1", "figure1", "figure2", "figure3", "claims"]
# profile -> (a network and a seed other than the profile's first ones, its experiments)
PROFILES = {
    "smoke": ("resnet20", 2, ALWAYS + sorted(PAPER_ONLY)),
    "laptop": ("resnet56", 2, ALWAYS + sorted(PAPER_ONLY)),
    "timeline": ("vgg13", 3, ALWAYS),  # config/timeline.yaml runs no perturbation, ...
    "slurm": ("vgg13", 4, ALWAYS + sorted(PAPER_ONLY)),
    "local": ("wrn16_8", 5, ALWAYS + sorted(PAPER_ONLY)),
}


def make_experiments() -> list[str]:
    """The Makefile's EXPERIMENTS, as make expands it (its database; nothing run)."""
    proc = subprocess.run(["make", "--no-print-directory", "-pRrq", ":"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    (line,) = re.findall(r"^EXPERIMENTS := (.*)$", proc.stdout, re.M)
    return line.split()


def test_every_experiment_has_a_target_rule_and_a_make_target():
    snakefile = (ROOT / "Snakefile").read_text()
    targets = (ROOT / "rules/targets.smk").read_text()
    names = re.findall(r'^    "(\w+)": \(', targets, re.M) + ["figure4", "figure5", "figure6",
                                                              "figure7", "figure8"]  # fmt: skip
    assert set(names) == set(ALWAYS) | PAPER_ONLY
    targets_ = dict(re.findall(r'^rule (\w+):\n    input:\n        experiment\("(\w+)"\)', snakefile,
                               re.M))  # fmt: skip
    assert all(rule == name for rule, name in targets_.items())
    assert set(targets_) | {"claims"} == set(names)  # claims: the table's own rule (report.smk)
    assert set(make_experiments()) == set(names)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_experiments_plan_only_the_networks_and_seeds_asked_for(profile, tmp_path):
    net, seed, experiments = PROFILES[profile]
    proc = smk(*experiments, "-n", "--profile", f"profiles/{profile}", "--directory", str(tmp_path),
               "--config", f"networks=[{net}]", f"seeds=[{seed}]")  # fmt: skip
    jobs = cost.parse_dry_run(proc.stdout)
    files = cost.parse_dry_run_files(proc.stdout)
    assert {rule for rule, _ in jobs} >= set(experiments) | {"train_dense"}
    assert {w["net"] for _, w in jobs if "net" in w} == {net}
    outputs = [p for f in files for p in f["output"]]
    assert {int(s) for p in outputs for s in re.findall(r"/seed(\d+)/", p)} == {seed}
    assert all(f"/{net}/" in p or "/figures/" in p or p.startswith(("results/data/",
               "results/claims/")) for p in outputs)  # fmt: skip
    assert f"results/{net}/seed{seed}/dense/metrics.h5" in outputs


def test_an_experiment_the_config_leaves_out_fails_naming_its_key(tmp_path):
    proc = smk("figure9", "-n", "--profile", "profiles/timeline", "--directory", str(tmp_path),
               check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "target figure9: this config runs none of it (pretrain.tasks is empty)" in (
        proc.stdout + proc.stderr
    )


def _make_n(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-n", "-o", STAMP, *args], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip


def test_make_experiment_costs_the_command_it_runs():
    proc = _make_n("figure1", "NET=resnet20,vgg13", "SEEDS=3", "PROFILE=slurm")
    assert proc.returncode == 0, proc.stderr
    cost_line, run_line = [shlex.split(ln) for ln in proc.stdout.splitlines()]
    assert cost_line[1:4] == ["-m", "pipeline_scripts.tools.cost", "--bench"]
    assert "--save-plan" in cost_line
    run = run_line[1:]
    assert run == ["figure1", "--profile", "profiles/slurm", "--config",
                   "networks=[resnet20,vgg13]", "seeds=[1,2,3]"]  # fmt: skip
    assert cost_line[-len(run) :] == run  # the cost of exactly that command
    only_cost = _make_n("figure1", "PROFILE=slurm", "COST=1").stdout.splitlines()
    assert len(only_cost) == 1 and "tools.cost" in only_cost[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["figure1", "SEEDS=two"], "SEEDS=two: give a number of seeds"),
        (["figure1", "PROFILE=paper"], "PROFILE=paper: no profiles/paper/; the profiles are"),
        (["report", "PRESET=slurm"], "PRESET= is now PROFILE="),
    ],
)
def test_make_refuses_bad_settings_naming_them(args, message):
    proc = _make_n(*args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_make_uses_the_profiles_run_directory():
    """`make status|report|dag` read the directory the profile writes (its `directory:`)."""
    for profile in sorted(p.name for p in (ROOT / "profiles").iterdir()):
        text = (ROOT / "profiles" / profile / "config.yaml").read_text()
        (directory,) = re.findall(r"^directory: *(\S+)", text, re.M)
        proc = _make_n("status", f"PROFILE={profile}")
        assert proc.stdout.split()[-1] == directory, (profile, proc.stdout)


def test_cost_takes_a_snakemake_command(tmp_path, capsys):
    """tools.cost reads targets, --profile, --configfile and --config as snakemake does, and
    --config FILE (its old spelling) is refused with the new one."""
    args = ["figure2", "--profile", "profiles/smoke", "--config", "networks=[resnet20]",
            "seeds=[2]", "--directory", str(tmp_path), "--save-plan"]  # fmt: skip
    assert cost.main(args) == 0
    text = capsys.readouterr().out
    (jobs,) = re.findall(r"^this command: (\d+) jobs", text, re.M)
    # data, one dense run, its telemetry distances, the seeds' summary, the target
    assert int(jobs) == 5
    # one plan per command: another network's or seed's plan of the same figure is kept beside it
    assert "plan saved" in text
    assert (tmp_path / "plans" / "figure2+networks_resnet20_+seeds_2_.json").is_file()
    with pytest.raises(SystemExit, match="a config file is --configfile FILE"):
        cost.main(["--config", "config.yaml"])
    with pytest.raises(SystemExit, match="no profiles/paper/config.yaml"):
        cost.main(["--profile", "profiles/paper"])


def test_the_readme_quick_path_costs_what_it_states(capsys):
    """The README's figures for `make figure1 NET=resnet20 [SEEDS=2 PROFILE=slurm]`: what
    tools.cost (docs/cost.md's command, the make target's) prints for them."""
    h200 = ["--bench", "docs/measurements/2026-12-04-h200-gpu-check.json",
            "--assume", "resnet18=wrn16_8"]  # fmt: skip
    quick = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    for args, pattern in [
        (["figure1", "--profile", "profiles/laptop", "--config", "networks=[resnet20]"],
         r"Figure 1 for ResNet-20 is (\d+) jobs"),
        (["figure1", "--profile", "profiles/slurm", "--config", "networks=[resnet20]",
          "seeds=[1,2]"],
         r"At paper scale the same figure for 2 seeds is (\d+) jobs: ([\d.]+) H200-hours and "
         r"([\d.]+) GB"),
    ]:  # fmt: skip
        assert cost.main([*args, *h200]) == 0
        (line,) = re.findall(r"^this command: .*$", capsys.readouterr().out, re.M)
        jobs, hours, gb = re.fullmatch(
            r"this command: (\d+) jobs, ([\d.]+) .*-hours, ([\d.]+) GB of results", line
        ).groups()
        (stated,) = re.findall(pattern, quick)
        stated = (stated,) if isinstance(stated, str) else stated
        assert stated == (jobs, hours, gb)[: len(stated)], (stated, line)
