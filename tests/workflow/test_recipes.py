"""docs/extending.md's recipes, followed to the letter on a copy of the repository.

The page's steps are sentences of five fixed forms, each followed by a code block ("In `FILE`,
after the line `ANCHOR`, insert:", "... before the line ...", "In `FILE`, replace the line `ANCHOR`
with:", "At the end of `FILE`, append:", "Create `FILE`:"). This test reads them from the page and
applies exactly those blocks, in order, to a copy of the tracked files: a toy network, a toy
perturbation kind, a toy pre-training task and a toy experiment family (dense runs at half the
learning rate). It then checks that the registries and the schema still agree, runs the page's
commands ("Trying them": train the new things on generated data, cost the config) and checks
what they produced. Editing a block on the page changes what is tested; a recipe whose anchor
moved fails here, naming the step."""

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
from test_workflow import ROOT

DOC = ROOT / "docs" / "extending.md"
# The five step forms; `path` names the file, `anchor` the line the step is placed by.
STEP_FORMS = [
    (re.compile(r"^In `(?P<path>[^`]+)`, after the line `(?P<anchor>[^`]+)`, insert:$"), "after"),
    (re.compile(r"^In `(?P<path>[^`]+)`, before the line `(?P<anchor>[^`]+)`, insert:$"), "before"),
    (re.compile(r"^In `(?P<path>[^`]+)`, replace the line `(?P<anchor>[^`]+)` with:$"), "replace"),
    (re.compile(r"^At the end of `(?P<path>[^`]+)`, append:$"), "append"),
    (re.compile(r"^Create `(?P<path>[^`]+)`:$"), "create"),
]
RECIPES = ("A network", "A perturbation", "A pre-training task", "A new experiment family")


@dataclass(frozen=True)
class Step:
    line: int  # the sentence's line number on the page
    section: str  # the "## " heading it is under
    op: str
    path: str
    anchor: str | None
    text: str  # the code block, exactly


@dataclass(frozen=True)
class Block:
    line: int  # line number of the opening fence
    info: str  # the fence's language
    text: str
    before: str  # the last non-blank line above the fence
    section: str


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown page, with the sentence that introduces it."""
    blocks, lines, i, section, before = [], text.splitlines(), 0, "", ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            start, body = i, []
            i += 1
            while i < len(lines) and lines[i] != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"unclosed code block at line {start + 1}"
            blocks.append(
                Block(start + 1, line[3:].strip(), "\n".join(body) + "\n", before, section)
            )
            before = ""
        elif line.startswith("## "):
            section, before = line[3:].strip(), ""
        elif line.strip():
            before = line
        i += 1
    return blocks


def step_of(sentence: str) -> tuple[str, str, str | None] | None:
    for form, op in STEP_FORMS:
        m = form.match(sentence)
        if m:
            return op, m["path"], m.groupdict().get("anchor")
    return None


def recipe_steps(text: str) -> list[Step]:
    """The page's steps, in order. Every block that is not a shell block must be a step's, and
    every step sentence must introduce a block."""
    steps = []
    for b in fenced_blocks(text):
        parsed = step_of(b.before)
        if b.info == "bash":
            assert parsed is None, f"line {b.line}: a step's block must not be a shell block"
            continue
        assert parsed, f"line {b.line}: a code block without a step sentence above it"
        steps.append(Step(b.line, b.section, *parsed, b.text))
    sentences = [s for s in text.splitlines() if step_of(s)]
    assert len(sentences) == len(steps), "a step sentence is not followed by its code block"
    return steps


def commands(text: str) -> list[str]:
    """The page's shell commands (backslash continuations joined, comments dropped)."""
    out = []
    for b in fenced_blocks(text):
        if b.info != "bash":
            continue
        for line in b.text.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.strip())
    return out


def _bare(line: str) -> str:
    """A line without its indentation and a trailing comment (how a step names its anchor)."""
    return re.sub(r"\s+#.*$", "", line.strip())


def apply(root: Path, step: Step) -> None:
    where = f"docs/extending.md line {step.line} ({step.section})"
    path = root / step.path
    if step.op == "create":
        assert not path.exists(), f"{where}: {step.path} exists already"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(step.text)
        return
    assert path.is_file(), f"{where}: there is no {step.path}"
    source = path.read_text()
    if step.op == "append":
        path.write_text(source + ("" if source.endswith("\n") else "\n") + step.text)
        return
    lines = source.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if step.anchor in (line.strip(), _bare(line))]
    assert len(hits) == 1, (
        f"{where}: the line {step.anchor!r} occurs {len(hits)} times in {step.path}, not once"
    )
    i, new = hits[0], step.text.splitlines(keepends=True)
    if step.op == "after":
        lines[i + 1 : i + 1] = new
    elif step.op == "before":
        lines[i:i] = new
    else:  # replace
        lines[i : i + 1] = new
    path.write_text("".join(lines))


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A page's command as a user types it, with this interpreter's environment first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_every_recipe_is_written_as_steps():
    text = DOC.read_text()
    steps = recipe_steps(text)
    for recipe in RECIPES:
        assert any(s.section == recipe for s in steps), f"no steps under '## {recipe}'"
    assert any(c.startswith("snakemake ") for c in commands(text))


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """A copy of the tracked files with the page's steps applied."""
    root = tmp_path_factory.mktemp("repo")
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes((ROOT / name).read_bytes())
    for step in recipe_steps(DOC.read_text()):
        apply(root, step)
    return root


def test_the_registries_and_the_schema_still_agree(extended):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_schema.py",
        ],
        cwd=extended,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_recipes_plan_and_run(extended):
    done = []
    for command in commands(DOC.read_text()):
        proc = run(command, extended)
        assert proc.returncode == 0, command + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
        done.append((command, proc))
    args = shlex.split(next(c for c, _ in done if c.startswith("snakemake ")))
    out = extended / args[args.index("--directory") + 1]
    branch = out / "results/mlp32/seed1/perturb/rewind4/level1/flip_half/metrics.h5"
    with h5py.File(branch) as f:
        assert f.attrs["network"] == "mlp32"
        assert f.attrs["perturbation_family"] == "signs/magnitudes"
        assert '"sign_flip"' in f.attrs["perturbation"] and f.attrs["effective_std"] > 0
    with h5py.File(out / "results/mlp32/seed1/imp/rewind4/level1/metrics.h5") as f:
        assert f.attrs["weights_remaining_fraction"] == pytest.approx(0.8, abs=1e-2)
    assert (out / "results/mlp32/seed1/pretrain/invert/e1/state.pt").is_file()
    log = (out / "logs/mlp32/seed1/pretrain/invert/e1/train.log").read_text()
    assert re.search(r"done: mlp32 seed 1", log)
    # the new family: trained at half the learning rate, and costed from the planned DAG
    dense = out / "results/mlp32/seed1/dense/metrics.h5"
    with h5py.File(out / "results/mlp32/seed1/halflr/metrics.h5") as f, h5py.File(dense) as d:
        assert f.attrs["experiment"] == "halflr"
        assert json.loads(f.attrs["hparams"])["lr"] == json.loads(d.attrs["hparams"])["lr"] / 2
    cost = next(p for c, p in done if "pipeline_scripts.tools.cost" in c)
    assert re.search(r"^halflr\s+train_halflr\s+1\s", cost.stdout, re.M), cost.stdout
