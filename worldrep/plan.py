"""What a config plans and what it will cost on this machine, said before any job runs.

    python -m worldrep.plan --configfile config/quick.yaml [more config files] [--cores N] [--gpus G] [--results DIR]

prints the block the workflow prints before its first job (the Snakefile's `onstart`): runs to train, optimizer
steps (one per update of a stack), run-steps (one per update of one run), the disk the results will take, and a
projected wall time on the devices seen here. The workflow stops there, before any job, when no GPU is seen, no
cluster executor is in use and the projection exceeds `plan.max_cpu_hours` (a day), or when the disk is short;
`stop_reason` says why and names the ways forward. A dry run, `--report`, `--lint` and `--touch` never stop.

The time model is the one of `benchmarks/grid_estimate.py`, reduced to what a config alone gives:
- a training step of one run costs 6 · parameters · batch size · mixture width FLOPs (forward and backward; the
  vocabulary is tiny, so attention and embeddings are left out), at the device's sustained rate, plus a fixed
  per-step overhead on a GPU (kernel launches: what small models are bound by);
- on a CPU a stack trains its runs one after another (`training.StackStep`), one thread per job, so stacks spread
  over the cores; on a GPU a stack's runs share each step (fused), and stacks spread over the GPUs;
- every other job (evaluation, extraction, probes, ...) costs a fixed start-up.
Rates are `plan.rates` in the config, else `DEFAULT_RATES`, each with where it was measured. No torch here: the
Snakefile imports this, and planning must stay fast.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .grid import (all_mixtures, checkpoint_count, curve_runs, dataset_base, dataset_pairs, mixture_sources,
                   model_settings, recipe_settings, representation_settings, run_products, step_counts, train_items,
                   training_stacks)
from .tokenizer import VOCAB

# Where a rate came from travels with it into the block, so that nobody mistakes an assumption for a measurement.
DEFAULT_RATES = {
    "cpu": {
        # benchmarks/training.py --synthetic 7000 --stack 1 --skip-baseline --threads 1: the paper model at width
        # 57 (68.8 GFLOP per step) took 1,108-1,200 ms per step on one core of a 2-core Xeon, 2026-12-02.
        "gflops_per_core": 60.0,
        # A job's start-up, Snakemake's own share included (benchmarks/rates.py: 2.9 s for python and a stack job's
        # imports alone).
        "job_start_s": 5.0,
        # benchmarks/rates.py, one thread, config/laptop.yaml's model (they scale with the model): loading one saved
        # model, greedy evaluation of 10,000 items (6 new tokens each), one model's representations of 5,700 cities,
        # one checkpoint written; 2-core Xeon, 2026-12-06.
        "model_load_s": 0.03,
        "eval_10k_s": 5.8,
        "extract_s": 0.6,
        "checkpoint_s": 0.011,
        "source": "measured: benchmarks/training.py and benchmarks/rates.py, one core of a 2-core Xeon",
    },
    "cuda": {
        # Not yet measured on a GPU (the GPU window, benchmarks/gpu_window.py, measures ms per stack step): an
        # H200 at a fraction of its fp16 peak, and the per-step launch cost of an eager small-model step. With
        # `training.cuda_graphs` an update is one graph replay: its hundreds of small kernels still run one after
        # another on the device, but no longer wait for Python to launch each (assumed half the eager cost;
        # benchmarks/rates.py measures both on a GPU).
        "tflops": 150.0,
        "step_overhead_ms": 3.0,
        "graph_step_overhead_ms": 1.5,
        # A stack job's python and imports, measured on the CPU (2.9 s), plus an assumed 12 s for the CUDA context,
        # the lease and the first kernels.
        "job_start_s": 15.0,
        # Host-side costs measured on the CPU (loading a model, writing a checkpoint), with room for the copies to
        # and from the device.
        "model_load_s": 0.05,
        "checkpoint_s": 0.02,
        # Assumed: greedy evaluation of 10,000 items by one model, one model's extraction, and one extraction of
        # a stack of entry.CHECKPOINT_STACK checkpoints at once (launch-bound at these sizes: about two models' time).
        "eval_10k_s": 2.0,
        "extract_s": 1.0,
        "extract_stack_s": 2.0,
        "source": "assumed, partly measured on the CPU: the GPU window (benchmarks/gpu_window.py) measures it",
    },
}
MAX_CPU_HOURS = 24.0
ALLOW_LONG_CPU = "WORLDREP_ALLOW_LONG_CPU"
ALLOW_LOW_DISK = "WORLDREP_ALLOW_LOW_DISK"

# Tokens of the widest of 30,000 items of each task at the paper's task settings (the `tokens` width of
# datasets/pretraining/{task}/train.npz; tests/test_plan.py generates them). A larger split may hold an item a token
# wider (a rare extra answer digit): within the model's precision. A mixture's width is its widest source's.
TASK_WIDTH = {"distance": 26, "trianglearea": 39, "angle": 33, "compass": 27, "inside": 57, "perimeter": 53,
              "crossing": 42}
# Bytes on disk per item: a dataset keeps each item as text and as arrays (tokens uint8, city ids int16, answer),
# about 3.5 bytes per token of width; a mixture keeps the arrays only: a byte per token plus ~19.
DATASET_BYTES_PER_TOKEN = 3.5
MIXTURE_BYTES_PER_ITEM = 19
ANALYSIS_JOBS = 40  # tables, CKA, figures and the checklist: about this many jobs in any config


@dataclass(frozen=True)
class Plan:
    runs: int                 # runs the config plans
    runs_to_train: int        # of them, in stacks that are to be trained
    stacks_to_train: int
    optimizer_steps: int      # Σ over stacks to train of the stack's steps (one update of every run in it)
    run_steps: int            # Σ over runs to train of their steps
    cpu_core_seconds: float   # training, evaluation and extraction on the CPU, Σ over stack jobs
    cpu_longest_s: float      # the longest stack job on one core
    gpu_seconds: float        # the same on one GPU, Σ over stack jobs (training fused)
    gpu_longest_s: float
    gpu_jobs: int             # stack jobs (train, evaluate, extract in one process): their start-up
    cpu_jobs: int             # datasets, mixtures, probes, tables, figures: CPU jobs bound by their start-up
    disk_bytes: int           # the results of the whole config


def model_parameters(model: dict) -> int:
    """Parameters of the config's Qwen2 (METHOD §6): untied embedding and head, q/k/v with biases, o and the MLP
    without, two RMSNorms per layer and a final one."""
    hidden, layers, inter = model["hidden_size"], model["num_hidden_layers"], model["intermediate_size"]
    kv = hidden // model["num_attention_heads"] * model["num_key_value_heads"]
    attention = (hidden * hidden + hidden) + 2 * (hidden * kv + kv) + hidden * hidden
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    return 2 * len(VOCAB) * hidden + layers * per_layer + hidden


def mixture_width(config: dict, mixture: str) -> int:
    return max(TASK_WIDTH[s.task] for s in mixture_sources(config, mixture))


def step_flops(config: dict, run) -> float:
    """One training step of one run: 6 · parameters (of its architecture) · tokens in the batch."""
    batch = recipe_settings(config, run.mixture, run.variant)["batch_size"]
    return 6.0 * model_parameters(model_settings(config, run.variant)) * batch * mixture_width(config, run.mixture)


def disk_bytes(config: dict, n_cities: int) -> int:
    """The results of the whole config: datasets, mixtures, models (final, and every checkpoint of pretraining
    runs) and representations (final, and every checkpoint of the curve runs). Tables, views and figures are
    small beside them."""
    total = 0.0
    for variant, task in dataset_pairs(config):
        sizes = config["datasets"][dataset_base(variant)]
        total += (sizes["n_train"] + sizes["n_val"] + sizes["n_test"]) * TASK_WIDTH[task] * DATASET_BYTES_PER_TOKEN
    for mixture in all_mixtures(config):
        total += train_items(config, mixture) * 1.1 * (mixture_width(config, mixture) + MIXTURE_BYTES_PER_ITEM)  # + val and test
    curves = set(curve_runs(config))
    for stack in training_stacks(config):
        for run in stack.runs:
            model = model_settings(config, run.variant)
            model_bytes = 4 * model_parameters(model)
            features = len(representation_settings(config, run.variant)["layers"]) * 2 * model["hidden_size"]
            epochs, per_epoch = step_counts(config, run.mixture, run.variant)
            fraction = recipe_settings(config, run.mixture, run.variant)["checkpoint_fraction"]
            checkpoints = checkpoint_count(epochs * per_epoch, fraction)
            total += model_bytes * (1 + (checkpoints if run.kind == "pretraining" else 0))
            total += 4 * n_cities * features * (1 + (checkpoints if run.name in curves else 0))
    return int(total)


def step_overhead_s(config: dict, cuda: dict) -> float:
    """A stack step's fixed cost on a GPU: a replayed CUDA graph's when the config captures its updates, else an
    eager step's (a capture that fails trains eagerly: then the projection is short by the difference)."""
    graphs = config["training"]["cuda_graphs"]
    return (cuda["graph_step_overhead_ms"] if graphs else cuda["step_overhead_ms"]) / 1000


