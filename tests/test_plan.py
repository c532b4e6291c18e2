"""The plan before the first job: its counts against METHOD §7.3 and the code they model, its stop
rule, and the main command stopping on a CPU before any job while a dry run, --lint and the CLI do not."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from worldrep import plan
from worldrep.archive import copy_workflow
from worldrep.grid import validate_config
from worldrep.datasets import World, generate_dataset, render
from worldrep.model import ModelSettings, build_model
from worldrep.tasks import TASKS
from worldrep.training import checkpoint_steps
from worldrep.world import WorldSettings, build_world

REPO = Path(__file__).resolve().parents[1]
# METHOD §7.3 per family: (runs, T).
METHOD_FAMILIES = {"pt1": (21, 328_146), "pt2": (21, 328_125), "pt3": (21, 328_132), "pt7": (4, 328_128),
                   "ftwb1": (28, 28_560), "ftwb2": (84, 56_670)}


def load(name: str) -> dict:
    return validate_config(yaml.safe_load((REPO / "config" / name).read_text()))


@pytest.fixture(scope="module")
def paper() -> dict:
    return load("config.yaml")


@pytest.mark.parametrize("settings", [ModelSettings(), ModelSettings(hidden_size=64, num_hidden_layers=4,
                                                                     intermediate_size=256),
                                      ModelSettings(num_attention_heads=4, num_key_value_heads=2)])
def test_model_parameters_count_what_the_built_model_holds(settings):
    model = {"hidden_size": settings.hidden_size, "num_hidden_layers": settings.num_hidden_layers,
             "num_attention_heads": settings.num_attention_heads,
             "num_key_value_heads": settings.num_key_value_heads, "intermediate_size": settings.intermediate_size}
    assert plan.model_parameters(model) == sum(p.numel() for p in build_model(settings).parameters())


@pytest.mark.parametrize("total", [1, 7, 40, 952, 28_560, 328_146])
@pytest.mark.parametrize("fraction", [0.005, 0.025, 0.5])
def test_checkpoint_count_is_the_trainers(total, fraction):
    assert plan.checkpoint_count(total, fraction) == len(checkpoint_steps(total, fraction))


def test_task_widths_are_those_of_generated_items(paper):
    """TASK_WIDTH against 30,000 train items of each task at the paper's settings, on the paper's world."""
    w = paper["world"]
    world = World.from_table(build_world(WorldSettings(
        w["min_population"], w["atlantis"]["count"], tuple(w["atlantis"]["center"]), w["atlantis"]["std"],
        w["atlantis"]["seed"], w["city_id_seed"])))
    widths = {}
    for name, task in TASKS.items():
        counts = task.city_counts(paper["tasks"][name], "pretraining")
        split = generate_dataset(task, counts, "pretraining", {"n_train": 30_000, "n_val": 16, "n_test": 16}, world,
                                 0, 200)["train"]
        widths[name] = render(task, split, world)[1]["tokens"].shape[1]
    assert widths == plan.TASK_WIDTH


def test_paper_plan_counts_the_steps_of_method_7_3(paper):
    """Family stacks: one optimizer step per family step; run-steps: Σ runs × T (METHOD §7.3, 179 runs)."""
    p = plan.make_plan(paper, 5_671, plan.rates_of(paper))
    assert (p.runs, p.runs_to_train, p.stacks_to_train) == (179, 179, 6)
    assert p.optimizer_steps == sum(t for _, t in METHOD_FAMILIES.values())
    assert p.run_steps == sum(n * t for n, t in METHOD_FAMILIES.values())
    by_mixture = plan.make_plan({**paper, "training": {**paper["training"], "stack": "mixture"}}, 5_671,
                                plan.rates_of(paper))
    assert by_mixture.run_steps == p.run_steps and by_mixture.stacks_to_train == 50  # mixtures with runs
    # A CPU trains a stack's runs one after another: the same core-seconds however they are stacked.
    assert by_mixture.cpu_core_seconds == pytest.approx(p.cpu_core_seconds)
    # Only the training rules Snakemake plans count.
    some = plan.make_plan(paper, 5_671, plan.rates_of(paper), to_train={"pretrain_pt7", "finetune_ftwb1"})
    assert (some.runs_to_train, some.optimizer_steps) == (32, 328_128 + 28_560)


def test_the_wide_variant_adds_its_own_steps_and_size(paper):
    """variants.wide (App. B): pt7 for 3 epochs, FTWB1 x7 and 6 FTWB2 mixes at the main recipe's T, in 3 stacks of
    their own, each step at the wide model's size (6.35M parameters against 1.6M)."""
    wide = {**paper, "variants": {"wide": {**paper["variants"]["wide"], "enabled": True}}}
    base, more = plan.make_plan(paper, 5_671, plan.rates_of(paper)), plan.make_plan(wide, 5_671, plan.rates_of(wide))
    assert (more.runs, more.stacks_to_train) == (193, 9)
    assert more.run_steps - base.run_steps == 3 * 54_688 + 7 * 28_560 + 6 * 56_670
    assert more.optimizer_steps - base.optimizer_steps == 3 * 54_688 + 28_560 + 56_670
    pt7 = plan.make_plan(wide, 5_671, plan.rates_of(wide), to_train={"pretrain_pt7_wide"})
    flops = 6 * plan.model_parameters({**paper["model"], "hidden_size": 256, "num_attention_heads": 8,
                                       "num_key_value_heads": 8, "intermediate_size": 1024}) * 128 * 57
    rate = plan.rates_of(wide)["cpu"]
    products = 14 * rate["eval_10k_s"] + rate["extract_s"] + 2 * rate["model_load_s"]  # pt7_wide_s42 alone
    assert pt7.cpu_core_seconds == pytest.approx(3 * 54_688 * flops / 60e9 + products)


