"""The documentation follows the code: every make target, make variable and profile the docs name
exists in the Makefile and profiles/; every option cited beside a tool (docs, rules, configs,
profiles, the code's own comments) is in that tool's --help; every config value stated as
`key.path: value` is config.yaml's; the tested PyTorch versions are the ones pyproject.toml allows.
A rename then fails here instead of misleading a reader."""

import contextlib
import importlib
import io
import json
import re
import subprocess

import pytest
import yaml
from test_docs import DOCS
from test_workflow import ROOT

CHANGELOG = ROOT / "CHANGELOG.md"


def _latest_changelog() -> str:
    text = CHANGELOG.read_text()
    first = text.index("\n## [")
    return text[first : text.find("\n## [", first + 1)]


def _texts() -> dict[str, str]:
    """Every user-facing text a command or option may be cited in (the CHANGELOG's latest
    version: older entries are history)."""
    out = {str(p.relative_to(ROOT)): p.read_text() for p in DOCS}
    out["CHANGELOG.md"] = _latest_changelog()
    for pattern in ("Snakefile", "Makefile", "rules/*.smk", "config*.yaml", "config/*.yaml",
                    "profiles/*/config.yaml", "pipeline_scripts/**/*.py", "envs/*"):  # fmt: skip
        for p in sorted(ROOT.glob(pattern)):
            out[str(p.relative_to(ROOT))] = p.read_text()
    return out


TEXTS = _texts()


# ---- make targets, make variables, profiles ---------------------------------------------------
def make_targets() -> set[str]:
    """The Makefile's targets, as make itself reads them (its database, nothing run)."""
    proc = subprocess.run(["make", "-pRrq", "-f", "Makefile", ":"], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    targets = set()
    for line in proc.stdout.splitlines():
        m = re.match(r"^([A-Za-z0-9_.][A-Za-z0-9_. -]*):(?!=)", line)
        if m and not line.startswith(("#", "\t")):
            targets |= set(m[1].split())
    return targets


def make_commands() -> list[tuple[str, list[str]]]:
    """(where, words after `make`) of every make command written as code: a line of a ```bash
    block, or an inline `make ...` span."""
    from test_docs import ALL_COMMANDS

    out = [(c.doc, c.argv[1:]) for c in ALL_COMMANDS if c.argv[:1] == ["make"]]
    for where, text in TEXTS.items():
        for m in re.finditer(r"`make ([^`]*)`", text):
            out.append((where, m[1].split()))
    return out


def test_documented_make_targets_variables_and_profiles_exist():
    targets, makefile = make_targets(), (ROOT / "Makefile").read_text()
    profiles = {p.parent.name for p in (ROOT / "profiles").glob("*/config.yaml")}
    assert {"laptop", "test", "figure1", "table_a1", "claims", "status", "cost"} <= targets
    cited, problems = 0, []
    for where, words in make_commands():
        for w in words:
            if w.startswith(("-", "[", "(", "<")) or w in ("…", "..."):
                break
            if "=" in w:
                var, value = w.split("=", 1)
                if f"$({var})" not in makefile:
                    problems.append(f"{where}: make variable {var}: not the Makefile's")
                if var == "PROFILE" and value not in profiles | {"...", "…"}:
                    problems.append(f"{where}: PROFILE={value}: no profiles/{value}")
            else:
                cited += 1
                if w not in targets:
                    problems.append(f"{where}: make {w}: no such target")
    for where, text in TEXTS.items():
        for m in re.finditer(r"--profile (?:\S*/)?profiles/([\w-]+)", text):
            if m[1] not in profiles:
                problems.append(f"{where}: --profile profiles/{m[1]}: no such profile")
    assert cited > 20
    assert not problems, "\n".join(problems)


# ---- tool options ---------------------------------------------------------------------------------
SUBCOMMANDS = {"gpu": ("check", "lease", "grid", "sizes", "all", "table", "imp", "worker")}
TOOL = re.compile(
    r"(?:pipeline_scripts\.)?tools\.(?P<tool>\w+)(?: (?P<sub>[a-z]+))?(?P<rest>[^`\n]*)"
    r"|`(?P<gtool>gpu) (?P<gsub>check|lease|grid|sizes|all|table|imp)(?P<grest>[^`\n]*)"
)


def _help(tool: str, sub: str | None) -> str:
    module = importlib.import_module(f"pipeline_scripts.tools.{tool}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        module.main([*([sub] if sub else []), "--help"])
    return out.getvalue()


def cited_options() -> dict[tuple[str, str | None], set[tuple[str, str]]]:
    """{(tool, subcommand): {(option, where)}} of every option written beside a tool's name."""
    cited: dict = {}
    for where, text in TEXTS.items():
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():
            for m in TOOL.finditer(line):
                if line[max(0, m.start() - 1) : m.start()] in ("'", '"'):
                    continue  # a command the code builds for itself (hidden worker options)
                tool = m["tool"] or m["gtool"]
                if not (ROOT / "pipeline_scripts/tools" / f"{tool}.py").is_file():
                    continue
                sub = m["sub"] or m["gsub"]
                rest = m["rest"] if m["tool"] else m["grest"]
                if sub not in SUBCOMMANDS.get(tool, ()):
                    rest, sub = f" {sub or ''}{rest}", None
                rest = re.split(r"[`;|)]| (?:and|or|then) ", rest)[0]
                for opt in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest):
                    cited.setdefault((tool, sub), set()).add((opt, where))
    return cited


def test_cited_tool_options_are_in_the_tools_help():
    cited = cited_options()
    assert ("cost", None) in cited and ("gpu", "sizes") in cited and ("status", None) in cited
    missing = []
    for (tool, sub), options in sorted(cited.items(), key=str):
        text = _help(tool, sub)
        for opt, where in sorted(options):
            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text):
                missing.append(f"{where}: tools.{tool}{' ' + sub if sub else ''} {opt}")
    assert not missing, "options the tools do not have:\n" + "\n".join(missing)


