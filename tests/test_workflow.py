"""The smoke DAG end to end on a temporary copy of the workflow: lint, run, no-op replan, exact partial
rebuilds (asserted as sets of job names), and byte-identical reruns."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ["Snakefile", "rules", "scripts", "config", "worldrep", "profiles", "envs"]
SMOKE = "config/smoke.yaml"
pytestmark = pytest.mark.slow


def copy_workflow(dest: Path) -> Path:
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / part)
    return dest


def snakemake(workdir: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def planned_jobs(workdir: Path, configfile: str = SMOKE) -> set[str]:
    """Job names `rule[wildcards]` that `snakemake -n` plans, parsed from its job blocks."""
    out = snakemake(workdir, "-n", "--configfile", configfile)
    jobs, rule = set(), None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            if rule:
                jobs.add(rule)
            rule = m.group(1)
        elif rule and (m := re.match(r"^\s+wildcards: (.*)$", line)):
            jobs.add(f"{rule}[{m.group(1).replace(' ', '')}]")
            rule = None
    if rule:
        jobs.add(rule)
    return jobs


def expected_jobs(config: dict, variants: set[str], tasks: set[str]) -> set[str]:
    """What must rebuild when the datasets of `tasks` in `variants` change, derived from METHOD §4 by hand:
    pretraining mixtures read whole pretraining (or with-Atlantis) sets of their own tasks; every fine-tuning
    mixture reads the Atlantis-required sets of all tasks (the buffer) and the pretraining sets of its own."""
    jobs = {f"dataset[variant={v},task={t}]" for v in variants for t in tasks} | {"all"}
    mix = config["mixtures"]
    for name, listed in mix["pretraining"].items():
        if "pretraining" in variants and tasks & set(listed):
            jobs.add(f"pretraining_mixture[mixture={name}]")
    for name, listed in mix.get("with_atlantis", {}).items():
        if "with_atlantis" in variants and tasks & set(listed):
            jobs.add(f"pretraining_mixture[mixture={name}]")
    for name, listed in mix["finetuning"]["mixes"].items():
        if "atlantis_required" in variants or ("pretraining" in variants and tasks & set(listed)):
            jobs.add(f"finetuning_mixture[mixture={name}]")
    return jobs


def result_hashes(workdir: Path) -> dict[str, str]:
    root = workdir / "results"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in ("logs", "benchmarks")
    }


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    snakemake(workdir, "--cores", "2", "--configfile", SMOKE)
    return workdir


@pytest.fixture(scope="module")
def smoke_config() -> dict:
    return yaml.safe_load((REPO / SMOKE).read_text())


def test_lint_is_clean(workflow):
    out = snakemake(workflow, "--lint", "--configfile", SMOKE)
    assert "Lints for" not in out, out


def test_smoke_run_builds_every_dataset_and_mixture(workflow, smoke_config):
    """Every generated dataset obeys the split rules (METHOD §3.3–3.4), read from the workflow's own output."""
    for task in smoke_config["tasks"]:
        for variant in ("pretraining", "atlantis_required", "with_atlantis"):
            meta = json.loads((workflow / f"results/datasets/{variant}/{task}/metadata.json").read_text())
            sizes = smoke_config["datasets"][variant]
            assert meta["sizes"] == {s: sizes[f"n_{s}"] for s in ("train", "val", "test")}
            assert meta["key_overlap_with_train"] == {"val": 0, "test": 0}
            if task in ("inside", "crossing"):
                assert meta["true_count"] == {s: n // 2 for s, n in meta["sizes"].items()}
    mixtures = smoke_config["mixtures"]
    for family in (mixtures["pretraining"], mixtures["with_atlantis"], mixtures["finetuning"]["mixes"]):
        for name in family:
            for split in ("train", "val", "test"):
                assert (workflow / f"results/mixtures/{name}/{split}.npz").stat().st_size > 0
    assert not list((workflow / "results").rglob("*.partial"))


def test_nothing_planned_when_nothing_changed(workflow):
    assert planned_jobs(workflow) == set()


def test_task_settings_change_replans_exactly_that_task(workflow, smoke_config):
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["tasks"]["perimeter"]["city_counts"] = [2, 3, 4]
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    expected = expected_jobs(smoke_config, {"pretraining", "atlantis_required", "with_atlantis"}, {"perimeter"})
    assert planned_jobs(workflow, "config/edited.yaml") == expected
    # Sanity of the expectation itself: some mixtures stay untouched.
    assert "pretraining_mixture[mixture=pt1-1]" not in expected


def test_variant_size_change_replans_that_variant_only(workflow, smoke_config):
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["datasets"]["atlantis_required"]["n_test"] += 1
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    expected = expected_jobs(smoke_config, {"atlantis_required"}, set(smoke_config["tasks"]))
    assert planned_jobs(workflow, "config/edited.yaml") == expected
    assert not any(j.startswith("pretraining_mixture") for j in expected)


def test_one_variant_setting_replans_only_that_variant(workflow, smoke_config):
    """Inside's with-Atlantis hull sizes reach only its with-Atlantis set and the control mixture."""
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["tasks"]["inside"]["hull_sizes_with_atlantis"] = [3, 4, 5]
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    expected = expected_jobs(smoke_config, {"with_atlantis"}, {"inside"})
    assert expected == {"dataset[variant=with_atlantis,task=inside]", "pretraining_mixture[mixture=pt7-atl]", "all"}
    assert planned_jobs(workflow, "config/edited.yaml") == expected


def test_draw_budget_change_replans_nothing(workflow, smoke_config):
    """max_draw_rounds bounds work, it cannot change a finished dataset: raising it rebuilds nothing."""
    edited = yaml.safe_load(yaml.safe_dump(smoke_config))
    edited["datasets"]["max_draw_rounds"] *= 2
    (workflow / "config/edited.yaml").write_text(yaml.safe_dump(edited))
    assert planned_jobs(workflow, "config/edited.yaml") == set()


def test_task_code_edit_replans_exactly_that_task(workflow, smoke_config):
    module = workflow / "worldrep/tasks/angle.py"
    original, stat = module.read_text(), module.stat()
    try:
        module.write_text(original + "\n# an edit\n")
        expected = expected_jobs(smoke_config, {"pretraining", "atlantis_required", "with_atlantis"}, {"angle"})
        assert planned_jobs(workflow) == expected
    finally:
        module.write_text(original)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned_jobs(workflow) == set()


def test_second_run_gives_identical_bytes(workflow, tmp_path):
    again = copy_workflow(tmp_path)
    snakemake(again, "--cores", "2", "--configfile", SMOKE)
    first, second = result_hashes(workflow), result_hashes(again)
    assert len(first) > 100 and first == second


def test_task_modules_import_only_the_shared_base():
    """The dataset rule lists `worldrep/tasks/{task}.py` plus shared modules as inputs; a task module that
    imported another task's module would make an edit there invisible to this task's rebuild."""
    import ast

    for module in sorted((REPO / "worldrep/tasks").glob("*.py")):
        if module.name in ("__init__.py", "base.py"):
            continue
        imports = {node.module for node in ast.walk(ast.parse(module.read_text()))
                   if isinstance(node, ast.ImportFrom) and node.level > 0}
        assert imports == {"base"}, (module.name, imports)
