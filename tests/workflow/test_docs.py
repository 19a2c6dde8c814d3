"""The documentation, tested: README.md and docs/*.md.

* Every shell command in their ```bash blocks is run (cheap ones), planned with `snakemake -n` in
  a scratch directory (workflow commands), run by tests/workflow/test_recipes.py (docs/extending.md)
  or listed in NOT_RUN with the reason it is not run here. A command in none of these classes fails
  `test_every_command_is_classified`, so a new command in the docs must be classified.
* The README fits 250 lines; every relative link and #anchor resolves; the repository's text
  carries no development history.
* The figures a test can check cheaply are the ones the code computes: the paper DAG's job and
  training-run counts, the presets' job counts, the five networks' parameter counts, the telemetry
  snapshots' disk cost, the kept weights per level, the heavy-ball bound.
"""

import math
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_experiments import make_experiments
from test_recipes import fenced_blocks
from test_workflow import ROOT, job_counts, smk

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
STAMP = ".venv/.installed-stamp"  # the Makefile's install stamp: never remade by these tests


@dataclass
class Command:
    doc: str  # e.g. "README.md:42"
    text: str  # the command as written (continuations joined, comment dropped)
    env: dict = field(default_factory=dict)  # `export`s above it in its block, and VAR= prefixes
    argv: list = field(default_factory=list)  # its first simple command, without VAR= prefixes
    rest: list = field(default_factory=list)  # later pipeline stages: [argv, ...]


def _tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def doc_commands(path: Path) -> list[Command]:
    """Every command of a page's ```bash blocks; `a && b` and `a; b` are two commands."""
    out = []
    for block in fenced_blocks(path.read_text()):
        if block.info != "bash":
            continue
        env, lines, pending = {}, [], None  # (first line number, text) of each logical line
        for offset, raw in enumerate(block.text.splitlines()):
            number, text = pending or (block.line + 1 + offset, "")
            text += raw[:-1] + " " if raw.endswith("\\") else raw
            pending = (number, text) if raw.endswith("\\") else None
            if pending is None:
                lines.append((number, text))
        for number, line in lines:
            tokens = _tokens(line)
            for simple in _split(tokens, {"&&", ";"}):
                stages = _split(simple, {"|"})
                first, prefix = stages[0], {}
                while first and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", first[0]):
                    key, value = first.pop(0).split("=", 1)
                    prefix[key] = value
                if first[:1] == ["export"]:
                    env.update(dict(item.split("=", 1) for item in first[1:]))
                    continue
                where = f"{path.relative_to(ROOT)}:{number}"
                text = " ".join(shlex.quote(t) if t not in "|>" else t for t in simple)
                out.append(Command(where, text, {**env, **prefix}, first, stages[1:]))
    return out


def _split(tokens, separators):
    parts = [[]]
    for t in tokens:
        if t in separators:
            parts.append([])
        else:
            parts[-1].append(t)
    return [p for p in parts if p]


ALL_COMMANDS = [c for doc in DOCS for c in doc_commands(doc)]