def test_the_old_cost_option_is_caught():
    """The check above finds an option a tool lost (the form the docs once had)."""
    text = _help("cost", None)
    assert "--configfile" in text and re.search(r"--config KEY=VALUE", text)
    assert not re.search(r"(?<![\w-])--job-sizes(?![\w-])", _help("bench", None))


# ---- config values --------------------------------------------------------------------------------
STATED = re.compile(r"`(?P<key>[a-z_]+(?:\.[a-z_0-9]+)+): (?P<value>[^`]+)`")


def test_stated_config_values_are_config_yaml():
    """`key.path: value` in the docs states config.yaml's value (the schema's default where
    config.yaml has none). Another setting is written as a mapping: `runtime: {cuda_graphs: false}`."""
    from pipeline_scripts.tools import cost

    config = cost.load_config([])
    stated, wrong = 0, []
    for where, text in TEXTS.items():
        if not where.endswith(".md"):
            continue
        for m in STATED.finditer(text):
            node, keys = config, m["key"].split(".")
            if keys[0] not in config:
                continue
            for k in keys:
                if not isinstance(node, dict) or k not in node:
                    wrong.append(f"{where}: `{m[0]}`: no such config key")
                    break
                node = node[k]
            else:
                stated += 1
                if yaml.safe_load(m["value"]) != node:
                    wrong.append(f"{where}: {m[0]} but config.yaml has {node!r}")
    assert stated >= 5
    assert not wrong, "\n".join(wrong)


# ---- tested versions ------------------------------------------------------------------------------
def test_pyproject_allows_exactly_the_tested_pytorch():
    """The CPU pin (envs/constraints.txt, envs/pipeline.yaml) and the GPU check's PyTorch are
    inside pyproject.toml's range, and docs/requirements.md names both."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    pyproject = (ROOT / "pyproject.toml").read_text()
    (spec,) = re.findall(r'"torch(>=[^"]+)"', pyproject)
    (cpu,) = re.findall(r"^torch==(\S+)$", (ROOT / "envs/constraints.txt").read_text(), re.M)
    (conda,) = re.findall(r"torch==(\S+)", (ROOT / "envs/pipeline.yaml").read_text())
    check = json.loads((ROOT / "docs/measurements/2026-12-04-h200-gpu-check.json").read_text())
    gpu = Version(check["torch"]).base_version
    assert cpu == conda
    assert Version(cpu) in SpecifierSet(spec) and Version(gpu) in SpecifierSet(spec)
    assert not any(Version(v) in SpecifierSet(spec) for v in ("2.10.0", "2.15.0")), spec
    requirements = (ROOT / "docs/requirements.md").read_text()
    assert cpu in requirements and check["torch"] in requirements and spec in requirements


# ---- provenance -----------------------------------------------------------------------------------
def test_provenance_lives_in_measurements_md():
    """Dates, commits and machines of measurements are stated in docs/measurements.md only; the
    other pages state the figure and link there (file names and links may carry dates)."""
    from test_docs import _prose

    found = []
    for page in DOCS:
        if page.name == "measurements.md":
            continue
        text = re.sub(r"\]\([^)]*\)", "]", _prose(page.read_text()))
        for m in re.finditer(
            r"\b20\d\d-\d\d-\d\d\b|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b|\bVMs?\b",
            text,
        ):
            found.append(f"{page.name}: {m[0]!r} in {text[max(0, m.start() - 50) : m.end()]!r}")
    assert not found, "\n".join(found)