def product_seconds(config: dict, run, products: tuple[str, ...], rate: dict, fused: bool = False) -> float:
    """A stack job's work on one run's products at the device's rates: greedy evaluation of its test sets (final and,
    for a checkpoint run, every checkpoint on the standard sets), extraction of its final model (and every
    checkpoint, for a curve run), and loading each model it reads. `fused` (a GPU) extracts checkpoints
    CHECKPOINT_STACK at a time, at `extract_stack_s` per stacked pass (scripts/train.py); the fused checkpoint
    evaluation is still counted model by model, until a GPU window has measured its speed-up."""
    from .entry import CHECKPOINT_STACK
    from .recipes import evaluation_params

    epochs, per_epoch = step_counts(config, run.mixture, run.variant)
    fraction = recipe_settings(config, run.mixture, run.variant)["checkpoint_fraction"]
    checkpoints = checkpoint_count(epochs * per_epoch, fraction)
    seconds = 0.0
    for product in products:
        models = checkpoints if product.startswith("checkpoint") else 1
        if product.endswith("evaluation"):
            sets = evaluation_params(config, run, checkpoints=product == "checkpoint_evaluation")["test_sets"]
            items = sum(config["datasets"][dataset_base(name.split("/")[0])]["n_test"] for name in sets)
            seconds += models * (items / 10_000 * rate["eval_10k_s"] + rate["model_load_s"])
        elif fused and product == "checkpoint_representations":
            seconds += -(-models // CHECKPOINT_STACK) * rate["extract_stack_s"] + models * rate["model_load_s"]
        else:
            seconds += models * (rate["extract_s"] + rate["model_load_s"])
    return seconds


def make_plan(config: dict, n_cities: int, rates: dict, results: Path | None = None,
              to_train: set[str] | None = None) -> Plan:
    """The config's plan. Stack jobs: with `results`, those of the runs and products missing from its store
    (worldrep.store.training_jobs, as the Snakefile plans them), else every stack with every product; of those, only
    the rules in `to_train` when given (Snakemake's own job list)."""
    from .store import TrainingJob

    stacks = training_stacks(config)
    products = run_products(config)
    if results is not None:
        from .recipes import Recipes
        from .store import training_jobs

        recipes = Recipes(config)
        jobs = training_jobs(config, recipes.run_hashes(), results, recipes.product_hashes())
    else:
        jobs = [TrainingJob(s, tuple(r.name for r in s.runs), tuple((r.name, p) for r in s.runs
                                                                   for p in products[r.name])) for s in stacks]
    if to_train is not None:
        jobs = [job for job in jobs if job.stack.rule in to_train]
    cpu, cuda = rates["cpu"], rates["cuda"]
    runs = {run.name: run for stack in stacks for run in stack.runs}
    optimizer_steps = run_steps = 0
    core_s, gpu_s, cpu_longest, gpu_longest = 0.0, 0.0, 0.0, 0.0
    for job in jobs:
        stack = job.stack
        stack_core_s = stack_gpu_s = 0.0
        if stack.runs:  # a job with no runs only computes products
            # One step count per stack (grid.stack_problems).
            epochs, per_epoch = step_counts(config, stack.mixtures[0], stack.runs[0].variant)
            steps = epochs * per_epoch
            flops = [step_flops(config, run) for run in stack.runs]
            optimizer_steps += steps
            run_steps += steps * len(stack.runs)
            stack_core_s = steps * sum(flops) / (cpu["gflops_per_core"] * 1e9)
            stack_gpu_s = steps * (step_overhead_s(config, cuda) + len(flops) * max(flops) / (cuda["tflops"] * 1e12))
        missing: dict[str, list[str]] = {}
        for run, product in job.products:
            missing.setdefault(run, []).append(product)
        stack_core_s += sum(product_seconds(config, runs[r], tuple(p), cpu) for r, p in missing.items())
        stack_gpu_s += sum(product_seconds(config, runs[r], tuple(p), cuda, fused=True) for r, p in missing.items())
        core_s, gpu_s = core_s + stack_core_s, gpu_s + stack_gpu_s
        cpu_longest, gpu_longest = max(cpu_longest, stack_core_s), max(gpu_longest, stack_gpu_s)
    runs_to_train = sum(len(job.stack.runs) for job in jobs)
    # One GPU process per stack job: it trains, evaluates and extracts (rules/training.smk). Per run on a CPU:
    # publishing its model and each product, and its probes; then, when anything trains, every dataset, mixture, table
    # and figure job once (an upper bound: what exists is not rebuilt).
    gpu_jobs = len(jobs)
    cpu_jobs = (sum(2 + len(products[run.name]) for job in jobs for run in job.stack.runs)
                + bool(jobs) * (len(dataset_pairs(config)) + len(all_mixtures(config)) + ANALYSIS_JOBS))
    return Plan(len(runs), runs_to_train, len(jobs), optimizer_steps, run_steps, core_s,
                cpu_longest, gpu_s, gpu_longest, gpu_jobs, cpu_jobs, disk_bytes(config, n_cities))


def rates_of(config: dict) -> dict:
    """`plan.rates` of the config over DEFAULT_RATES, device by device and key by key."""
    given = config.get("plan", {}).get("rates", {})
    return {device: {**default, **given.get(device, {})} for device, default in DEFAULT_RATES.items()}


def wall_seconds(plan: Plan, rates: dict, cores: int, gpus: int) -> float:
    """Projected wall time on `gpus` GPUs when there are any, else on `cores` CPU cores: stacks spread over the
    workers (no faster than the longest), and every other job's start-up shared among the GPUs (evaluation,
    extraction) or the cores (the rest), one after another."""
    cpu_jobs_s = plan.cpu_jobs * rates["cpu"]["job_start_s"] / cores
    if gpus:
        training = max(plan.gpu_seconds / gpus, plan.gpu_longest_s)
        return training + plan.gpu_jobs * rates["cuda"]["job_start_s"] / gpus + cpu_jobs_s
    workers = max(1, min(cores, plan.stacks_to_train or 1))
    return (max(plan.cpu_core_seconds / workers, plan.cpu_longest_s) + cpu_jobs_s
            + plan.gpu_jobs * rates["cpu"]["job_start_s"] / cores)


def duration(seconds: float) -> str:
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size or unit == "min":
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"  # pragma: no cover


def gigabytes(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"


def block(plan: Plan, config: dict, rates: dict, cores: int, gpus: int, free_bytes: int | None,
          have_bytes: int = 0, store_bytes: int = 0) -> str:
    """The plan as the few lines printed before the first job."""
    device = f"{gpus} GPU(s)" if gpus else f"{cores} CPU core(s), no GPU seen"
    rate = rates["cuda" if gpus else "cpu"]
    lines = [
        f"plan ({config.get('name', 'config')}): {plan.runs_to_train} of {plan.runs} runs to train in "
        f"{plan.stacks_to_train} stack(s) (training.stack: {config['training']['stack']})",
        f"  optimizer steps {plan.optimizer_steps:,}; run-steps {plan.run_steps:,}; "
        f"other jobs ~{plan.gpu_jobs + plan.cpu_jobs:,}",
        f"  disk: {gigabytes(plan.disk_bytes)} for the whole results folder ({gigabytes(have_bytes)} there now, "
        f"{gigabytes(store_bytes)} of it trained runs in the store)"
        + (f"; {gigabytes(free_bytes)} free" if free_bytes is not None else ""),
        f"  projected wall time on {device}: {duration(wall_seconds(plan, rates, cores, gpus))} "
        f"(rates {rate['source']})",
    ]
    if not gpus:
        lines.append(f"  on one GPU it would be {duration(wall_seconds(plan, rates, cores, 1))} (GPU rates "
                     f"{rates['cuda']['source']})")
    return "\n".join(lines)


def stop_reason(plan: Plan, config: dict, rates: dict, cores: int, gpus: int, free_bytes: int | None,
                have_bytes: int = 0, environ=os.environ) -> str | None:
    """Why the workflow should not start here, with the ways forward; None to go on. Called only for a local run
    that executes jobs (not a dry run, --report, --lint, --touch, nor a cluster executor)."""
    limit_h = config.get("plan", {}).get("max_cpu_hours", MAX_CPU_HOURS)
    hours = wall_seconds(plan, rates, cores, gpus) / 3600
    if not gpus and hours > limit_h and environ.get(ALLOW_LONG_CPU) != "1":
        return (f"stopped before the first job: no GPU is seen and this plan would take {duration(hours * 3600)} "
                f"on {cores} CPU core(s) (more than plan.max_cpu_hours = {limit_h:g}). Ways forward:\n"
                "  - on one GPU: snakemake --cores 8 --resources gpu=1 --configfile config/quick.yaml\n"
                "  - on a laptop CPU: snakemake --cores 2 --configfile config/smoke.yaml (minutes) or "
                "config/laptop.yaml (the first real maps; python -m worldrep.plan --configfile config/laptop.yaml "
                "projects its time)\n"
                "  - on a SLURM cluster: snakemake --profile profiles/slurm --default-resources slurm_account=ACCOUNT "
                "slurm_partition=PARTITION (GPU jobs to a partition of their own: the config's `slurm` block, "
                "config/README.md)\n"
                f"  - or run it here anyway: {ALLOW_LONG_CPU}=1 snakemake ...")
    needed = plan.disk_bytes - have_bytes  # the whole results folder: checked when runs are to train
    if plan.runs_to_train and free_bytes is not None and needed > free_bytes and environ.get(ALLOW_LOW_DISK) != "1":
        return (f"stopped before the first job: the results need about {gigabytes(needed)} more and only "
                f"{gigabytes(free_bytes)} is free. Free some space, point results/ at a larger disk (a symlink), "
                f"or run it anyway: {ALLOW_LOW_DISK}=1 snakemake ...")
    return None


def folder_bytes(path: Path) -> int:
    """Bytes on disk under `path`, each file once: a published model is hard links into the store."""
    seen, total = set(), 0
    for p in path.rglob("*") if path.is_dir() else []:
        if p.is_file() and not p.is_symlink():
            stat = p.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def free_disk(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def visible_gpus() -> int:
    """CUDA devices torch can use here, unless WORLDREP_DEVICE=cpu puts every job on the CPU (worldrep.lease)."""
    if os.environ.get("WORLDREP_DEVICE") == "cpu" or not Path("/proc/driver/nvidia").exists():
        return 0  # no NVIDIA driver: no CUDA device, and no 2 s torch import in every run
    import torch  # only when asked: the CLI and the onstart hook, never while the Snakefile plans

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def n_cities(config: dict) -> int:
    from .world import real_city_count

    return real_city_count(config["world"]["min_population"]) + config["world"]["atlantis"]["count"]


def report(config: dict, results: Path, cores: int, gpus: int, to_train: set[str] | None = None) -> tuple[str, str | None]:
    """(the block, the reason to stop or None) for this config on this machine."""
    rates = rates_of(config)
    plan = make_plan(config, n_cities(config), rates, results, to_train)
    have, free, stored = folder_bytes(results), free_disk(results), folder_bytes(results / "store")
    # What this config can count as already there: not the store's entries of other configs or older code, which
    # stay on disk until `python -m worldrep.store gc`.
    from .recipes import Recipes
    from .store import garbage

    other = sum(folder_bytes(path) for path in garbage(set(Recipes(config).run_hashes().values()), results))
    return (block(plan, config, rates, cores, gpus, free, have, stored),
            stop_reason(plan, config, rates, cores, gpus, free, have - other))


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .grid import load_config

    parser = argparse.ArgumentParser(prog="python -m worldrep.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--configfile", type=Path, nargs="+", default=[Path("config/config.yaml")],
                        help="config files, merged in order as Snakemake does (config/config.yaml config/wide.yaml)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpus", type=int, help="GPUs to project for (default: those torch sees)")
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="results folder: runs with a store entry there are not counted again")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.configfile)
    except ConfigError as error:
        parser.exit(2, f"{parser.prog}: {error}\n")
    gpus = visible_gpus() if args.gpus is None else args.gpus
    text, reason = report(config, args.results, args.cores, gpus)
    print(text)
    if reason:
        print(f"the workflow would stop here: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