def pt7_products_seconds(rate: dict) -> float:
    """By hand, the paper's pt7 stack job's products: each of its 4 runs is evaluated on the 14 test sets of 10,000
    items and extracted, each model loaded once; pt7_s42 (the checkpoint run, and a curve run) also has each of its
    41 checkpoints (0, every 8,204 steps and T = 328,128) evaluated on the 7 standard sets and extracted."""
    final = 14 * rate["eval_10k_s"] + rate["extract_s"] + 2 * rate["model_load_s"]
    checkpoints = 41 * (7 * rate["eval_10k_s"] + rate["extract_s"] + 2 * rate["model_load_s"])
    return 4 * final + checkpoints


def test_cpu_seconds_follow_the_flop_model(paper):
    """Training: 6 · parameters · batch · width per run-step at the CPU rate, summed over runs; then the stack job's
    evaluation and extraction at their rates."""
    rates = plan.rates_of(paper)
    p = plan.make_plan(paper, 5_671, rates, to_train={"pretrain_pt7"})
    flops = 6 * plan.model_parameters(paper["model"]) * 128 * max(plan.TASK_WIDTH.values())
    assert p.cpu_core_seconds == pytest.approx(4 * 328_128 * flops / 60e9 + pt7_products_seconds(rates["cpu"]))
    assert p.cpu_longest_s == pytest.approx(p.cpu_core_seconds)  # one stack
    assert p.gpu_jobs == 1  # one process: training, evaluation and extraction


def test_gpu_seconds_extract_checkpoints_fused(paper):
    """On a GPU the stack job extracts a run's checkpoints CHECKPOINT_STACK at a time: pt7_s42's 41 checkpoints are 2
    stacked passes of 21 and 20, each model still loaded once; everything else as on the CPU, at the GPU's rates."""
    from worldrep.entry import CHECKPOINT_STACK

    rates = plan.rates_of(paper)
    cuda = rates["cuda"]
    p = plan.make_plan(paper, 5_671, rates, to_train={"pretrain_pt7"})
    flops = 6 * plan.model_parameters(paper["model"]) * 128 * max(plan.TASK_WIDTH.values())
    assert paper["training"]["cuda_graphs"]  # each update a replayed graph: the graph step's fixed cost
    training = 328_128 * (cuda["graph_step_overhead_ms"] / 1000 + 4 * flops / (cuda["tflops"] * 1e12))
    assert CHECKPOINT_STACK == 21
    fused = pt7_products_seconds(cuda) - 41 * cuda["extract_s"] + 2 * cuda["extract_stack_s"]
    assert p.gpu_seconds == pytest.approx(training + fused)


def test_an_eager_config_pays_the_eager_step_cost_on_a_gpu_only(paper):
    """Without CUDA graphs every one of pt7's 328,128 stack steps costs the eager step's fixed cost instead of the
    replayed graph's; nothing else moves, and the CPU never captures graphs."""
    eager = {**paper, "training": {**paper["training"], "cuda_graphs": False}}
    rates = plan.rates_of(paper)
    cuda = rates["cuda"]
    assert cuda["step_overhead_ms"] > cuda["graph_step_overhead_ms"]
    graphs, plain = (plan.make_plan(c, 5_671, rates, to_train={"pretrain_pt7"}) for c in (paper, eager))
    assert plain.gpu_seconds - graphs.gpu_seconds == pytest.approx(
        328_128 * (cuda["step_overhead_ms"] - cuda["graph_step_overhead_ms"]) / 1000)
    assert plain.cpu_core_seconds == graphs.cpu_core_seconds