# ---- how each command is treated ------------------------------------------------------------
# Not run here, and why: (pattern matched against the command as written, reason).
NOT_RUN = [
    (r"^make test$", "the whole test suite, this test among it"),
    (r"^make test-avx2$", "the training tests again under the AVX2 cap: part of CI (.ci/run)"),
    (r"^make lint$", "the linters over the whole repository: part of CI (.ci/run)"),
    (r"^make report$", "needs a finished run; tests/workflow/test_report.py makes and checks one"),
    (
        r"^make status ",
        "reads a run's files; tests/workflow/test_run_status.py and test_killed_run.py run the tool on "
        "the smoke run, completed, live and killed",
    ),
    (r"^bash tests/slurm/cluster\.sh start$", "installs and starts SLURM (root, Debian)"),
    (r"pipeline_scripts\.tools\.gpu (check|sizes|all|efficiency) --out-dir", "needs a GPU"),
    (
        r"pipeline_scripts\.tools\.gpu lease --(out-dir|continue)",
        "160-epoch runs: needs a GPU (tests/unit/test_gpu.py runs the lease on tiny data)",
    ),
    (r"^pip download ", "downloads wheels from PyPI for another machine"),
    (r"pipeline_scripts\.tools\.bench --data", "a benchmark: minutes of both cores"),
    (
        r"pipeline_scripts\.tools\.cost --configfile config\.yaml --bench docs/measurements/",
        "plans the paper's DAG again (a minute or more); tests/unit/test_cost.py computes the "
        "same estimate from the suite's plan and checks docs/cost.md's figures against it",
    ),
    (
        r"pipeline_scripts\.tools\.cost figure1 --profile profiles/slurm",
        "tests/workflow/test_experiments.py runs it and checks the README's figures against it",
    ),
    (
        r"pipeline_scripts\.tools\.effective_std .*runs/timeline/",
        "needs the timeline preset's runs (hours on the real CIFAR-10)",
    ),
]
# Run as written: cheap and without side effects.
RUN = [r"^python -m pipeline_scripts\.tools\.\w+( \w+)? --help$"]
# make targets: planned = the snakemake command of its recipe (`make -n`) planned like any other
# (an experiment's: the command it runs after printing its cost); run = run for real with
# DIR=<scratch> (it only plans or draws the DAG).
MAKE_PLANNED = {"laptop", "smoke", *make_experiments()}
MAKE_RUN = {"plan", "dag"}
# Placeholders of the docs -> the fixture that stands in for them (conftest.py).
# (an image folder as large as the laptop preset asks: the planning checks data.n_train)
PLACEHOLDERS = {"/path/to/cifar10-jpg.tar.gz": "laptop_data"}
# Later pipeline stages that are not run: graphviz is not a dependency.
NOT_RUN_STAGES = {"dot"}


def classify(c: Command) -> tuple[str, str]:
    """(class, reason): 'not run', 'recipes', 'run', 'make run', 'planned', or 'unclassified'."""
    for pattern, reason in NOT_RUN:
        if re.search(pattern, c.text):
            return "not run", reason
    if c.doc.startswith("docs/extending.md"):
        return "recipes", "run by tests/workflow/test_recipes.py on a copy with the recipes applied"
    if any(stage[0] not in NOT_RUN_STAGES for stage in c.rest):
        return "unclassified", f"a pipeline into {[s[0] for s in c.rest]}"
    if any(re.search(p, c.text) for p in RUN):
        return "run", "cheap"
    if c.argv[0] == "snakemake":
        return "planned", "snakemake -n in a scratch directory"
    if c.argv[0] == "make" and len(c.argv) >= 2:
        if c.argv[1] in MAKE_PLANNED:
            return "planned", "its recipe's snakemake command, planned in a scratch directory"
        if c.argv[1] in MAKE_RUN:
            return "make run", "run with DIR=<scratch>"
    return "unclassified", "neither run, planned nor listed in NOT_RUN"


def test_every_command_is_classified():
    assert ALL_COMMANDS, "no ```bash commands found"
    unclassified = [f"{c.doc}: {c.text}" for c in ALL_COMMANDS if classify(c)[0] == "unclassified"]
    assert not unclassified, (
        "classify these commands in tests/workflow/test_docs.py:\n" + "\n".join(unclassified)
    )
    for pattern, _reason in NOT_RUN:  # no stale entries
        assert any(re.search(pattern, c.text) for c in ALL_COMMANDS), f"unused: {pattern}"


# ---- running and planning -------------------------------------------------------------------
OPTIONS_WITH_VALUES = {
    "--directory": 1,
    "-d": 1,
    "--cores": 1,
    "-c": 1,
    "--jobs": 1,
    "-j": 1,
    "--profile": 1,
    "--snakefile": 1,
    "-s": 1,
    "--retries": 1,
    "--slurm-init-seconds-before-status-checks": 1,
    "--configfile": "+",
    "--config": "+",
    "--quiet": "?",
}
PRINT_MODES = {"--dag", "--rulegraph", "--report", "-n", "--dry-run", "--unlock"}
PAPER_PROFILES = {None, "profiles/slurm", "profiles/local"}
# A command that plans the whole paper DAG is planned for one network and one seed (the whole DAG
# is planned once, by test_paper_dag_counts).
SLICE = ["--config", "networks=[resnet20]", "seeds=[1]"]


