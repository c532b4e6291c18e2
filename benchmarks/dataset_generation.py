"""Seconds per 1M items for each task's dataset generation on one core, against a per-item Python loop
measured in the same run; and the wall time of `snakemake -n` on the full paper config.

    python benchmarks/dataset_generation.py [--items 1000000] [--baseline-items 20000]

Goals: <= 5 s per 1M items for every task; `snakemake -n` on config/config.yaml <= 10 s.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worldrep.archive import cpu_model  # noqa: E402
from worldrep.datasets import World, generate_dataset, render  # noqa: E402
from worldrep.tasks import TASKS  # noqa: E402
from worldrep.tasks.base import compact_text  # noqa: E402
from worldrep.world import WorldSettings, build_world  # noqa: E402


def per_item_loop(task, settings, world: World, n: int) -> float:
    """The authors' shape of generator: one Python iteration per item (draw, answer, format)."""
    rng = np.random.default_rng(0)
    pool = np.flatnonzero(~world.is_atlantis)
    counts = task.city_counts(settings, "pretraining")
    start = time.perf_counter()
    lines = []
    for _ in range(n):
        k = int(rng.choice(counts))
        cities = rng.choice(pool, size=k, replace=False)[None, :]
        answer = task.answer(world.x[cities], world.y[cities], np.array([k]))
        lines.append(compact_text(task, world.city_ids[cities], answer)[0])
    return time.perf_counter() - start


def vectorized(task, settings, world: World, sizes: dict) -> tuple[float, float]:
    start = time.perf_counter()
    splits = generate_dataset(task, task.city_counts(settings, "pretraining"), "pretraining", sizes, world, 42, 200)
    middle = time.perf_counter()
    for split in splits.values():
        render(task, split, world)
    return middle - start, time.perf_counter() - middle


def dry_run_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:  # a fresh .snakemake, so nothing is cached
        for part in ("Snakefile", "rules", "scripts", "config", "worldrep", "profiles", "envs"):
            src = REPO / part
            (subprocess.run(["cp", "-r", str(src), tmp], check=True))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "all"], cwd=tmp, check=True,
                       capture_output=True)
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000, help="train items per task")
    parser.add_argument("--baseline-items", type=int, default=20_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    world = World.from_table(build_world(WorldSettings(100000, 100, (-35.0, 35.0), 3.0, 42, 42)))
    sizes = {"n_train": args.items, "n_val": 128, "n_test": 10_000}
    total = sum(sizes.values())
    print(f"hardware: {cpu_model() or 'unknown CPU'}, 1 core pinned; python {platform.python_version()}, numpy {np.__version__}")
    print(f"pretraining variant, {total:,} items per task (train {args.items:,} + val 128 + test 10,000)")
    print(f"{'task':<13}{'sample+label s/1M':>18}{'text+tokens s/1M':>18}{'total s/1M':>12}"
          f"{'loop s/1M':>12}{'speed-up':>10}")
    for name, task in TASKS.items():
        gen, ren = vectorized(task, config["tasks"][name], world, sizes)
        loop = per_item_loop(task, config["tasks"][name], world, args.baseline_items) * 1e6 / args.baseline_items
        per_million = (gen + ren) * 1e6 / total
        print(f"{name:<13}{gen * 1e6 / total:>18.2f}{ren * 1e6 / total:>18.2f}{per_million:>12.2f}"
              f"{loop:>12.1f}{loop / per_million:>9.0f}x")
    print(f"snakemake -n, full paper config (fresh .snakemake): {dry_run_seconds():.2f} s")


if __name__ == "__main__":
    main()