def test_wall_time_spreads_stacks_over_workers_but_never_below_the_longest(paper):
    rates = plan.rates_of(paper)
    p = plan.make_plan(paper, 5_671, rates)
    one, two = plan.wall_seconds(p, rates, 1, 0), plan.wall_seconds(p, rates, 2, 0)
    assert two < one and plan.wall_seconds(p, rates, 1000, 0) >= p.cpu_longest_s
    assert plan.wall_seconds(p, rates, 2, 2) < plan.wall_seconds(p, rates, 2, 1) < two


def test_rates_override_the_defaults_key_by_key(paper):
    rates = plan.rates_of({**paper, "plan": {"rates": {"cuda": {"tflops": 10.0}}}})
    assert rates["cuda"]["tflops"] == 10.0
    assert rates["cuda"]["step_overhead_ms"] == plan.DEFAULT_RATES["cuda"]["step_overhead_ms"]
    assert rates["cpu"] == plan.DEFAULT_RATES["cpu"]


def test_stop_rule(paper):
    rates = plan.rates_of(paper)
    paper_plan = plan.make_plan(paper, 5_671, rates)
    reason = plan.stop_reason(paper_plan, paper, rates, 2, 0, free_bytes=10**15, environ={})
    assert reason.startswith("stopped before the first job: no GPU is seen")
    for way in ("config/quick.yaml", "config/smoke.yaml", "profiles/slurm", "slurm_account=ACCOUNT",
                "slurm_partition=PARTITION", "`slurm` block", "WORLDREP_ALLOW_LONG_CPU=1"):
        assert way in reason
    assert plan.stop_reason(paper_plan, paper, rates, 2, 0, 10**15, environ={"WORLDREP_ALLOW_LONG_CPU": "1"}) is None
    assert plan.stop_reason(paper_plan, paper, rates, 2, 1, 10**15, environ={}) is None  # a GPU is seen
    raised = {**paper, "plan": {"max_cpu_hours": 1e9}}
    assert plan.stop_reason(paper_plan, raised, rates, 2, 0, 10**15, environ={}) is None
    smoke = load("smoke.yaml")
    assert plan.stop_reason(plan.make_plan(smoke, 5_671, rates), smoke, rates, 2, 0, 10**15, environ={}) is None
    # Disk: what the results still need against what is free, on a GPU too.
    short = plan.stop_reason(paper_plan, paper, rates, 2, 1, paper_plan.disk_bytes // 2, environ={})
    assert "the results need about" in short and "WORLDREP_ALLOW_LOW_DISK=1" in short
    assert plan.stop_reason(paper_plan, paper, rates, 2, 1, paper_plan.disk_bytes // 2,
                            have_bytes=paper_plan.disk_bytes // 2 + 1, environ={}) is None
    assert plan.stop_reason(paper_plan, paper, rates, 2, 1, 0, environ={"WORLDREP_ALLOW_LOW_DISK": "1"}) is None


def run(cwd: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_main_command_stops_on_a_cpu_before_any_job(tmp_path):
    """`snakemake --cores 2` (the paper grid) on this GPU-less machine prints the plan and stops before its first
    job, leaving no results; a dry run and --lint go through; `python -m worldrep.plan` prints the same block."""
    workdir = copy_workflow(tmp_path)
    # WORLDREP_DEVICE=cpu: on a GPU machine too, this must be the GPU-less case (and never start the paper grid).
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WORLDREP_ALLOW")}, "WORLDREP_DEVICE": "cpu"}
    started = run(workdir, "-m", "snakemake", "--cores", "2", env=env)
    out = started.stdout + started.stderr
    assert started.returncode != 0, out
    assert "stopped before the first job: no GPU is seen" in out and "WORLDREP_ALLOW_LONG_CPU=1" in out, out
    assert not (workdir / "results").exists()
    block = [line for line in out.splitlines() if line.startswith(("plan (", "  optimizer", "  disk", "  projected",
                                                                   "  on one GPU"))]
    assert block[0] == "plan (paper): 179 of 179 runs to train in 6 stack(s) (training.stack: family)", out
    assert "run-steps 27,544,935" in block[1]
    cli = run(workdir, "-m", "worldrep.plan", "--cores", "2", "--gpus", "0", env=env)
    assert cli.returncode == 0, cli.stderr
    free = re.compile(r"; [0-9.,]+ [MG]B free")  # the free disk moves between the two calls
    assert [free.sub("", line) for line in cli.stdout.splitlines()[:5]] == [free.sub("", line) for line in block]
    assert "the workflow would stop here" in cli.stdout
    for flags in (["-n"], ["--lint"]):
        quiet = run(workdir, "-m", "snakemake", "--cores", "2", *flags, env=env)
        assert quiet.returncode == 0 and "stopped before the first job" not in quiet.stdout + quiet.stderr, flags
    assert not (workdir / "results").exists()