def parse_snakemake(args: list[str]) -> tuple[dict, list[str]]:
    """(options -> values, targets) of a snakemake command line, as argparse reads it."""
    options, targets, i = {}, [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            n = OPTIONS_WITH_VALUES.get(a, 0)
            values, i = [], i + 1
            while i < len(args) and not args[i].startswith("-") and (n in ("+", "?") or n > 0):
                values.append(args[i])
                i += 1
                if n not in ("+", "?"):
                    n -= 1
                elif n == "?":
                    break
            options[a] = values
        else:
            targets.append(a)
            i += 1
    return options, targets


def planned_argv(argv: list[str], scratch: Path) -> list[str]:
    """The snakemake command, planned: in ``scratch``, with -n (unless it only prints), and
    sliced to one network and seed if it would plan the whole paper DAG."""
    args = argv[1:]
    options, targets = parse_snakemake(args)
    for key in ("--directory", "-d"):
        if key in options:
            i = args.index(key)
            del args[i : i + 2]
    out = [sys.executable, "-m", "snakemake", *args, "--directory", str(scratch)]
    if not PRINT_MODES & options.keys():
        out += ["-n", "--quiet", "rules"]
    profile = (options.get("--profile") or [None])[0]
    configs = options.get("--configfile", [])
    if not targets and profile in PAPER_PROFILES and configs in ([], ["config.yaml"]):
        assert "--config" not in options, "a paper-scale command with --config: slice it by hand"
        out += SLICE
    return out


def _env(c: Command) -> dict:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **c.env}


def _substituted(c: Command, request) -> list[str]:
    argv = []
    for a in c.argv:
        for placeholder, fixture in PLACEHOLDERS.items():
            if placeholder in a:
                a = a.replace(placeholder, str(request.getfixturevalue(fixture)))
        argv.append(a)
    return argv


def _make_recipe_commands(argv: list[str]) -> list[list[str]]:
    """The snakemake commands `make <target>` would run (without running anything; an
    experiment's with COST=1 too, the command it runs without)."""
    proc = subprocess.run(
        ["make", "-n", "-o", STAMP, f"BIN={VENV_BIN}", *(a for a in argv[1:] if a != "COST=1")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [shlex.split(ln) for ln in proc.stdout.splitlines() if "/snakemake " in ln]
    assert lines, f"`make {' '.join(argv[1:])}` runs no snakemake:\n{proc.stdout}"
    return [["snakemake", *ln[1:]] for ln in lines]


RUNNABLE = [c for c in ALL_COMMANDS if classify(c)[0] in ("run", "make run", "planned")]
_PLANNED: set[tuple] = set()  # planned commands that passed (this module runs in one worker)


@pytest.mark.parametrize("c", RUNNABLE, ids=[f"{c.doc} {c.text[:60]}" for c in RUNNABLE])
def test_documented_command_runs_or_plans(c, tmp_path, request):
    kind, _ = classify(c)
    argv = _substituted(c, request)
    if kind == "run":
        runs = [(argv, ROOT)]
    elif kind == "make run":
        runs = [(["make", "-o", STAMP, f"BIN={VENV_BIN}", *argv[1:], f"DIR={tmp_path}"], ROOT)]
    elif argv[0] == "make":
        runs = [(planned_argv(a, tmp_path / "run"), ROOT) for a in _make_recipe_commands(argv)]
    else:
        runs = [(planned_argv(argv, tmp_path / "run"), ROOT)]
    for cmd, cwd in runs:
        key = (kind, *(a.replace(str(tmp_path), "<scratch>") for a in cmd), str(c.env))
        if kind == "planned" and key in _PLANNED:  # the same command documented twice
            continue
        proc = subprocess.run(
            cmd, cwd=cwd, env=_env(c), capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, (
            f"{c.doc}: {c.text}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
        _PLANNED.add(key)
        if "--dag" in cmd:
            assert proc.stdout.lstrip().startswith("digraph"), proc.stdout[:300]


# ---- the README, links, history --------------------------------------------------------------
def test_readme_fits_250_lines_and_its_table_rows_200_characters():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    long_rows = [i for i, line in enumerate(lines, 1) if line.startswith("|") and len(line) > 200]
    assert not long_rows, f"README.md table rows longer than 200 characters: lines {long_rows}"


def _without_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    """The page without its fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", _without_blocks(text))


def slugs(text: str) -> set[str]:
    """GitHub's anchors of a page's headings."""
    out, seen = set(), {}
    for m in re.finditer(r"^#{1,6} (.+)$", _without_blocks(text), re.M):
        title = m[1].strip().lower()
        slug = "".join(
            ch
            for ch in title
            if ch in " -_"
            or unicodedata.category(ch)[0] in "LN"
            or unicodedata.category(ch) == "Mn"
        ).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


TEST_REF = re.compile(r"`(test_\w+\.py)::(test_\w+)")


def test_every_test_the_docs_name_exists():
    """The docs cite the tests that prove a behaviour (`test_file.py::test_name`, a name may end
    in `_*` for several): each must exist, so a renamed test cannot leave a dangling proof."""
    sources = {p.name: p.read_text() for p in (ROOT / "tests").rglob("test_*.py")}
    refs = [(page.name, m[1], m[2]) for page in DOCS for m in TEST_REF.finditer(page.read_text())]
    assert refs
    missing = [
        ref
        for ref in refs
        if ref[1] not in sources
        or not re.search(rf"^def {ref[2].rstrip('_')}\w*\(", sources[ref[1]], re.M)
    ]
    assert not missing, missing


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for doc in [*DOCS, ROOT / "CHANGELOG.md"]:
        text = doc.read_text()
        for target in LINK.findall(_prose(text)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in slugs(dest.read_text()):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


HISTORY = re.compile(r"\bsessions?\b|\bissues? #?[0-9]", re.I)
TRACKER = re.compile(r"\bissues? #?[0-9]", re.I)


def test_no_development_history_in_the_repository_text():
    """A user's documents, configs and profiles describe the pipeline, not how it was made
    (CHANGELOG.md says what changed between versions)."""
    files = [
        *DOCS,
        ROOT / "config.yaml",
        ROOT / "config.schema.yaml",
        *sorted((ROOT / "config").glob("*.yaml")),
        *sorted(p for p in (ROOT / "profiles").rglob("*") if p.is_file()),
        ROOT / "Makefile",
    ]
    # the code and the tests too, for references to a tracker no user sees ("session" is also
    # pytest's word there)
    code = [
        p
        for pattern in ("Snakefile", "rules/*.smk", "pipeline_scripts/**/*.py", "tests/**/*.py")
        for p in sorted(ROOT.glob(pattern))
    ]
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p, pattern in [(p, HISTORY) for p in files] + [(p, TRACKER) for p in code]
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and p.name != "test_docs.py"
    ]
    assert not found, "\n".join(found)


# ---- figures the code computes ---------------------------------------------------------------
def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _within_last_digit(stated: str, value: float) -> bool:
    """Whether ``stated`` (e.g. "1.34", "102") is ``value`` rounded to its last digit."""
    decimals = len(stated.partition(".")[2])
    return abs(float(stated) - value) <= 0.5 * 10**-decimals + 1e-12


TRAINING_RULES = {
    "train_dense",
    "train_imp_level",
    "train_from_pretrained",
    "train_perturbed",
    "pretrain",
    "sparse_pretext",
    "sparse_train",
    "train_stability_copy",
}
FIGURE_PAGES = [*DOCS, ROOT / "CHANGELOG.md"]


def check_paper_job_count(job_counts: dict) -> None:
    """The paper DAG's figures in the docs against ``snakemake -n`` on config.yaml: every
    "N jobs" with N >= 10,000 is the DAG's job count, every "N training runs" (N >= 1,000) its
    training runs, and docs/cost.md's per-family rows add up to each rule's runs
    (``job_counts``: runs per base rule, a seed-group job counted as its runs)."""
    total = job_counts.get("total", sum(job_counts.values()))
    runs = sum(n for rule, n in job_counts.items() if rule in TRAINING_RULES)
    stated_jobs, stated_runs = [], []
    for page in FIGURE_PAGES:
        text = page.read_text()
        if page.name == "CHANGELOG.md":  # the latest version's entry: older ones are history
            text = text[: text.find("\n## [", text.index("\n## [") + 1)]
        for m in re.finditer(r"(\d{1,3}(?:,\d{3})+)\**[- ]jobs?\b", text):
            if _number(m[1]) >= 10_000:
                stated_jobs.append((page.name, _number(m[1])))
        for m in re.finditer(r"(\d{1,3}(?:,\d{3})+)\**(?: of them)? training runs", text):
            stated_runs.append((page.name, _number(m[1])))
    assert {"README.md", "cost.md"} <= {name for name, _ in stated_jobs}
    assert {"README.md", "cost.md"} <= {name for name, _ in stated_runs}
    assert all(n == total for _, n in stated_jobs), (stated_jobs, total)
    assert all(n == runs for _, n in stated_runs), (stated_runs, runs)
    (row,) = re.findall(r"^\| paper \|.*\| ([\d,]+) \|$", (ROOT / "README.md").read_text(), re.M)
    assert _number(row) == total, "README's presets table"
    per_rule = {}
    for m in re.finditer(
        r"^\| [^|]+ \| `(\w+)` \| ([\d,]+) \|", (ROOT / "docs/cost.md").read_text(), re.M
    ):
        per_rule[m[1]] = per_rule.get(m[1], 0) + _number(m[2])
    assert per_rule and all(job_counts[rule] == n for rule, n in per_rule.items()), per_rule


def test_paper_dag_counts(paper_job_counts):
    check_paper_job_count(paper_job_counts)


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.mark.parametrize("preset", ["smoke", "laptop"])
def test_preset_job_counts(preset, tmp_path):
    counts = job_counts(
        smk(
            "--profile",
            f"profiles/{preset}",
            "-n",
            "--quiet",
            "rules",
            "--directory",
            str(tmp_path),
        ).stdout
    )
    total = counts["total"]
    readme = (ROOT / "README.md").read_text()
    (row,) = re.findall(rf"^\| {preset} \|.*\| ([\d,]+) \|$", readme, re.M)
    assert _number(row) == total
    if preset == "laptop":
        for text in (
            _section(readme, "Two commands"),
            _section((ROOT / "docs/measurements.md").read_text(), "Laptop preset"),
        ):
            stated = [int(n) for n in re.findall(r"\b(\d+) jobs\b", text)]
            assert stated and all(n == total for n in stated), (stated, total)


def _table_rows(page: str, pattern: str) -> list[re.Match]:
    rows = list(re.finditer(pattern, (ROOT / page).read_text(), re.M))
    assert rows, f"no rows matching {pattern!r} in {page}"
    return rows


def test_protocol_parameter_counts():
    from pipeline_scripts.earlyphase import models

    rows = _table_rows("docs/protocol.md", r"^\| `(\w+)` \| ([\d,]+) \|")
    assert {m[1] for m in rows} == set(models.PAPER_NETWORKS)
    for m in rows:
        count = sum(p.numel() for p in models.build(m[1]).parameters())
        assert count == _number(m[2]), (m[1], count)


def test_telemetry_disk_cost():
    """docs/results-schema.md: P prunable weights x telemetry.points float16 snapshots."""
    from pipeline_scripts.earlyphase import models

    points = yaml.safe_load((ROOT / "config.yaml").read_text())["telemetry"]["points"]
    rows = _table_rows("docs/results-schema.md", r"^\| `(\w+)` \| ([\d,]+) \| ([\d.]+) (MB|GB) \|")
    assert {m[1] for m in rows} == set(models.PAPER_NETWORKS)
    for m in rows:
        model = models.build(m[1])
        params = dict(model.named_parameters())
        prunable = sum(params[n].numel() for n in models.prunable(model, m[1]))
        assert prunable == _number(m[2]), (m[1], prunable)
        size = prunable * points * 2 / (1e6 if m[4] == "MB" else 1e9)
        assert _within_last_digit(m[3], size), (m[1], size)


def test_kept_weights_per_level():
    """docs/results-schema.md's percentages of weights kept at levels 0, 2, ..., 14."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    (m,) = re.finditer(
        r"\(([\d., ]+) % at L = 0, 2, \.\.\., 14\)", (ROOT / "docs/results-schema.md").read_text()
    )
    stated = [s.strip() for s in m[1].split(",")]
    kept = [100 * (1 - config["imp"]["fraction"]) ** level for level in range(0, 15, 2)]
    assert len(stated) == len(kept)
    assert all(_within_last_digit(s, k) for s, k in zip(stated, kept, strict=True)), stated


def test_heavy_ball_bound():
    """2(1+mu)/eta for the paper's momentum and learning rate, as docs/protocol.md states it."""
    hp = yaml.safe_load((ROOT / "config.yaml").read_text())["training"]["defaults"]
    (m,) = re.finditer(r"2\(1\+μ\)/η = (\d+)", (ROOT / "docs/protocol.md").read_text())
    assert math.isclose(int(m[1]), 2 * (1 + hp["momentum"]) / hp["lr"])
